"""Options declared once: each field's type, bounds, default and description in one ``Annotated`` Field.

A stage's (or flow's) options are a frozen dataclass deriving from :class:`Options`; each field reads
``name: Annotated[type, Field(bounds..., description=...)] = default``. From that one declaration come

* the check: constructing the options validates every field against its type and bounds, and raises
  :class:`InvalidOptions` (a ``ValueError``) in one line naming the option, the rule and the value;
* the UI form and the server-side validation of flow parameters (pydantic's JSON schema of the flow's
  signature, which embeds the dataclass);
* the command line's help and defaults (:func:`describe`).

Rules between fields (an overlap shorter than its chunk) live in the class's :meth:`Options.check`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from voxflow.tasks.kit.markdown import markdown_text

UNITS = {"s": "s", "ms": "ms", "hz": "Hz", "khz": "kHz", "db": "dB", "dbfs": "dBFS", "lufs": "LUFS"}  # name suffixes
ACRONYMS = {"vad": "VAD", "hf": "HF", "id": "ID", "tts": "TTS", "wer": "WER", "cer": "CER", "snr": "SNR"}
ACRONYMS |= {"rms": "RMS", "lufs": "LUFS", "dnsmos": "DNSMOS", "rttm": "RTTM", "qc": "QC", "url": "URL", "f0": "F0"}


def option_title(name: str, field: Any = None) -> str:
    """A form's title for an option: ``chunk_s`` is "Chunk (s)", ``sample_rate_hz`` "Sample rate (Hz)",
    ``vad_min_silence_s`` "VAD min silence (s)" (pydantic's own would be "Chunk S", "Sample Rate Hz")."""
    words = name.split("_")
    unit = UNITS.get(words[-1]) if len(words) > 1 else None
    text = " ".join(ACRONYMS.get(w, w) for w in (words[:-1] if unit else words))
    text = text[:1].upper() + text[1:]
    return f"{text} ({unit})" if unit else text


def _markdown_descriptions(schema: dict[str, Any], cls: type) -> None:
    """The UI renders descriptions as Markdown: ``<model dir>/<name>.pt`` and ``*/*.wav`` must show as written."""
    for prop in schema.get("properties", {}).values():
        if "description" in prop:
            prop["description"] = markdown_text(prop["description"])


class InvalidOptions(ValueError):
    """Options that break their declared bounds or a rule between them; the message is one line."""


class Options:
    """Base of options dataclasses: fields are checked against their declaration on construction; their form
    in the UI has titles with units and descriptions shown as written."""

    __pydantic_config__ = ConfigDict(  # an unknown option (a typo) is an error, never silently dropped
        extra="forbid", field_title_generator=option_title, json_schema_extra=_markdown_descriptions
    )

    def __post_init__(self) -> None:
        for name, adapter in _adapters(type(self)).items():
            value = getattr(self, name)
            if dataclasses.is_dataclass(value):  # nested options checked themselves when they were made
                continue
            try:
                checked = adapter.validate_python(value, strict=True)
            except ValidationError as e:
                raise InvalidOptions(f"{type(self).__name__}.{name}: {_reason(e)} (got {value!r})") from None
            if checked is not value and type(checked) is not type(value):  # e.g. an int given for a float
                object.__setattr__(self, name, checked)
        self.check()

    def check(self) -> None:
        """Rules between fields: raise :class:`InvalidOptions` naming them (nothing to check by default)."""


def model_name(value: str) -> str:
    """A validator (``AfterValidator(model_name)``): a model's name, never a path."""
    if "/" in value or "\\" in value or value.startswith("."):
        raise ValueError("must be a model name, not a path")
    return value


def not_blank(value: str) -> str:
    """A validator (``AfterValidator(not_blank)``): text with something other than spaces."""
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _reason(error: ValidationError) -> str:
    message = error.errors()[0]["msg"]
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


@functools.cache
def _adapters(cls: type) -> dict[str, TypeAdapter]:
    hints = _hints(cls)
    return {f.name: TypeAdapter(hints[f.name]) for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class OptionInfo:
    """What the command line shows of one option: its description, default, type and choices."""

    description: str
    default: Any
    type: type | None  # int, float, str or bool; None for other types
    choices: tuple[Any, ...] | None  # the values of a Literal

    def help(self, extra: str = "") -> str:
        """``<description> [extra] (default <default>)``: an argparse help text."""
        text = self.description.rstrip(".") + (f"; {extra}" if extra else "")
        return text if self.default in (None, "") else f"{text} (default {self.default})"


def describe(cls: type, name: str) -> OptionInfo:
    """The declaration of option ``name`` of the options dataclass ``cls``."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    hint = _hints(cls)[name]
    description = next((m.description for m in getattr(hint, "__metadata__", ()) if isinstance(m, FieldInfo)), "")
    default = field.default if field.default is not dataclasses.MISSING else None
    base = get_args(hint)[0] if hasattr(hint, "__metadata__") else hint
    if get_origin(base) in (typing.Union, types.UnionType):  # X | None: the option's own type
        base = next((a for a in get_args(base) if a is not type(None)), base)
    choices = get_args(base) if get_origin(base) is Literal else None
    scalar = base if base in (int, float, str, bool) else (type(choices[0]) if choices else None)
    return OptionInfo(description or "", default, scalar, choices)
