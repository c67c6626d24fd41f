"""Real processes on loopback, for tests and benchmarks alike: start a server that prints
``listening on URL``, stop any process politely then firmly, pick a free port, copy a store,
run a ``launcher-backend`` command, make a run folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: the repo importable, output unbuffered, fast password
    hashing, never the developer's keyring (the 0600 file fallback is what runs)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["LAUNCHER_BCRYPT_ROUNDS"] = "4"
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    env.update(extra or {})
    return env


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None,
                 grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; always reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def copy_store(src: Path, dest: Path) -> None:
    """A private copy of a content store: immutable files hard-linked, the index copied.
    Never truncate or rewrite a file of the copy in place: replace it (it is shared)."""

    def link_or_copy(s: str, d: str) -> None:
        if Path(s).name.startswith("index.sqlite"):
            shutil.copy2(s, d)
            return
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=link_or_copy)


def backend_cli(data: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 120) -> str:
    """``launcher-backend ARGS --data DATA`` run to completion: its stdout; RuntimeError with
    its output when it fails."""
    proc = subprocess.run([sys.executable, "-m", "backend.cli", *args, "--data", str(data)],
                          capture_output=True, text=True, env=env or subprocess_env(), cwd=REPO,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"launcher-backend {' '.join(args)}: {proc.stdout}\n{proc.stderr}")
    return proc.stdout


@contextlib.contextmanager
def run_folder(base: Path, keep: bool = False) -> Iterator[Path]:
    """A fresh folder ``base/run-*`` for one run (data dirs, logs); removed afterwards unless
    ``keep``."""
    base.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    try:
        yield run_dir
    finally:
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)


class ServerProcess:
    """A subprocess that prints ``listening on URL``; stdout is drained in the background,
    stderr goes to ``log_path``."""

    def __init__(self, argv: list[str], log_path: Path, timeout: float = 60,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        # cwd: ``python -m`` puts it ahead of PYTHONPATH (an A/B bench runs another checkout)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log,
                                     stdin=subprocess.DEVNULL, env=env or subprocess_env(),
                                     cwd=cwd or REPO)
        self.lines: list[str] = []
        self.url = self._wait_url(timeout)
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_url(self, timeout: float) -> str:
        result: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                if line.startswith("listening on "):
                    result.append(line.split("listening on ", 1)[1].strip())
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        if not result:
            self.stop()
            raise RuntimeError(f"server did not start: {self.lines}\n{self.log_tail()}")
        return result[0]

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def log_tail(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self, grace_s: float = 10) -> None:
        stop_process(self.proc, grace_s)
        self._log.close()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None
