"""The generated bad-input corpus (tests/bad_inputs.py) through the real ``ingest`` flow, and through the decoder."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlparse

import pytest

from tests.bad_inputs import KINDS, Kind, write_all
from voxflow.flows.ingest import ingest
from voxflow.flows.pipelines import FileOutcome, FilesFailed
from voxflow.storage.keys import printable
from voxflow.storage.settings import StoreSettings
from voxflow.storage.sources import list_sources
from voxflow.tasks.helpers import audio

OK = ("done", "cached")


def _path_of(uri: str) -> Path:
    """The local path of a ``file://`` URI, byte for byte (names need not be valid UTF-8)."""
    return Path(os.fsdecode(unquote_to_bytes(urlparse(uri).path)))


def _kind_of(path: Path, root: Path) -> str:
    return path.relative_to(root).parts[0]


def _snapshot(root: Path, skip: set[Path]) -> dict[str, tuple]:
    """Every entry under ``root`` (not following links, not descending into ``skip``) with its type, size, mtime."""
    entries = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) not in skip]
        for name in dirs + files:
            st = os.lstat(Path(folder, name))
            entries[str(Path(folder, name).relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return entries


def _error_problems(kind: Kind, outcome: FileOutcome, path: Path, root: Path) -> list[str]:
    error = outcome.error or ""
    problems = []
    if "\n" in error or "\r" in error:
        problems.append("error is not one line")
    expected = f"cannot decode '{printable(path.relative_to(root).as_posix())}': {kind.reason or ''}"
    if not error.startswith(expected):
        problems.append(f"error does not start with {expected!r}; got {error!r}")
    if not outcome.message.isprintable():  # the run's state message and the command line print it
        problems.append(f"its message line holds control characters: {outcome.message!r}")
    if outcome.failed_stage != "ingest":
        problems.append(f"failed in stage {outcome.failed_stage!r}, not 'ingest'")
    return problems


def _kind_problems(kind: Kind, got: list[tuple[FileOutcome, Path]], root: Path) -> list[str]:
    """What differs from the kind's expected outcome (empty when it matches)."""
    seen = "; ".join(f"{path.name!r}: {o.status}{': ' + o.error if o.error else ''}" for o, path in got) or "nothing"
    if len(got) != kind.count:
        return [f"expected {kind.count} file(s) listed, got {len(got)} ({seen})"]
    problems = []
    for outcome, path in got:
        if kind.expect == "done" and outcome.status not in OK:
            problems.append(f"expected done; got {outcome.status}: {outcome.error}")
        elif kind.expect == "failed":
            if outcome.status != "failed":
                problems.append(f"expected failed ({kind.reason}); got {outcome.status}")
            else:
                problems += _error_problems(kind, outcome, path, root)
    return problems


@pytest.mark.usefixtures("prefect_harness")
def test_every_bad_input_has_its_expected_outcome(tmp_path, use_store, monkeypatch):
    store_root = tmp_path / "store"
    catalog = use_store(StoreSettings(location=str(store_root)))
    root = tmp_path / "inputs"
    write_all(root)
    cwd, scratch = tmp_path / "cwd", tmp_path / "scratch"
    cwd.mkdir()
    scratch.mkdir()
    origin, system_tmp = Path.cwd(), Path(tempfile.gettempdir())
    monkeypatch.chdir(cwd)  # a shell run on a name like "$(touch pwned).wav" would write here
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    skip = {store_root, tmp_path / "voxflow-home"}
    before = _snapshot(tmp_path, skip)

    with pytest.raises(FilesFailed) as e:
        ingest(paths=[str(root)])
    report = e.value.report

    by_kind: dict[str, list[tuple[FileOutcome, Path]]] = defaultdict(list)
    for outcome in report.outcomes:
        path = _path_of(outcome.source_uri)
        by_kind[_kind_of(path, root)].append((outcome, path))
    problems = [f"{k.name}: {'; '.join(p)}" for k in KINDS if (p := _kind_problems(k, by_kind.pop(k.folder, []), root))]
    problems += [f"outcome of no kind: {folder}: {got}" for folder, got in by_kind.items()]
    differing = len(problems)
    problems += _invariant_problems(report, catalog, store_root, root)
    problems += [f"written outside the store: {p}" for p in _changes(before, _snapshot(tmp_path, skip))]
    problems += [f"left in the working folder: {p.name!r}" for p in cwd.iterdir()]
    problems += [f"left in the temporary folder: {p.name!r}" for p in scratch.iterdir()]
    pwned = [p for p in tmp_path.rglob("pwned")] + [
        f / "pwned" for f in (origin, system_tmp, Path.home()) if (f / "pwned").exists()
    ]
    problems += [f"a shell ran a file name: {p} exists" for p in pwned]
    assert not problems, (
        f"{differing} of {len(KINDS)} kinds differ, and {len(problems) - differing} other problems:\n"
        + "\n".join(problems)
    )


def _changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    return [
        f"{name!r} {'added' if name not in before else 'removed' if name not in after else 'changed'}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]


def _invariant_problems(report, catalog, store_root: Path, root: Path) -> list[str]:
    """The run's global invariants, each broken one said in a line."""
    problems = []
    # files: one row per (sha256 of the bytes, source URI) ingested; artifacts: one per distinct source bytes
    ingested = [o for o in report.outcomes if o.status in OK]
    sha_of = {o.source_uri: hashlib.sha256(_path_of(o.source_uri).read_bytes()).hexdigest() for o in ingested}
    files = catalog.frame("files")
    rows = sorted(zip(files["sha256"], files["source_uri"]))
    expected_rows = sorted((s, u) for u, s in sha_of.items())
    if rows != expected_rows:
        extra, missing = sorted(set(rows) - set(expected_rows)), sorted(set(expected_rows) - set(rows))
        problems.append(f"files: {len(rows)} rows, expected {len(expected_rows)}; extra {extra}, missing {missing}")
    for row in files.itertuples():
        if row.source_name != printable(_path_of(row.source_uri).relative_to(root).as_posix()):
            problems.append(f"files: source_name {row.source_name!r} is not the file's path below the folder")
    computed: dict[str, list[str]] = defaultdict(list)
    for o in ingested:
        if o.status == "done":
            computed[sha_of[o.source_uri]].append(o.name)
        if o.result.source_sha256 != sha_of[o.source_uri]:
            problems.append(f"{o.name!r}: result's source_sha256 is not the sha256 of its bytes")
    for sha in set(sha_of.values()):
        if len(computed[sha]) != 1:
            problems.append(f"content {sha[:12]} computed {len(computed[sha])} times ({computed[sha]}), not once")
    artifacts = catalog.frame("artifacts")
    if len(artifacts) != len(set(sha_of.values())) or set(artifacts["input_sha256"]) != set(sha_of.values()):
        problems.append(
            f"artifacts: {len(artifacts)} rows, expected one per distinct content ({len(set(sha_of.values()))})"
        )
    if set(artifacts["stage"]) - {"ingest"}:
        problems.append(f"artifacts of other stages: {set(artifacts['stage'])}")

    # the store holds nothing half-written, and no artifact without its catalog row (nor a row without its object)
    stored = [p.relative_to(store_root).as_posix() for p in store_root.rglob("*") if p.is_file()]
    problems += [
        f"half-written object in the store: {k}"
        for k in stored
        if k.rsplit("/", 1)[-1].startswith(".tmp-") or k.endswith(".partial")
    ]
    objects, keys = {k for k in stored if k.startswith("artifacts/")}, set(artifacts["key"])
    problems += [f"artifact object without a catalog row: {k}" for k in sorted(objects - keys)]
    problems += [f"artifacts row without its object: {k}" for k in sorted(keys - objects)]
    return problems


# "too short" is ingest's judgement (no sample left at the working rate), not the decoder's
SINGLE_FAILING = [
    k for k in KINDS if k.expect == "failed" and k.count == 1 and not (k.reason or "").startswith("too short")
]


@pytest.mark.parametrize("kind", SINGLE_FAILING, ids=[k.name for k in SINGLE_FAILING])
def test_the_decoder_rejects_each_broken_file(kind, tmp_path):
    """The same reasons straight from the decoder, without Prefect."""
    kind.make(tmp_path)
    (path,) = [p for p in tmp_path.iterdir()]
    with pytest.raises(audio.AudioDecodeError) as e:
        audio.decode_file(path)
    assert str(e.value).startswith(f"cannot decode '{printable(path.name)}': {kind.reason or ''}")


def test_walking_the_folder_lists_exactly_the_expected_files(tmp_path):
    root = tmp_path / "inputs"
    folders = write_all(root)
    entries = list_sources([str(root)], StoreSettings(location=str(tmp_path / "store")), audio.SUPPORTED_FORMATS)
    listed = defaultdict(int)
    for entry in entries:
        listed[_kind_of(_path_of(entry.uri), root)] += 1
    assert {k.name: listed[k.folder] for k in KINDS} == {k.name: k.count for k in KINDS}
    assert set(listed) <= {k.folder for k in KINDS} and set(folders) == {k.name for k in KINDS}


DONE = [k for k in KINDS if k.expect == "done"]


@pytest.mark.parametrize("kind", DONE, ids=[k.name for k in DONE])
def test_the_decoder_accepts_each_odd_but_valid_file(kind, tmp_path):
    kind.make(tmp_path)
    paths = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(paths) == kind.count
    for path in paths:
        decoded = audio.decode_file(path)
        assert 1 <= decoded.channels <= 8 and decoded.frames > 0
