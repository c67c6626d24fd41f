"""The range threads are shared by every task: a speed-limited task, whose ranges sleep on their
threads while they wait for tokens, must not leave another task's ranges waiting for a thread
(review, session 23: with 64 threads, 64 throttled ranges held them all and an unlimited range
of another task did not start for as long as theirs took)."""

from __future__ import annotations

import contextlib
import threading

from engine.io.download import TaskPacer
from engine.io.limiter import AsyncRateLimiter
from engine.io.rangeclient import RangeFetch, Stopped, close_idle_connections, fetch_range, worker_pool
from tests.integration.test_rangeclient import PACK, ScriptedServer, blocks


def test_a_throttled_task_holding_64_ranges_does_not_hold_back_another_task() -> None:
    server = ScriptedServer()
    limiter = AsyncRateLimiter()
    limiter.set_task("A", 200_000.0)  # 64 x 1 MiB at 200 KB/s: about 5.6 minutes
    stop_a, stop_b, b_done = threading.Event(), threading.Event(), threading.Event()

    def fetch(key: str, stop: threading.Event, done: threading.Event | None) -> RangeFetch:
        return RangeFetch(f"http://127.0.0.1:{server.port}/p/packs/{PACK}.pack",
                          blocks([(0, 1 << 20)]), "edge", 10.0, 5.0, lambda job, data: None,
                          (lambda job, result, n: done.set()) if done else (lambda *a: None),
                          lambda: False, stop, lambda: None, pacer=TaskPacer(limiter, key, stop))

    throttled = [worker_pool().submit(fetch_range, fetch("A", stop_a, None)) for _ in range(64)]
    try:
        other = worker_pool().submit(fetch_range, fetch("B", stop_b, b_done))
        assert b_done.wait(60), "task B's range never got a thread"
        other.result(60)
        assert not any(f.done() for f in throttled)  # A's ranges were still running meanwhile
    finally:
        stop_a.set()
        stop_b.set()
        for f in throttled:
            with contextlib.suppress(Stopped):
                f.result(30)
        server.close()
        close_idle_connections()
