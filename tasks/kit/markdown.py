"""Text shown as it is where Prefect's UI renders Markdown (parameter descriptions, Markdown artifacts)."""

from __future__ import annotations

import re

MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~])")


def markdown_text(text: str) -> str:
    """``text`` shown as it is in Markdown: ``<name>``, ``*/*.wav`` or ``[x](y)`` are not markup."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)
