"""Where the running launcher lives: a source checkout or a frozen bundle, and how to start the
engine from it.

A frozen bundle (launcher.spec) has one executable that is also the engine's CLI and daemon
(``launcher engine ...``: packaging/entry.py), because in a bundle ``sys.executable`` is that
executable, not a Python that could run ``-m engine.cli``.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXE_NAME = "launcher.exe" if sys.platform == "win32" else "launcher"


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def bundle_dir() -> Path | None:
    """The bundle folder holding the executable, or None when running from source."""
    return Path(sys.executable).resolve().parent if is_frozen() else None


def engine_command() -> list[str]:
    """The command line prefix that runs ``launcher-engine`` with this launcher's code."""
    if is_frozen():
        return [sys.executable, "engine"]
    return [sys.executable, "-m", "engine.cli"]


def launcher_command() -> list[str]:
    """The command line prefix that starts this launcher again (the same bundle or source)."""
    if is_frozen():
        return [sys.executable]
    return [sys.executable, "-m", "launcher.app"]
