"""Deployments of every flow, for ``voxflow serve`` (flow.serve, no work pool needed).

``prefect.yaml`` declares the same deployments for the work-pool route (``prefect deploy``).
``ingest-folder`` runs on a cron schedule (every 10 minutes by default) over the inbox folder or
bucket prefix; every deployment can also be run on demand from the UI's parameter form.
"""

from __future__ import annotations

import os

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron, Interval

from voxflow.flows.clone_enhanced import clone_enhanced
from voxflow.flows.ingest import ingest
from voxflow.flows.ingest_folder import SCHEDULE_CRON, ingest_folder
from voxflow.flows.lipsync_features import lipsync_features
from voxflow.flows.separate import separate
from voxflow.flows.synthesize import synthesize
from voxflow.flows.transcribe import transcribe

DEFAULT_INBOX = "inbox"


def deployments(inbox: str | None = None, cron: str | None = None, interval_s: float | None = None) -> list:
    """One deployment per flow, named after the flow; ``ingest-folder`` watches ``inbox`` on ``cron``
    (default every 10 minutes), or every ``interval_s`` seconds when given."""
    if cron and interval_s:
        raise ValueError("give the ingest-folder schedule as a cron expression or an interval, not both")
    inbox = inbox or os.environ.get("VOXFLOW_INBOX") or os.path.abspath(DEFAULT_INBOX)
    return [
        ingest.to_deployment(
            name="ingest",
            description="Decode, measure and store audio files as 16 kHz mono WAV (files, artifacts, stage_runs rows).",
            tags=["voxflow"],
        ),
        transcribe.to_deployment(
            name="transcribe",
            description="Speaker-labelled transcripts: ingest, optional separate/denoise, diarize, transcribe.",
            tags=["voxflow", "gpu"],
        ),
        separate.to_deployment(
            name="separate",
            description="Vocals and accompaniment of each file with Demucs, at the file's own sample rate.",
            tags=["voxflow", "gpu"],
        ),
        lipsync_features.to_deployment(
            name="lipsync-features",
            description="80-bin log-mel windows per video frame for lip-sync models, with their index.",
            tags=["voxflow"],
        ),
        clone_enhanced.to_deployment(
            name="clone-enhanced",
            description="Speak lines in a reference recording's voice (Qwen3-TTS clone), denoised and upsampled to 48 kHz.",
            tags=["voxflow", "gpu"],
        ),
        synthesize.to_deployment(
            name="synthesize",
            description="Batch text-to-speech: designed voices, built-in speakers or clones; one WAV and syntheses row per item.",
            tags=["voxflow", "gpu"],
        ),
        ingest_folder.to_deployment(
            name="ingest-folder",
            description="Run a flow on every file of a folder or s3:// prefix not yet processed with its parameters.",
            tags=["voxflow"],
            schedule=Interval(interval_s) if interval_s else Cron(cron or SCHEDULE_CRON),
            # a tick that finds the previous run still working is cancelled: the next tick takes what is left
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            parameters={"source": inbox},
        ),
    ]


def serve_all(inbox: str | None = None, cron: str | None = None, interval_s: float | None = None) -> None:
    """Serve every deployment from this process until interrupted."""
    serve(*deployments(inbox, cron, interval_s))
