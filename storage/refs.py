"""What tasks pass each other: references to stored artifacts, never arrays."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArtifactRef:
    """A stored artifact: its URI, the sha256 of its bytes and, for audio, its shape."""

    uri: str
    sha256: str
    size_bytes: int
    sample_rate_hz: int | None = None
    channels: int | None = None
    frames: int | None = None

    @property
    def duration_s(self) -> float | None:
        if self.frames is None or not self.sample_rate_hz:
            return None
        return self.frames / self.sample_rate_hz
