"""Prefect's ephemeral API server, tied to the process that started it.

A flow run without ``PREFECT_API_URL`` starts Prefect's ephemeral server as a child process
(``python -m uvicorn … prefect.server.api.server:create_app``), stopped at exit. A ``voxflow``
command killed by SIGKILL, a timeout or the out-of-memory killer never reaches its exit handlers, so
that server (about 290 MB) would live on. :func:`tie_ephemeral_server` makes the server start through
:func:`create_app` here instead, which starts Prefect's app and a watcher thread: when the process that
started the server is gone (the server is re-parented), the server stops itself (SIGTERM, then exit).

Prefect starts that server when the flow run first asks for a client: after the command's imports
(about 2.5 s) and after importing its own server modules into the command (another 3 s), and the
server then takes about 4.4 s to answer. :func:`start_early` starts the same server first thing,
through the same factory and settings, so that its start-up overlaps the command's imports on the
other core and the command never imports the server's modules; it skips the blocks registration
Prefect's start-up repeats every time (1.5 s: Block types register themselves when a Block is saved).
It does so only when Prefect would start an ephemeral server: no ``PREFECT_API_URL`` in the
environment or the active profile, and no Prefect settings file in the working folder.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PARENT_ENV = "VOXFLOW_EPHEMERAL_PARENT"  # the pid of the process that started the server
PARENT_POLL_S = 0.5  # how often the server checks that its parent is alive
STOP_GRACE_S = 5.0  # after SIGTERM, how long the server may take before it exits hard
PREFECT_FACTORY = "prefect.server.api.server:create_app"
FACTORY = "voxflow.flows.ephemeral:create_app"
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}  # Prefect's
NO_BLOCK_REGISTRATION = {
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}


def create_app() -> Any:
    """The ephemeral server's app (Prefect's own), stopping itself once its parent process is gone."""
    from prefect.server.api.server import create_app as prefect_app

    parent = os.environ.get(PARENT_ENV)
    if parent:
        threading.Thread(target=_watch_parent, args=(int(parent),), name="voxflow-parent-watch", daemon=True).start()
    return prefect_app()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
    time.sleep(STOP_GRACE_S)
    os._exit(1)


class _TiedSubprocess:
    """Prefect's server module's view of ``subprocess``: its Popen starts the server through :func:`create_app`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args: list[str], *rest: Any, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:  # noqa: N802
        if PREFECT_FACTORY in args:
            args = [FACTORY if arg == PREFECT_FACTORY else arg for arg in args]
            env = {**(env if env is not None else os.environ), PARENT_ENV: str(os.getpid())}
        return subprocess.Popen(args, *rest, env=env, **kwargs)


def tie_ephemeral_server() -> None:
    """Make every ephemeral server this process starts stop when this process dies, however it dies
    (nothing to do when Prefect has an API URL: importing its server modules alone takes 3 s)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return
    from prefect.server.api import server

    server.subprocess = _TiedSubprocess()  # type: ignore[assignment]


class ServerNotStarted(RuntimeError):
    """The ephemeral API server a command started exited or did not answer in time."""


class EarlyServer:
    """Prefect's ephemeral API server, started by :func:`start_early` before the command's imports."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [sys.executable, "-m", "uvicorn", "--factory", FACTORY, "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        server_env = {**environ, **SERVER_ENV, **NO_BLOCK_REGISTRATION, PARENT_ENV: str(os.getpid())}
        self.process = subprocess.Popen(command, env=server_env)
        atexit.register(self.stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait_ready(self, timeout_s: float) -> None:
        """Return once the server answers its health check; raise ServerNotStarted if it cannot."""
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:  # uvicorn's 3: its start failed (a port taken, a database)
                raise ServerNotStarted(
                    f"the Prefect API server this command started exited with status {self.process.returncode} "
                    f"(its error is printed above; PREFECT_HOME={os.environ.get('PREFECT_HOME', '~/.prefect')})"
                )
            try:
                with direct.open(f"{self.api_url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise ServerNotStarted(f"the Prefect API server this command started did not answer within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_early(environ: Mapping[str, str] = os.environ, cwd: Path | None = None) -> EarlyServer | None:
    """Start the ephemeral API server now and point this process's Prefect at it, if Prefect would start one.

    Call before Prefect is imported (it reads ``PREFECT_API_URL`` once, on import).
    """
    if not would_start_ephemeral(environ, Path.cwd() if cwd is None else cwd):
        return None
    server = EarlyServer(environ)
    os.environ["PREFECT_API_URL"] = server.api_url
    return server


def would_start_ephemeral(environ: Mapping[str, str], cwd: Path) -> bool:
    """Whether a flow run here would start Prefect's ephemeral server: no API URL in the environment or
    the active profile, ephemeral mode on, and no settings file in ``cwd`` that could say otherwise."""
    if environ.get("PREFECT_API_URL") or _settings_file_in(cwd):
        return False
    try:
        profile = _active_profile(environ)
    except (OSError, tomllib.TOMLDecodeError):  # unreadable: let Prefect decide, and say why
        return False
    if profile.get("PREFECT_API_URL"):
        return False
    names = ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")
    enabled = next((source[n] for source in (environ, profile) for n in names if source.get(n)), "false")
    return str(enabled).strip().lower() in ("1", "true", "yes", "on")


def _settings_file_in(cwd: Path) -> bool:
    """Prefect also reads settings from ``prefect.toml``, ``pyproject.toml`` ([tool.prefect]) and ``.env``."""
    try:
        if (cwd / "prefect.toml").exists():
            return True
        if (cwd / ".env").exists() and "PREFECT_" in (cwd / ".env").read_text(errors="replace"):
            return True
        return (cwd / "pyproject.toml").exists() and "[tool.prefect" in (cwd / "pyproject.toml").read_text(
            errors="replace"
        )
    except OSError:
        return True  # unreadable: let Prefect decide


def _active_profile(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings of Prefect's active profile: its built-in profiles, overridden by the user's file."""
    spec = importlib.util.find_spec("prefect")  # finds the package without importing it
    built_in = _read_toml(Path(spec.origin).parent / "settings" / "profiles.toml") if spec and spec.origin else {}
    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    user = _read_toml(Path(environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser())
    name = environ.get("PREFECT_PROFILE") or user.get("active") or built_in.get("active") or "ephemeral"
    profiles = [source.get("profiles", {}).get(name, {}) for source in (built_in, user)]
    return {**profiles[0], **profiles[1]}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
