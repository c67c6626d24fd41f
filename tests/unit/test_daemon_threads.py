"""The daemon starts its executors' threads before its first command (``start_threads``)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from engine.api.daemon import start_threads


def test_start_threads_leaves_that_many_idle_threads_and_calls_start_no_more() -> None:
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="t")
    try:
        start_threads(pool, 5)
        started = {t.ident for t in pool._threads}
        assert len(started) == 5 and all(t.is_alive() for t in pool._threads)
        # five calls at once now run on those threads: none is started for them
        gate = threading.Barrier(5)
        ran = [pool.submit(lambda: (gate.wait(10), threading.get_ident())[1]) for _ in range(5)]
        assert {f.result(10) for f in ran} == started
        assert len(pool._threads) == 5
    finally:
        pool.shutdown()


def test_start_threads_stops_at_the_pool_size() -> None:
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        start_threads(pool, 6)  # a barrier of 6 over 2 threads would break after 10 s
        assert len(pool._threads) == 2
    finally:
        pool.shutdown()
