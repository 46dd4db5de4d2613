"""When ``voxflow`` starts Prefect's ephemeral API server itself, ahead of its imports (issue 17), and when
it must leave the choice to Prefect: any API URL the user configured wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxflow.flows.ephemeral import would_start_ephemeral

PROFILES = """active = "{active}"

[profiles.ephemeral]
PREFECT_SERVER_EPHEMERAL_ENABLED = "true"

[profiles.remote]
PREFECT_API_URL = "http://prefect.example:4200/api"

[profiles.off]
PREFECT_SERVER_EPHEMERAL_ENABLED = "false"
"""


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "prefect"
    home.mkdir()
    return home


def test_no_configuration_at_all_means_prefect_would_start_one(home, tmp_path):
    assert would_start_ephemeral({"PREFECT_HOME": str(home)}, tmp_path)  # Prefect's built-in "ephemeral" profile


@pytest.mark.parametrize(
    ("active", "environ", "expected"),
    [
        ("ephemeral", {}, True),
        ("remote", {}, False),  # `prefect profile use remote`
        ("off", {}, False),
        ("ephemeral", {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}, False),
        ("ephemeral", {"PREFECT_PROFILE": "remote"}, False),  # the environment picks the profile
        ("remote", {"PREFECT_PROFILE": "ephemeral"}, True),
        ("off", {"PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true"}, True),  # the environment wins over the profile
    ],
)
def test_the_active_profile_and_the_environment_decide(home, tmp_path, active, environ, expected):
    (home / "profiles.toml").write_text(PROFILES.format(active=active))
    assert would_start_ephemeral({"PREFECT_HOME": str(home), **environ}, tmp_path) is expected


def test_a_profiles_file_elsewhere_is_read(home, tmp_path):
    elsewhere = tmp_path / "conf" / "profiles.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(PROFILES.format(active="remote"))
    assert not would_start_ephemeral({"PREFECT_HOME": str(home), "PREFECT_PROFILES_PATH": str(elsewhere)}, tmp_path)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("prefect.toml", '[api]\nurl = "http://prefect.example:4200/api"\n', False),
        (".env", "PREFECT_API_URL=http://prefect.example:4200/api\n", False),
        (".env", "DATABASE=postgres://somewhere\n", True),  # not Prefect's
        ("pyproject.toml", '[tool.prefect]\napi.url = "http://prefect.example:4200/api"\n', False),
        ("pyproject.toml", '[project]\nname = "mine"\n', True),
    ],
)
def test_a_settings_file_in_the_working_folder_leaves_the_choice_to_prefect(home, tmp_path, name, text, expected):
    (tmp_path / name).write_text(text)
    assert would_start_ephemeral({"PREFECT_HOME": str(home)}, tmp_path) is expected


def test_an_unreadable_profiles_file_leaves_the_choice_to_prefect(home, tmp_path):
    (home / "profiles.toml").write_text("active = [not toml")
    assert not would_start_ephemeral({"PREFECT_HOME": str(home)}, tmp_path)
