"""One launcher per user: a second start wakes the first and steps aside."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

pytest.importorskip("PySide6")

from ui.instance import SingleInstance


def test_a_second_start_wakes_the_first(qtbot: Any) -> None:
    name = f"launcher-test-{uuid.uuid4().hex[:8]}"
    first = SingleInstance(name)
    assert first.acquire()
    second = SingleInstance(name)
    with qtbot.waitSignal(first.activated, timeout=3000):
        assert not second.acquire()
    assert second.server is None
    first.server.close()  # type: ignore[union-attr]
    third = SingleInstance(name)  # the first is gone: the next start takes over
    assert third.acquire()
    third.server.close()  # type: ignore[union-attr]
