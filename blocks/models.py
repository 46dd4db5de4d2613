"""The models Block: where model folders live, which device to use, and the Hugging Face token."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr

from voxflow.blocks.schema import closed_schema
from voxflow.tasks.kit.models import ModelSettings, WhisperBackend


class VoxflowModels(Block):
    """How voxflow finds and runs models."""

    model_config = ConfigDict(json_schema_extra=closed_schema)  # a reference to a saved Block is not one

    _block_type_name = "voxflow-models"
    _description = "voxflow models: local model folder, device, and a Hugging Face token for gated models."

    model_dir: str | None = Field(
        default=None, description="Folder holding the models in each library's layout (VOXFLOW_MODEL_DIR)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto picks CUDA when present.")
    hf_token: SecretStr | None = Field(default=None, description="Hugging Face token (pyannote models are gated).")
    whisper_model: str | None = Field(
        default=None, description="Default Whisper model of the transcribe stage (VOXFLOW_WHISPER_MODEL; else turbo)."
    )
    whisper_backend: WhisperBackend | None = Field(
        default=None,
        description="Default Whisper backend: whisper (PyTorch) or faster-whisper (VOXFLOW_WHISPER_BACKEND; else whisper).",
    )

    def settings(self) -> ModelSettings:
        """What the stages need (the token stays a SecretStr); unset fields fall back to the environment."""
        env = ModelSettings.from_env()
        return ModelSettings(
            self.model_dir or env.model_dir,
            self.device,
            self.hf_token or env.hf_token,
            self.whisper_model or env.whisper_model,
            self.whisper_backend or env.whisper_backend,
        )
