"""faster-whisper's CTranslate2 folder of the random whisper model (see :mod:`tasks.random_models.whisper`)."""

from tasks.random_models.whisper import build_faster_whisper as build  # noqa: F401
