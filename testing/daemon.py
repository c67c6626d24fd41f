"""``launcher-engine serve`` as a real subprocess, for tests and benchmarks."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from engine.api.client import DaemonInfo, read_info
from testing.processes import ServerProcess, stop_process, subprocess_env


class DaemonProcess:
    """The engine daemon of ``data_dir``; its stderr goes to ``log`` (never a full pipe)."""

    def __init__(self, data_dir: Path, backend_url: str, log: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.backend_url = backend_url
        self.log = log or data_dir.parent / f"{data_dir.name}-daemon.log"
        self.env = env
        self.server: ServerProcess | None = None

    def start(self) -> DaemonInfo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server = ServerProcess(
            [sys.executable, "-m", "engine.cli", "--data", str(self.data_dir), "--backend",
             self.backend_url, "serve"], self.log, env=subprocess_env(self.env))
        assert self.server.url.startswith("ws://127.0.0.1:"), self.server.url
        info = read_info(self.data_dir)
        assert info is not None, self.server.log_tail()
        return info

    @property
    def alive(self) -> bool:
        return self.server is not None and self.server.alive

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.server is not None
        self.server.proc.send_signal(sig)
        return self.server.proc.wait(30)

    def stop(self) -> None:
        if self.server is not None:
            stop_process(self.server.proc, 15)


def stop_daemon_of(data_dir: Path, grace_s: float = 15) -> None:
    """Stop whatever daemon runs for ``data_dir`` (e.g. one a launcher started detached)."""
    import os
    import time

    from engine.api.client import daemon_running

    info = daemon_running(data_dir)
    if info is None:
        return
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while daemon_running(data_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
