"""Prefect's ephemeral API server, tied to the process that started it.

A flow run without ``PREFECT_API_URL`` starts Prefect's ephemeral server as a child process
(``python -m uvicorn … prefect.server.api.server:create_app``), stopped at exit. A ``voxflow``
command killed by SIGKILL, a timeout or the out-of-memory killer never reaches its exit handlers, so
that server (about 290 MB) would live on. :func:`tie_ephemeral_server` makes the server start through
:func:`create_app` here instead, which starts Prefect's app and a watcher thread: when the process that
started the server is gone (the server is re-parented), the server stops itself (SIGTERM, then exit).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

PARENT_ENV = "VOXFLOW_EPHEMERAL_PARENT"  # the pid of the process that started the server
PARENT_POLL_S = 0.5  # how often the server checks that its parent is alive
STOP_GRACE_S = 5.0  # after SIGTERM, how long the server may take before it exits hard
PREFECT_FACTORY = "prefect.server.api.server:create_app"
FACTORY = "voxflow.flows.ephemeral:create_app"


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
    """Make every ephemeral server this process starts stop when this process dies, however it dies."""
    from prefect.server.api import server

    server.subprocess = _TiedSubprocess()  # type: ignore[assignment]
