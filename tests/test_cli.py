"""The ``voxflow`` command as a user runs it: a fresh process on the embedded defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from deltalake import DeltaTable

from tests.conftest import CORPUS
from tests.synth import tone_and_noise, write_audio

JFK_SHA256 = "63a4b1e4c1dc655ac70961ffbf518acd249df237e5a0152faae9a4a836949715"


def test_ingest_then_cache_hit_with_one_catalog_row(run_cli, tmp_path):
    jfk = str(CORPUS / "asr_en_jfk" / "jfk.flac")
    first = run_cli("ingest", jfk)
    assert first.returncode == 0, first.stderr
    assert "jfk.flac  done" in first.stdout and "1 done, 0 cached, 0 failed" in first.stdout

    files = DeltaTable(str(tmp_path / ".voxflow" / "catalog" / "files")).to_pyarrow_dataset()  # noqa: F841  (as README)
    rows = duckdb.sql("SELECT sha256, duration_s, sample_rate_hz, channels FROM files").fetchall()
    assert rows == [(JFK_SHA256, 11.0, 44100, 2)]
    version = DeltaTable(str(tmp_path / ".voxflow" / "catalog" / "files")).version()

    second = run_cli("ingest", jfk)
    assert second.returncode == 0, second.stderr
    assert "jfk.flac  cached" in second.stdout and "0 done, 1 cached" in second.stdout
    assert DeltaTable(str(tmp_path / ".voxflow" / "catalog" / "files")).version() == version  # nothing written

    shown = run_cli("catalog", "stage_runs", "--columns", "stage,status,cache_hit")
    assert shown.returncode == 0 and shown.stdout.split().count("True") == 1


def test_bad_input_gives_one_line_errors_and_nonzero_exit(run_cli, tmp_path):
    good = write_audio(tmp_path / "good.wav", tone_and_noise(1, 16000, 1.0), 16000, "PCM_16").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(good[: len(good) // 3])
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("hello, I am text\n" * 30)
    result = run_cli("ingest", "truncated.wav", "empty.wav", "notes.wav")
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert [line.split("'")[1] for line in errors] == ["truncated.wav", "empty.wav", "notes.wav"]
    for line, name in zip(errors, ["truncated.wav", "empty.wav", "notes.wav"]):  # the file, the stage, the reason
        assert line.startswith(f"error: {name}: ingest: cannot decode '{name}': ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".voxflow" / "artifacts").exists()
    assert not (tmp_path / ".voxflow" / "catalog" / "files").exists()


def test_missing_path(run_cli):
    result = run_cli("ingest", "does-not-exist.flac")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("does-not-exist.flac: no such file or folder")


def test_catalog_time_travel_compaction_and_migration_from_the_command_line(run_cli, tmp_path):
    from tests.test_catalog import _legacy_store

    legacy = _legacy_store(tmp_path / "old")
    env_store = str(legacy.store.root)
    refused = run_cli("ingest", str(CORPUS / "denoise_babble" / "speech.wav"), env={"VOXFLOW_HOME": env_store})
    assert refused.returncode == 1 and "run 'voxflow catalog migrate' once" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    migrated = run_cli("catalog", "migrate", env={"VOXFLOW_HOME": env_store})
    assert migrated.returncode == 0 and "files       2" in migrated.stdout, migrated.stdout

    first = run_cli("ingest", str(CORPUS / "denoise_babble" / "speech.wav"))
    assert first.returncode == 0, first.stderr
    before = run_cli("catalog", "files", "--as-of", "1", "--columns", "source_name")  # version 1: the first ingest
    later = run_cli("ingest", str(CORPUS / "asr_en_jfk" / "jfk.flac"))
    assert later.returncode == 0
    assert "speech.wav" in before.stdout and "jfk.flac" not in before.stdout
    now = run_cli("catalog", "files", "--columns", "source_name")
    assert "jfk.flac" in now.stdout and "speech.wav" in now.stdout
    compacted = run_cli("catalog", "compact", "--tables", "files,stage_runs", "--retention-hours", "0")
    assert compacted.returncode == 0, compacted.stderr
    assert "files" in compacted.stdout and "stage_runs" in compacted.stdout
    assert "jfk.flac" in run_cli("catalog", "files", "--columns", "source_name").stdout


def test_a_killed_command_leaves_no_prefect_server_behind(tmp_path):
    """SIGKILL skips every exit handler: the ephemeral Prefect server the command started must stop by itself."""
    import signal
    import time

    import psutil

    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOXFLOW_", "AWS_"))}
    base.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    source = write_audio(tmp_path / "long.wav", tone_and_noise(1, 16000, 120.0), 16000)
    command = [str(Path(sys.executable).with_name("voxflow")), "ingest", str(source)]
    parent = subprocess.Popen(command, cwd=tmp_path, env=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    servers: list[psutil.Process] = []
    while not servers and time.monotonic() < deadline and parent.poll() is None:
        servers = [c for c in psutil.Process(parent.pid).children() if "uvicorn" in " ".join(c.cmdline())]
        time.sleep(0.2)
    assert servers, "the command started no ephemeral Prefect server"
    time.sleep(2.0)  # let it come up and start serving
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    gone, alive = psutil.wait_procs(servers, timeout=20)
    for process in alive:
        process.kill()
    assert not alive, f"the Prefect server outlived its command: {[p.pid for p in alive]}"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["catalog", "files"], ["catalog", "processed"]])
def test_commands_that_run_no_flow_import_neither_prefect_nor_torch(tmp_path, argv):
    """``voxflow catalog`` reads the store only: importing Prefect alone took 0.8 s of its 3.7-5 s (issue 17)."""
    probe = (
        "import sys\n"
        "from voxflow.flows.cli import main\n"
        "try:\n"
        f"    code = main({argv!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "print('imported:', sorted(m for m in ('prefect', 'torch') if m in sys.modules), code)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOXFLOW_", "AWS_"))}
    env["VOXFLOW_HOME"] = str(tmp_path / "home")
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "imported: [] 0", run.stdout


def test_models_list_finds_the_models_without_importing_prefect_or_torch(tmp_path):
    """``voxflow models list`` imported every stage module, Prefect and torch with them: 3.7 s (issue 17). It
    still recognises each library's layout: whisper's official file name, a demucs bag and its models."""
    models = tmp_path / "models"
    (models / "whisper").mkdir(parents=True)
    (models / "whisper" / "large-v3-turbo.pt").write_bytes(b"")  # what whisper's own download names "turbo"
    (models / "demucs").mkdir()
    (models / "demucs" / "htdemucs.yaml").write_text("models: ['955717e8']\n")
    (models / "demucs" / "955717e8-8726e21a.th").write_bytes(b"")
    probe = (
        "import sys\n"
        "from voxflow.flows.cli import main\n"
        "code = main(['models', 'list'])\n"
        "print('imported:', sorted(m for m in ('prefect', 'torch') if m in sys.modules), code)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOXFLOW_", "AWS_"))}
    env["VOXFLOW_MODEL_DIR"] = str(models)
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-1] == "imported: [] 0", run.stdout
    rows = {line.split()[0]: line for line in lines[1:-2]}
    assert str(models / "whisper" / "large-v3-turbo.pt") in rows["transcribe"]
    assert str(models / "demucs") in rows["separate"]
    assert "no (hub download on first use)" in rows["denoise"] and "HF_TOKEN" in rows["diarize"]


def test_an_api_server_that_cannot_start_fails_the_command_at_once(run_cli, tmp_path):
    """Prefect cannot create a PREFECT_HOME whose parent is missing, so its server exits at start-up; Prefect's own
    start-up loop retried it until its timeout (120 s here). The command says so at once, in one line."""
    import time

    started = time.monotonic()
    result = run_cli("ingest", str(CORPUS / "asr_en_jfk" / "jfk.flac"), env={"PREFECT_HOME": str(tmp_path / "a" / "b")})
    assert result.returncode == 1 and time.monotonic() - started < 60
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "the Prefect API server this command started exited with status 3" in line and str(tmp_path / "a") in line


def test_transcribe_writes_its_outputs_where_asked_as_whisper_users_expect(run_cli, tmp_path, tiny_models):
    env = {"VOXFLOW_MODEL_DIR": str(tiny_models.build("pyannote", "whisper"))}
    jfk = str(CORPUS / "asr_en_jfk" / "jfk.flac")
    fast = ("--num-speakers", "2", "--beam-size", "1", "--no-fallback", "--device", "cpu")
    first = run_cli("transcribe", jfk, *fast, "-o", "out", env=env)
    assert first.returncode == 0, first.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["jfk.json", "jfk.rttm", "jfk.srt", "jfk.tsv", "jfk.txt", "jfk.vtt"]
    assert "jfk.flac: wrote out/jfk.srt" in first.stdout
    assert (tmp_path / "out" / "jfk.rttm").read_text().startswith("SPEAKER ")  # the diarization's, too

    again = run_cli("transcribe", jfk, *fast, "-o", "srt-only", "--output-format", "srt", "--json", env=env)
    document = json.loads(again.stdout)
    (file,) = document["files"]
    assert file["status"] == "cached" and file["written"] == ["srt-only/jfk.srt"]
    assert file["outputs"]["transcript.srt"].startswith("file://") and file["lines"]

    quiet = run_cli("transcribe", jfk, *fast, "-q", env=env)
    assert quiet.returncode == 0 and quiet.stdout == ""


def test_on_a_terminal_the_progress_bar_shows_each_files_stage(run_cli, tmp_path, tiny_models):
    """tqdm draws only on a terminal: stderr is a pseudo-terminal here, as in a user's shell."""
    import fcntl
    import pty
    import struct
    import termios

    env = {"VOXFLOW_MODEL_DIR": str(tiny_models.build("pyannote", "whisper")), "VOXFLOW_DEVICE": "cpu"}
    sample = str(CORPUS / "diar_2spk_pyannote" / "sample.wav")
    jfk = str(CORPUS / "asr_en_jfk" / "jfk.flac")
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # 200 columns, as a window
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VOXFLOW_", "AWS_"))}
    base.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", **env)
    command = [str(Path(sys.executable).with_name("voxflow")), "transcribe", sample, jfk, "--jobs", "2"]
    command += ["--num-speakers", "2", "--beam-size", "1", "--no-fallback"]
    with subprocess.Popen(command, cwd=tmp_path, env=base, stdout=subprocess.DEVNULL, stderr=terminal) as run:
        os.close(terminal)
        drawn = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed: the command is done
                break
            if not chunk:
                break
            drawn += chunk
    assert run.returncode == 0
    text = drawn.decode(errors="replace")
    assert "sample.wav: diarize" in text and "jfk.flac: transcribe" in text, text[-2000:]
