"""The application's version: pyproject's ``version``, the one place it is written.

Read from the installed distribution's metadata (an editable install, a wheel, or the frozen
bundle, which carries the ``game_launcher-*.dist-info`` folder: launcher.spec copy_metadata).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "game-launcher"


def app_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # a bare source tree that was never installed
        return "0+unknown"
