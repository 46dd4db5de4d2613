"""faster-whisper's CTranslate2 folder of the random whisper model (see :mod:`voxflow.tasks.testing.random_models.whisper`)."""

from voxflow.tasks.testing.random_models.whisper import build_faster_whisper as build  # noqa: F401
