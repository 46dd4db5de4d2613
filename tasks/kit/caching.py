"""Cache keys of stages.

A stage's ``params_hash`` covers everything besides the input that decides its output: the options,
the model id/revision and the stage's code version. It names the artifact folder
(``artifacts/<sha[:2]>/<sha>/<stage>/<params_hash>/``), so a change to any of them lands elsewhere
instead of overwriting. The cache key adds the input sha256 and the stage name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

PARAMS_HASH_CHARS = 16


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class TextInput:
    """Words as a stage input (a plain ``str`` input is read as a source URI): their content keys the cache."""

    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def params_hash(options: Any, *, code_version: str, model_id: str | None = None) -> str:
    """A short stable hash of a stage's options, model id/revision and code version."""
    payload = {"options": _canonical(options), "model": model_id, "code": code_version}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:PARAMS_HASH_CHARS]


def stage_cache_key(input_sha256: str, stage: str, params: str) -> str:
    """The cache key of one stage on one input: input sha256 + stage + params hash."""
    return hashlib.sha256(f"{stage}:{input_sha256}:{params}".encode()).hexdigest()
