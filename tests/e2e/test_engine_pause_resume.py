"""Pausing and resuming a running install in one engine process re-plans nothing: the grant,
the parsed manifest and the full plan are kept while the task is paused, the resumed run
fetches the full plan less the journal's blocks, and the game arrives byte-exact. A finished
task leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from engine.core.lifecycle import TaskState
from engine.io.config import load_settings
from engine.jobs.engine import Engine
from testing.enginekit import assert_same_tree

MAIN = "star-courier"


@pytest.fixture
async def engine(backend: Any, tmp_path: Path) -> Any:
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    name, _ = backend.new_user(products=[MAIN])
    settings = load_settings({"data_dir": str(tmp_path / "data"), "backend_url": backend.url})
    eng = Engine(settings)
    await eng.api.login(name, "secret-pw")
    try:
        yield eng
    finally:
        await eng.close()


async def _until(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_resume_reuses_the_plan(engine: Engine, published_store: Any, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine.jobs.install")
    task = engine.install(MAIN, target=str(tmp_path / "g"), limit_bps=400_000)
    runner = asyncio.create_task(engine.run())
    try:
        for _ in range(2):  # twice: a resumed run keeps what it reused for the next pause
            start = engine.state.task(task.id).downloaded_bytes
            await _until(lambda s=start: engine.state.task(task.id).downloaded_bytes > s + 100_000)
            engine.pause(task.id)
            await _until(lambda: task.id not in engine._runners)
            assert engine.state.task(task.id).status is TaskState.PAUSED
            assert task.id in engine._prepared  # kept while paused
            engine.resume(task.id)
            await _until(lambda: engine.state.task(task.id).status is TaskState.DOWNLOADING)
        engine.set_task_limit(task.id, None)
        await _until(lambda: engine.state.task(task.id).status is TaskState.COMPLETED)
        await _until(lambda: task.id not in engine._runners)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    prepared = [r.getMessage() for r in caplog.records if "CPU-s of preparation" in r.getMessage()]
    assert len(prepared) == 3, prepared
    assert "(planned;" in prepared[0]  # "(planned; grant .. ms manifest .. ms ...)"
    assert all("(plan reused;" in m for m in prepared[1:]), prepared
    assert task.id not in engine._prepared  # completed: nothing kept
    latest = published_store.product(MAIN).versions[-1]
    assert_same_tree(tmp_path / "g", Path(published_store.builds) / MAIN / latest)
    print("\n".join(prepared))  # the CPU figures, for the record (-s)
