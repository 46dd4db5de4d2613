"""Deployments of every flow, for ``voxflow serve`` (flow.serve, no work pool needed).

``prefect.yaml`` declares the same deployments for the work-pool route (``prefect deploy``).
"""

from __future__ import annotations

from prefect import serve

from flows.ingest import ingest


def deployments() -> list:
    """One deployment per flow, named after the flow."""
    return [
        ingest.to_deployment(
            name="ingest",
            description="Decode, measure and store audio files as 16 kHz mono WAV (files, artifacts, stage_runs rows).",
            tags=["voxflow"],
        ),
    ]


def serve_all() -> None:
    """Serve every deployment from this process until interrupted."""
    serve(*deployments())
