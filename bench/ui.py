"""The launcher's own numbers: start-up to a populated library of 200 games, the UI loop's lag
while the engine downloads at full speed, and the GUI's memory.

    .venv/bin/python bench/ui.py [--size 128] [--games 200] [--json]

What runs (127.0.0.1 only, Qt offscreen):

* ``launcher-backend serve --demo --demo-size SIZE`` (fresh data dir: the demo catalog, the demo
  user), and GAMES - 2 more products granted to the demo user straight in the backend's
  database (titles only: the library shows them like any game);
* ``launcher-engine login demo``, then ``install star-courier --no-wait`` queued, so the
  engine downloads at full speed as soon as a daemon runs;
* ``launcher --probe FILE`` (``ui/probe.py`` inside the real window): start-up = process start
  → the library model populated; then a 10 ms QTimer for PROBE seconds records how late each
  tick fires (loop lag) while the download runs; RSS = the GUI process's max resident set.
  Run twice: ``cold`` (the launcher starts the daemon itself) and ``warm`` (a daemon already
  runs, caches warm: what a player sees when opening the window again).

Goals (issue 17, 2-core machine): start-up under 1 s, lag p99 under 16 ms, RSS under 150 MB.
JSON fields: ``startup_s`` (warm), ``startup_cold_s``, ``loop_lag_p99_ms``, ``loop_lag_max_ms``,
``rss_mb``, ``library_games``, ``probe_ticks``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

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


def probe(data: Path, url: str, seconds: float, out: Path) -> dict[str, Any]:
    env = subprocess_env({"QT_QPA_PLATFORM": "offscreen"})
    subprocess.run([sys.executable, "-m", "launcher.app", "--data", str(data), "--backend", url,
                    "--probe", str(out), "--probe-seconds", str(seconds)], env=env, cwd=REPO,
                   check=True, capture_output=True, timeout=180)
    result: dict[str, Any] = json.loads(out.read_text())
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
            subprocess.run([*engine, "install", "star-courier", "--no-wait"], env=env, cwd=REPO,
                           check=True, capture_output=True)
            cold = probe(w / "engine", backend.url, args.probe, w / "cold.json")
            # the cold run's daemon keeps running (detached, as for a player): warm start now
            subprocess.run([*engine, "uninstall", "star-courier"], env=env, cwd=REPO,
                           capture_output=True)
            subprocess.run([*engine, "install", "star-courier", "--no-wait"], env=env, cwd=REPO,
                           check=True, capture_output=True)
            warm = probe(w / "engine", backend.url, args.probe, w / "warm.json")
        finally:
            stop_daemon_of(w / "engine")
            backend.stop()
    rows = [("start-up to a populated library (warm)", warm["startup_s"] * 1000, 1000.0),
            ("start-up, launcher starts the daemon (cold)", cold["startup_s"] * 1000, None),
            ("UI loop lag p99 during a full-speed install", warm["loop_lag_p99_ms"], 16.0),
            ("UI loop lag max", warm["loop_lag_max_ms"], None),
            ("GUI RSS MB", warm["rss_mb"], 150.0)]
    print(f"library: {warm['library_games']} games; probe ticks: {warm['probe_ticks']}")
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
                          "probe_ticks": warm["probe_ticks"], "cold": cold, "warm": warm}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
