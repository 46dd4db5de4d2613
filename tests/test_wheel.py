"""Install as a user installs: the wheel built from pyproject.toml, in a fresh virtualenv, used from a
project folder of the user's own that has its own ``tasks.py`` and ``flows/`` package.

The base install (the wheel and its dependencies from the package index, no PyTorch) must ingest and
catalog audio, and ask for the ``models`` extra where a command needs it. Then the model stacks of
this checkout's environment are put on the new environment's path (after its own packages, so the
wheel's ``voxflow`` is still the one imported) to run ``voxflow models build-random`` from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CORPUS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TOP_FOLDERS = ("flows", "tasks", "blocks", "storage")  # installed as voxflow.flows, voxflow.tasks, ...


def _run(command: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _package_dirs_of_checkout() -> set[str]:
    found = {"voxflow"}
    for top in TOP_FOLDERS:
        found |= {"voxflow/" + init.parent.relative_to(ROOT).as_posix() for init in (ROOT / top).rglob("__init__.py")}
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return next(dist.glob("voxflow-*.whl"))


def test_the_wheel_holds_every_package_of_the_checkout(wheel):
    with zipfile.ZipFile(wheel) as archive:
        packages = {name.rsplit("/", 1)[0] for name in archive.namelist() if name.endswith("/__init__.py")}
    assert packages == _package_dirs_of_checkout()
    assert not {p for p in packages if not p.startswith("voxflow")}, "generic top-level packages in the wheel"


def test_a_fresh_install_ingests_from_a_project_of_the_users_own(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {"HOME": os.environ.get("HOME", str(tmp_path)), "PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    installed = _run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)], tmp_path, env
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    python, voxflow = str(venv / "bin" / "python"), str(venv / "bin" / "voxflow")
    assert _run([python, "-c", "import torch"], tmp_path, env).returncode != 0  # the base install has no PyTorch

    project = tmp_path / "project"  # a user's folder: its own tasks.py and flows package shadow nothing
    (project / "flows").mkdir(parents=True)
    (project / "tasks.py").write_text("raise RuntimeError('the user\\'s own tasks.py was imported')\n")
    (project / "flows" / "__init__.py").write_text(
        "raise RuntimeError('the user\\'s own flows package was imported')\n"
    )
    shutil.copy(CORPUS / "asr_en_jfk" / "jfk.flac", project)

    shown = _run([voxflow, "--help"], project, env)
    assert shown.returncode == 0 and "ingest-folder" in shown.stdout
    ingested = _run([voxflow, "ingest", "jfk.flac"], project, env)
    assert ingested.returncode == 0, ingested.stdout + ingested.stderr
    assert "1 file(s): 1 done, 0 cached, 0 failed" in ingested.stdout
    example = "from voxflow.flows.ingest import ingest; print(ingest(paths=['jfk.flac']).summary())"  # the README's
    again = _run([python, "-c", example], project, env)
    assert again.returncode == 0 and "1 file(s): 0 done, 1 cached, 0 failed" in again.stdout, again.stderr
    catalog = _run([voxflow, "catalog", "files", "--columns", "source_name,duration_s"], project, env)
    assert catalog.returncode == 0 and "jfk.flac" in catalog.stdout

    models = tmp_path / "models"
    refused = _run([voxflow, "models", "build-random", "--size", "tiny", str(models)], project, env)
    assert refused.returncode == 2 and "pip install 'voxflow[models]'" in refused.stderr

    site = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], project, env).stdout.strip()
    )
    (site / "zz-model-stacks.pth").write_text(sysconfig.get_path("purelib") + "\n")  # this checkout's model stacks
    where = _run([python, "-c", "import voxflow; print(voxflow.__file__)"], project, env).stdout
    assert where.startswith(str(site)), where  # still the wheel's voxflow
    built = _run([voxflow, "models", "build-random", "--size", "tiny", str(models)], project, env)
    assert built.returncode == 0, built.stdout + built.stderr
    assert (models / "whisper" / "turbo.pt").is_file() and (models / "qwen-tts").is_dir()
