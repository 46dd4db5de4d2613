"""Model resolution: settings from Blocks and the environment, residency, hub errors, the models CLI."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from voxflow.tasks.kit.models import GatedModelError, ModelNotFound, ModelSettings, ResidentModels, hub_errors


def test_settings_come_from_the_environment_and_the_token_never_prints(monkeypatch, tmp_path):
    monkeypatch.setenv("VOXFLOW_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret")
    monkeypatch.setenv("VOXFLOW_DEVICE", "cpu")
    settings = ModelSettings.from_env()
    assert settings.folder == tmp_path and settings.torch_device() == "cpu"
    assert settings.token() == "hf_very_secret"
    assert "hf_very_secret" not in repr(settings) and "hf_very_secret" not in str(settings)
    monkeypatch.setenv("VOXFLOW_DEVICE", "gpu")
    with pytest.raises(ValueError, match="VOXFLOW_DEVICE must be auto, cpu or cuda"):
        ModelSettings.from_env()


def test_local_paths_resolve_only_when_present(tmp_path):
    settings = ModelSettings(model_dir=str(tmp_path))
    assert settings.local("whisper", "turbo.pt") is None
    (tmp_path / "whisper").mkdir()
    (tmp_path / "whisper" / "turbo.pt").write_bytes(b"x")
    assert settings.local("whisper", "turbo.pt") == tmp_path / "whisper" / "turbo.pt"
    assert ModelSettings().local("whisper", "turbo.pt") is None
    with pytest.raises(ModelNotFound, match="VOXFLOW_MODEL_DIR"):
        ModelSettings().library_dir("whisper")


def test_models_block_settings_fall_back_to_the_environment(monkeypatch):
    from voxflow.blocks.models import VoxflowModels

    monkeypatch.setenv("VOXFLOW_MODEL_DIR", "/env/models")
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    from_block = VoxflowModels(device="cpu", hf_token=SecretStr("hf_from_block")).settings()
    assert from_block.model_dir == "/env/models" and from_block.device == "cpu"
    assert from_block.token() == "hf_from_block"
    assert VoxflowModels(model_dir="/block/models").settings().token() == "hf_from_env"


def test_a_model_loads_once_per_device_and_gpu_stages_evict_each_other():
    resident = ResidentModels(cpu_capacity=2)
    loads = []

    def loader(name):
        return lambda: loads.append(name) or object()

    a = resident.get(("whisper", "turbo"), "cpu", loader("a"), stage="transcribe")
    assert resident.get(("whisper", "turbo"), "cpu", loader("a"), stage="transcribe") is a
    resident.get(("demucs",), "cuda", loader("b"), stage="separate")
    resident.get(("pyannote",), "cuda", loader("c"), stage="diarize")  # evicts separate's GPU model
    resident.get(("demucs",), "cuda", loader("b"), stage="separate")  # loaded again, evicting diarize's
    assert loads == ["a", "b", "c", "b"]
    assert resident.get(("whisper", "turbo"), "cpu", loader("a"), stage="transcribe") is a  # CPU models stay
    resident.get(("x",), "cpu", loader("x"), stage="s")
    resident.get(("y",), "cpu", loader("y"), stage="s")  # the least recently used CPU model goes
    resident.get(("whisper", "turbo"), "cpu", loader("a"), stage="transcribe")
    assert loads[-1] == "a"
    resident.release()
    assert len(resident) == 0


def test_hub_failures_become_one_line_instructions():
    class GatedRepoError(Exception):
        pass

    class LocalEntryNotFoundError(Exception):
        pass

    with pytest.raises(GatedModelError) as gated:
        with hub_errors("pyannote/x", gated_url="https://hf.co/pyannote/x"):
            raise GatedRepoError("401 Client Error: token hf_should_not_leak")
    message = str(gated.value)
    assert "https://hf.co/pyannote/x" in message and "HF_TOKEN" in message and "hf_should_not_leak" not in message
    assert gated.value.__cause__ is None and "\n" not in message
    with pytest.raises(ModelNotFound, match="voxflow models pull"):
        with hub_errors("turbo"):
            raise LocalEntryNotFoundError("offline")
    with pytest.raises(KeyError):  # anything else is not hidden
        with hub_errors("turbo"):
            raise KeyError("bug")


def test_build_random_and_list_from_the_command_line(tmp_path, monkeypatch, capsys):
    from voxflow.flows.cli import main

    folder = tmp_path / "models"
    assert main(["models", "build-random", "--size", "tiny", "--library", "whisper", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "random-weight" in out and "noise" in out
    assert main(["models", "list", "--model-dir", str(folder)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.split()}
    assert str(folder / "whisper") in rows["transcribe"]
    assert "no (hub download" in rows["separate"] and "yes (needs HF_TOKEN)" in rows["diarize"]
    assert main(["models", "pull", "--stage", "nope", "--model-dir", str(folder)]) == 2
    assert "unknown stage nope" in capsys.readouterr().err
