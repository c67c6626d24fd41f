"""``launcher --probe FILE``: the numbers bench/ui.py reports, measured inside the real window.

start-up: process start → the library populated (the first frame a player can use); loop lag: a
10 ms QTimer probe while the engine downloads at full speed (how late each tick fires, p99); RSS:
the GUI process's resident memory. Written as one JSON object, then the window exits."""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import time
from pathlib import Path

from PySide6.QtCore import QTimer

from ui.window import MainWindow

PROBE_MS = 10


async def run_probe(window: MainWindow, out: Path, started: float, seconds: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while window.library.rowCount() == 0 and loop.time() < deadline:
        await asyncio.sleep(0.005)
    startup_s = time.monotonic() - started
    lags: list[float] = []
    last = time.perf_counter()

    def tick() -> None:
        nonlocal last
        now = time.perf_counter()
        lags.append(max(0.0, (now - last) * 1000 - PROBE_MS))
        last = now

    progress_events = 0

    def count(event: object) -> None:
        nonlocal progress_events
        if getattr(event, "status", None) == "downloading":
            progress_events += 1

    window.link.eventReceived.connect(count)
    timer = QTimer()
    timer.setInterval(PROBE_MS)
    timer.timeout.connect(tick)
    timer.start()
    await asyncio.sleep(seconds)
    timer.stop()
    lags.sort()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "startup_s": round(startup_s, 3),
        "library_games": window.library.rowCount(),
        "loop_lag_p50_ms": round(statistics.median(lags), 2) if lags else None,
        "loop_lag_p99_ms": round(lags[int(len(lags) * 0.99) - 1], 2) if lags else None,
        "loop_lag_max_ms": round(lags[-1], 2) if lags else None,
        "probe_ticks": len(lags),
        "rss_mb": round(rss_mb, 1),
        "download_progress_events": progress_events,  # > 0: the probe overlapped a download
    }
    out.write_text(json.dumps(result))
    return 0
