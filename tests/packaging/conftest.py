"""Bundle tests (marker ``bundle``) build the PyInstaller bundle (about a minute here, more on a
busy machine): they run with ``pytest -m bundle`` (docs/packaging.md) and are skipped otherwise.
``LAUNCHER_BUNDLE_DIR=DIST`` reuses a bundle packaging/build.py made (DIST/launcher)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "bundle" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="builds the bundle: run with -m bundle (docs/packaging.md)")
    for item in items:
        if "bundle" in item.keywords:
            item.add_marker(skip)
