"""The launcher's own numbers: start-up to a populated library of 200 games, the UI loop's lag
while the engine downloads at full speed, and the GUI's memory.

    .venv/bin/python bench/ui.py [--size 128] [--games 200] [--json]

What runs (127.0.0.1 only, Qt offscreen):

* ``launcher-backend serve --demo --demo-size SIZE`` (fresh data dir: the demo catalog, the demo
  user), and GAMES - 2 more products granted to the demo user straight in the backend's
  database (titles only: the library shows them like any game);
* ``launcher-engine login demo``; once the window is up, ``install``, ``update`` and
  ``uninstall`` of star-courier run one after another through the daemon until the probe
  ends, so the engine downloads and writes at full speed while the UI is measured;
* ``launcher --probe FILE`` (``ui/probe.py`` inside the real window): start-up = process start
  → the library model populated; then a 10 ms QTimer for PROBE seconds records how late each
  tick fires (loop lag) while the download runs; RSS = the GUI process's max resident set.
  Run twice: ``cold`` (the launcher starts the daemon itself) and ``warm`` (a daemon already
  runs, caches warm: what a player sees when opening the window again).

Goals (issue 17, 2-core machine): start-up under 1 s, lag p99 under 16 ms, RSS under 150 MB.
JSON fields: ``startup_s`` (warm), ``startup_cold_s``, ``loop_lag_p99_ms``, ``loop_lag_max_ms``,
``rss_mb``, ``library_games``, ``probe_ticks``, ``download_progress_events`` (progress events
the window received during the probe: > 0 shows the probe overlapped downloads).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.api.client import daemon_running  # noqa: E402
from testing.daemon import stop_daemon_of  # noqa: E402
from testing.processes import ServerProcess, subprocess_env  # noqa: E402


def grant_many(data: Path, count: int) -> None:
    from backend.config import load_settings
    from backend.db import Database
    from backend.library import grant

    db = Database(load_settings(data).db_url)
    with db.session() as s:
        for i in range(count):
            grant(s, "demo", f"bench-game-{i:03d}", title=f"Bench Game {i:03d}")


def probe(data: Path, url: str, seconds: float, out: Path, engine: list[str]) -> dict[str, Any]:
    """Run the window with its probe while the engine downloads at full speed: once the window
    is up, install, update and reinstall star-courier through the daemon until the probe ends."""
    env = subprocess_env({"QT_QPA_PLATFORM": "offscreen"})
    gui = subprocess.Popen([sys.executable, "-m", "launcher.app", "--data", str(data),
                            "--backend", url, "--probe", str(out), "--probe-seconds",
                            str(seconds)], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    cli_env = subprocess_env()
    while gui.poll() is None and daemon_running(data) is None:
        time.sleep(0.05)
    steps = [["install", "star-courier", "--version", "1.0.0"], ["update", "star-courier"],
             ["uninstall", "star-courier"]]
    i = 0
    while gui.poll() is None:
        subprocess.run([*engine, *steps[i % len(steps)]], env=cli_env, cwd=REPO,
                       capture_output=True, timeout=300)
        i += 1
    if gui.wait(180) != 0 or not out.exists():
        raise SystemExit(f"bench/ui: the launcher probe failed ({gui.returncode})")
    result: dict[str, Any] = json.loads(out.read_text())
    result["engine_steps_during_probe"] = i
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=128, help="MB per demo version")
    ap.add_argument("--games", type=int, default=200)
    ap.add_argument("--probe", type=float, default=4.0, help="seconds of loop-lag probing")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        w = Path(tmp)
        backend = ServerProcess([sys.executable, "-m", "backend.cli", "serve", "--data",
                                 str(w / "be"), "--port", "0", "--demo", "--demo-size",
                                 str(args.size)], w / "backend.log", timeout=900)
        try:
            grant_many(w / "be", max(0, args.games - 2))
            engine = [sys.executable, "-m", "engine.cli", "--data", str(w / "engine"),
                      "--backend", backend.url]
            env = subprocess_env()
            subprocess.run([*engine, "login", "demo", "--password", "demo"], env=env, cwd=REPO,
                           check=True, capture_output=True)
            cold = probe(w / "engine", backend.url, args.probe, w / "cold.json", engine)
            # the cold run's daemon keeps running (detached, as for a player): a warm start now
            warm = probe(w / "engine", backend.url, args.probe, w / "warm.json", engine)
        finally:
            stop_daemon_of(w / "engine")
            backend.stop()
    rows = [("start-up to a populated library (warm)", warm["startup_s"] * 1000, 1000.0),
            ("start-up, launcher starts the daemon (cold)", cold["startup_s"] * 1000, None),
            ("UI loop lag p99 during a full-speed install", warm["loop_lag_p99_ms"], 16.0),
            ("UI loop lag max", warm["loop_lag_max_ms"], None),
            ("GUI RSS MB", warm["rss_mb"], 150.0)]
    print(f"library: {warm['library_games']} games; probe ticks: {warm['probe_ticks']}; "
          f"download progress events during the probe: {warm['download_progress_events']}; "
          f"engine steps: {warm['engine_steps_during_probe']}")
    print("| what | value (ms or MB) | goal | pass |")
    print("|---|---|---|---|")
    for name, value, goal in rows:
        verdict = "" if goal is None else ("yes" if value < goal else "NO")
        print(f"| {name} | {value:.1f} | {goal or ''} | {verdict} |")
    if args.json:
        print(json.dumps({"startup_s": warm["startup_s"], "startup_cold_s": cold["startup_s"],
                          "loop_lag_p99_ms": warm["loop_lag_p99_ms"],
                          "loop_lag_max_ms": warm["loop_lag_max_ms"], "rss_mb": warm["rss_mb"],
                          "library_games": warm["library_games"],
                          "probe_ticks": warm["probe_ticks"],
                          "download_progress_events": warm["download_progress_events"],
                          "cold": cold, "warm": warm}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
