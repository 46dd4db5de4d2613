"""Every flow of voxflow, declared once.

The deployments (``voxflow serve`` and ``prefect.yaml``), ``ingest-folder``'s choice of flow and the
command line all read :data:`FLOWS`. Adding a flow means one flow module plus one entry here; a
per-file flow's module also defines ``PIPELINE`` (its :class:`~voxflow.flows.pipelines.FilePipeline`),
so ``ingest-folder`` can run it on each new file. The registry is plain data: reading it imports no
flow module, so listing the flows needs neither Prefect nor torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

GPU = ("voxflow", "gpu")  # tags of flows whose stages hold the gpu limit


@dataclass(frozen=True)
class FlowEntry:
    """One flow: its name (the flow's and its deployment's), where it is defined, and how it is deployed."""

    name: str  # flow name = deployment name, e.g. "clone-enhanced"
    module: str  # its module under voxflow.flows
    function: str  # the @flow function in that module
    description: str  # the deployment's description in the UI
    tags: tuple[str, ...] = ("voxflow",)
    per_file: bool = False  # runs on a list of files, so ingest-folder can run it on each new file
    cron: str | None = None  # the deployment's default schedule
    parameters: dict[str, Any] = field(default_factory=dict)  # the deployment's default parameters
    inbox_parameter: str | None = None  # the parameter `voxflow serve --inbox` sets
    one_run_at_a_time: bool = False  # a scheduled run that finds the previous one still working is cancelled

    @property
    def entrypoint(self) -> str:
        """The module-path entrypoint Prefect imports (``voxflow.flows.ingest:ingest``)."""
        return f"voxflow.flows.{self.module}:{self.function}"

    def load(self) -> Any:
        """The Prefect flow object (imports its module)."""
        return getattr(importlib.import_module(f"voxflow.flows.{self.module}"), self.function)

    def pipeline(self) -> Any:
        """The per-file chain of a per-file flow (its module's ``PIPELINE``)."""
        if not self.per_file:
            raise ValueError(f"the {self.name!r} flow does not run on single files")
        return importlib.import_module(f"voxflow.flows.{self.module}").PIPELINE


INGEST = FlowEntry(
    "ingest",
    "ingest",
    "ingest",
    "Decode, measure and store audio files as 16 kHz mono WAV (files, artifacts, stage_runs rows).",
    per_file=True,
    parameters={"paths": []},
)
TRANSCRIBE = FlowEntry(
    "transcribe",
    "transcribe",
    "transcribe",
    "Speaker-labelled transcripts: ingest, optional separate/denoise, diarize, transcribe.",
    tags=GPU,
    per_file=True,
    parameters={"paths": []},
)
SEPARATE = FlowEntry(
    "separate",
    "separate",
    "separate",
    "Vocals and accompaniment of each file with Demucs, at the file's own sample rate.",
    tags=GPU,
    per_file=True,
    parameters={"paths": []},
)
LIPSYNC_FEATURES = FlowEntry(
    "lipsync-features",
    "lipsync_features",
    "lipsync_features",
    "80-bin log-mel windows per video frame for lip-sync models, with their index.",
    per_file=True,
    parameters={"paths": []},
)
CLONE_ENHANCED = FlowEntry(
    "clone-enhanced",
    "clone_enhanced",
    "clone_enhanced",
    "Speak lines in a reference recording's voice (Qwen3-TTS clone), denoised and upsampled to 48 kHz.",
    tags=GPU,
)
SYNTHESIZE = FlowEntry(
    "synthesize",
    "synthesize",
    "synthesize",
    "Batch text-to-speech: designed voices, built-in speakers or clones; one WAV and syntheses row per item.",
    tags=GPU,
)
VOICE_REPLACE = FlowEntry(
    "voice-replace",
    "voice_replace",
    "voice_replace",
    "Replace one speaker's voice (cloned or designed), keep every other sound, fit the original timing.",
    tags=GPU,
    per_file=True,
    parameters={"paths": []},
)
INGEST_FOLDER = FlowEntry(
    "ingest-folder",
    "ingest_folder",
    "ingest_folder",
    "Run a flow on every file of a folder or s3:// prefix not yet processed with its parameters.",
    cron="*/10 * * * *",  # every 10 minutes
    parameters={"source": "inbox"},  # a folder on the worker (relative to where it starts) or s3://bucket/prefix
    inbox_parameter="source",
    one_run_at_a_time=True,
)

CATALOG_MAINTENANCE = FlowEntry(
    "catalog-maintenance",
    "catalog_maintenance",
    "catalog_maintenance",
    "Compact, checkpoint and vacuum the catalog's Delta tables (safe while writers run).",
    cron="17 3 * * *",  # daily, at a quiet hour
    one_run_at_a_time=True,
)

FLOWS: tuple[FlowEntry, ...] = (
    INGEST,
    TRANSCRIBE,
    SEPARATE,
    LIPSYNC_FEATURES,
    CLONE_ENHANCED,
    SYNTHESIZE,
    VOICE_REPLACE,
    INGEST_FOLDER,
    CATALOG_MAINTENANCE,
)
PER_FILE: tuple[str, ...] = tuple(entry.name for entry in FLOWS if entry.per_file)
PerFileFlow = Literal[PER_FILE]  # type: ignore[valid-type]  # ingest-folder's choice, a dropdown in the UI


def flow_entry(name: str) -> FlowEntry:
    """The entry of a flow by name (``lipsync_features`` also finds ``lipsync-features``)."""
    wanted = name.replace("_", "-")
    for entry in FLOWS:
        if entry.name == wanted:
            return entry
    raise ValueError(f"no flow named {name!r}; flows are {', '.join(entry.name for entry in FLOWS)}")
