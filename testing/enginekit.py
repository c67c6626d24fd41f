"""Helpers for engine tests: run ``launcher-engine`` as a real subprocess, compare trees."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STAGING = ".launcher-staging"


def engine_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    # tests never touch the developer's keyring: the 0600 file fallback is what they exercise
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    env.update(extra or {})
    return env


@dataclass
class EngineCli:
    data_dir: Path
    backend_url: str
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "engine.cli", "--data", str(self.data_dir),
                "--backend", self.backend_url, "--json", *args]

    def run(self, *args: str, timeout: float = 180) -> tuple[int, list[dict[str, Any]], str]:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, cwd=REPO,
                              env=engine_env(self.env), timeout=timeout)
        return proc.returncode, parse_lines(proc.stdout), proc.stderr

    def ok(self, *args: str, timeout: float = 180) -> list[dict[str, Any]]:
        code, lines, err = self.run(*args, timeout=timeout)
        assert code == 0, f"launcher-engine {' '.join(args)} exited {code}:\n{lines[-3:]}\n{err}"
        return lines

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=REPO, env=engine_env(self.env))

    def login(self, user: str, password: str) -> None:
        self.ok("login", user, "--password", password)


def parse_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Relative path -> (sha256 or 'dir', mode bits) for everything under root."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != STAGING]
        rel_dir = Path(dirpath).relative_to(root)
        if not filenames and not dirnames and rel_dir != Path("."):
            out[rel_dir.as_posix()] = ("dir", 0)
        for name in filenames:
            p = Path(dirpath) / name
            rel = (rel_dir / name).as_posix()
            if rel == "launcher-build.json":
                continue
            exec_bit = os.stat(p).st_mode & 0o100
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), exec_bit)
    return out


def assert_same_tree(installed: Path, build: Path) -> None:
    got, want = tree(installed), tree(build)
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    differ = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    assert not (missing or extra or differ), f"missing {missing[:5]} extra {extra[:5]} differ {differ[:5]}"


def read_until(proc: Any, predicate: Any, timeout: float = 60) -> list[dict[str, Any]]:
    """Read a running CLI's JSON lines until ``predicate(last line)`` holds; the lines so far."""
    import time

    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.extend(parse_lines(line))
        if seen and predicate(seen[-1]):
            return seen
    raise AssertionError(f"never reached: {seen[-3:]}")


def downloaded_fraction(fraction: float) -> Any:
    """A ``read_until`` predicate: the task has downloaded ``fraction`` of its bytes."""
    def reached(line: dict[str, Any]) -> bool:
        p = line.get("payload", {})
        return bool(p.get("status") == "downloading" and p.get("totalSizeBytes")
                    and p["downloadedBytes"] >= fraction * p["totalSizeBytes"])
    return reached
