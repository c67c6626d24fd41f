"""run_to_end: a cancelled caller still waits for its thread (nothing writes after a run ends)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine.io.threads import run_to_end


async def test_a_cancelled_call_returns_only_after_its_thread() -> None:
    started, ended = threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        time.sleep(0.3)
        ended.set()

    call = asyncio.create_task(run_to_end(None, work))
    while not started.is_set():
        await asyncio.sleep(0.01)
    call.cancel()
    await asyncio.sleep(0)
    call.cancel()  # a second cancel while it waits changes nothing
    with pytest.raises(asyncio.CancelledError):
        await call
    assert ended.is_set()


async def test_a_cancel_tells_the_thread_to_stop_and_a_result_comes_back() -> None:
    stop = threading.Event()
    seen: list[int] = []

    def steps(flag: threading.Event) -> int:
        for i in range(1000):
            if flag.is_set():
                return i
            seen.append(i)
            time.sleep(0.005)
        return 1000

    assert await run_to_end(None, lambda: 7) == 7
    call = asyncio.create_task(run_to_end(None, steps, stop, stop=stop))
    while not seen:
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert stop.is_set() and len(seen) < 1000
    count = len(seen)
    await asyncio.sleep(0.05)
    assert len(seen) == count  # the thread had returned
