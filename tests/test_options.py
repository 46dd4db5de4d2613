"""Options are declared once: the bound, the default and the description in one Annotated Field, from
which the check on construction, the UI form (JSON schema) and the command line's help all come."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import pytest
from pydantic import TypeAdapter

import voxflow.flows
import voxflow.tasks
from voxflow.tasks.denoise import DenoiseOptions
from voxflow.tasks.diarize import DiarizeOptions
from voxflow.tasks.kit.options import InvalidOptions, Options, describe
from voxflow.tasks.transcribe import TranscribeOptions


def _options_classes() -> list[type]:
    found = []
    for package in (voxflow.tasks, voxflow.flows):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if ".testing" in info.name or ".cli" in info.name:
                continue
            module = importlib.import_module(info.name)
            found += [
                value
                for name, value in vars(module).items()
                if name.endswith("Options")
                and isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.__name__
            ]
    return found


def test_every_options_class_declares_its_checks_once():
    classes = _options_classes()
    assert len(classes) >= 14
    for cls in classes:
        assert issubclass(cls, Options), cls
        assert "__post_init__" not in vars(cls), f"{cls.__name__} checks its fields by hand"
        cls()  # the defaults pass their own declared bounds


def test_the_check_the_form_and_the_help_come_from_one_declaration():
    with pytest.raises(InvalidOptions, match=r"^TranscribeOptions.chunk_s: Input should be less than or equal to 30"):
        TranscribeOptions(chunk_s=31.0)
    schema = TypeAdapter(TranscribeOptions).json_schema()["properties"]["chunk_s"]
    assert (schema["maximum"], schema["default"]) == (30, 20.0)
    info = describe(TranscribeOptions, "chunk_s")
    assert info.description == schema["description"] and info.default == 20.0 and info.type is float
    assert info.help() == f"{schema['description'].rstrip('.')} (default 20.0)"
    backend = describe(TranscribeOptions, "backend")
    assert backend.choices == ("whisper", "faster-whisper") and backend.type is str
    assert describe(DiarizeOptions, "num_speakers").type is int


def test_values_are_checked_by_type_and_coerced_only_losslessly():
    assert DenoiseOptions(chunk_s=5).chunk_s == 5.0 and isinstance(DenoiseOptions(chunk_s=5).chunk_s, float)
    with pytest.raises(InvalidOptions, match="DenoiseOptions.chunk_s: Input should be a valid number"):
        DenoiseOptions(chunk_s="5")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptions, match="DiarizeOptions.num_speakers: Input should be a valid integer"):
        DiarizeOptions(num_speakers=2.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptions, match="give num_speakers, or min_speakers/max_speakers, not both"):
        DiarizeOptions(num_speakers=2, min_speakers=1)  # a rule between fields, in check()
