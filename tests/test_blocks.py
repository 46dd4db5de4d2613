"""Blocks: register, save and load by name; secrets stay secret; flows take a block name."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from tests.conftest import CORPUS
from voxflow.blocks import VoxflowModels, VoxflowStorage, register_block_types
from voxflow.flows.ingest import ingest
from voxflow.storage.catalog import Catalog
from voxflow.storage.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _save_s3_block(name: str, settings) -> None:
    VoxflowStorage(
        location=settings.location,
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        access_key_id=SecretStr(settings.access_key_id),
        secret_access_key=SecretStr(settings.secret_access_key),
    ).save(name, overwrite=True)


def test_register_and_roundtrip_by_name(s3_settings):
    assert register_block_types() == ["voxflow-storage", "voxflow-models", "voxflow-results"]
    _save_s3_block("test-s3", s3_settings)
    loaded = VoxflowStorage.load("test-s3")
    assert loaded.settings() == s3_settings
    assert s3_settings.secret_access_key not in repr(loaded) + str(loaded)

    VoxflowModels(model_dir="/models", device="cpu", hf_token=SecretStr("hf_secret_token")).save("m", overwrite=True)
    models = VoxflowModels.load("m")
    assert models.hf_token.get_secret_value() == "hf_secret_token" and models.device == "cpu"


def test_api_shows_secrets_masked(s3_settings):
    from prefect.client.orchestration import get_client

    VoxflowStorage(location="s3://b/p", secret_access_key=SecretStr("super-secret-value")).save(
        "masked", overwrite=True
    )

    async def read():
        async with get_client() as client:
            return await client.read_block_document_by_name("masked", "voxflow-storage", include_secrets=False)

    document = asyncio.run(read())
    assert "super-secret-value" not in str(document.data)
    assert document.data["secret_access_key"] == "********"


def test_flow_uses_the_named_storage_block(s3_settings, monkeypatch):
    for var in ("VOXFLOW_STORAGE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    _save_s3_block("flow-s3", s3_settings)
    report = ingest(paths=[str(CORPUS / "denoise_babble" / "speech.wav")], storage_block="flow-s3")
    assert report.count("done") == 1
    files = Catalog(open_store(s3_settings)).frame("files")
    assert list(files["source_name"]) == ["speech.wav"]
    again = ingest(paths=[str(CORPUS / "denoise_babble" / "speech.wav")], storage_block="flow-s3")
    assert again.count("cached") == 1  # the cache records on S3 are read with the Block's credentials
    assert open_store(s3_settings).list("results/")
    from voxflow.blocks.results import VoxflowResults

    slug = VoxflowResults.get_block_type_slug()
    results = [b for b in _saved_documents(anonymous=True) if b["block_type_slug"] == slug]
    assert any(r["data"]["storage_block"] == "flow-s3" for r in results)  # other tests saved theirs too
    assert s3_settings.secret_access_key not in str(results)  # the result-storage Block holds no secret
    # it is plumbing: the Blocks list of the UI (named Blocks) shows the user's storage Block, not it
    listed = {(b["block_type_slug"], b["name"]) for b in _saved_documents(anonymous=False)}
    assert ("voxflow-storage", "flow-s3") in listed and not any(kind == slug for kind, _ in listed)


def _saved_documents(anonymous: bool = False) -> list[dict]:
    from prefect.client.orchestration import get_client

    query = {"block_documents": {"is_anonymous": {"eq_": anonymous}}, "include_secrets": True}
    with get_client(sync_client=True) as client:
        docs = client.request("POST", "/block_documents/filter", json=query).json()
    return [{"block_type_slug": d["block_type"]["slug"], "name": d["name"], "data": d["data"]} for d in docs]


def test_the_models_block_names_the_default_whisper_and_a_flow_option_wins(monkeypatch):
    from voxflow.tasks.kit.models import ModelSettings
    from voxflow.tasks.transcribe import TranscribeOptions

    monkeypatch.delenv("VOXFLOW_WHISPER_MODEL", raising=False)
    monkeypatch.setenv("VOXFLOW_WHISPER_BACKEND", "whisper")
    VoxflowModels(whisper_model="large-v3", whisper_backend="faster-whisper").save("whisper-defaults", overwrite=True)
    settings = VoxflowModels.load("whisper-defaults").settings()
    assert (settings.whisper_model, settings.whisper_backend) == ("large-v3", "faster-whisper")  # the Block wins
    resolved = TranscribeOptions().resolved(settings)
    assert (resolved.model, resolved.backend) == ("large-v3", "faster-whisper")
    assert TranscribeOptions(model="base").resolved(settings).model == "base"  # the flow's own option wins
    monkeypatch.setenv("VOXFLOW_WHISPER_MODEL", "small")
    from_env = TranscribeOptions().resolved(ModelSettings.from_env())
    assert (from_env.model, from_env.backend) == ("small", "whisper")
    monkeypatch.delenv("VOXFLOW_WHISPER_MODEL")
    monkeypatch.delenv("VOXFLOW_WHISPER_BACKEND")
    assert (
        TranscribeOptions().resolved(ModelSettings.from_env()).model,
        TranscribeOptions().resolved(ModelSettings()).backend,
    ) == ("turbo", "whisper")
    monkeypatch.setenv("VOXFLOW_WHISPER_BACKEND", "whisperx")
    with pytest.raises(ValueError, match="VOXFLOW_WHISPER_BACKEND must be whisper or faster-whisper"):
        ModelSettings.from_env()
