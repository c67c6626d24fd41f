"""Fixtures of the engine's end-to-end tests: a user who owns both demo games and a logged-in
engine CLI (a real subprocess per command) against the module's real backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testing.enginekit import EngineCli


@pytest.fixture
def user(backend: Any) -> tuple[str, str]:
    name, _token = backend.new_user(products=["star-courier", "tiny-tactics"])
    return name, "secret-pw"


@pytest.fixture
def engine(backend: Any, user: tuple[str, str], tmp_path: Path) -> EngineCli:
    cli = EngineCli(tmp_path / "engine-data", backend.url)
    cli.login(*user)
    return cli


def build_dir(published_store: Any, version: str, product: str = "star-courier") -> Path:
    return Path(published_store.builds) / product / version
