"""The light client's cost: import time of ``engine.api.client`` and ``launcher-engine status``
against a running daemon, beside the in-process CLI and a bare Python start.

    .venv/bin/python bench/client.py [--runs 15] [--json]

What runs (everything binds 127.0.0.1; no backend is needed for these commands):

* ``import``: ``python -X importtime -c "import engine.api.client"`` in a fresh process, RUNS
  times; the figure is the cumulative microseconds of the top-level import (median, best),
  and the heavy modules that must not load (aiohttp, sqlite3, sqlite_utils, httpx,
  cryptography, zstandard, any ``engine.io``/``engine.jobs`` module) are listed if they do;
* ``python -c pass``: the interpreter's own start, for scale;
* ``status (daemon)``: wall time of ``launcher-engine --data D status`` (``python -m
  engine.cli``) while ``launcher-engine serve`` runs for D (the CLI's blocking client);
* ``status (in-process)``: the same command with no daemon (the engine starts in the CLI);
* ``status (in-process, system keyring)``: the same without the tests' forced keyring backend
  (``PYTHON_KEYRING_BACKEND`` unset): what a player's machine pays for keyring's detection.

Goals (issue 10): import under 60 ms with none of the heavy modules; status under 150 ms.
Modules are compiled once into a private cache (``PYTHONPYCACHEPREFIX``, as bench/download.py
does): with ``PYTHONDONTWRITEBYTECODE`` set, every start would recompile the engine's sources,
which an installed engine never does. ``--engine-repo DIR`` runs another checkout (A/B).
JSON fields: ``client_import_ms``, ``client_import_heavy_modules``, ``status_daemon_ms``,
``status_inprocess_ms``, ``status_inprocess_keyring_ms``, ``python_start_ms``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testing.daemon import DaemonProcess  # noqa: E402
from testing.processes import subprocess_env  # noqa: E402

HEAVY = ("aiohttp", "sqlite3", "sqlite_utils", "httpx", "cryptography", "zstandard",
         "engine.io", "engine.jobs")


ENGINE_REPO = REPO  # --engine-repo
PYCACHE = Path(tempfile.gettempdir()) / "launcher-bench-client-pycache"


def env(system_keyring: bool = False) -> dict[str, str]:
    extra = {"PYTHONDONTWRITEBYTECODE": "",  # Python reads an empty value as unset
             "PYTHONPYCACHEPREFIX": str(PYCACHE)}
    found = subprocess_env(extra)
    if ENGINE_REPO != REPO:  # the engine from another checkout; first on the path
        found["PYTHONPATH"] = str(ENGINE_REPO) + os.pathsep + found["PYTHONPATH"]
    if system_keyring:  # keyring detects the backend, as on a player's machine
        found.pop("PYTHON_KEYRING_BACKEND", None)
    return found


def import_once() -> tuple[float, list[str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import engine.api.client"],
                          capture_output=True, text=True, cwd=ENGINE_REPO, env=env(),
                          check=True)
    total_us = 0
    heavy: list[str] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = [p.strip() for p in line.split("|")]
        name = parts[2]
        if name == "engine.api.client":
            total_us = int(parts[1])
        if any(name == h or name.startswith(h + ".") for h in HEAVY):
            heavy.append(name)
    return total_us / 1000, heavy


def wall_ms(argv: list[str], system_keyring: bool = False) -> float:
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, cwd=ENGINE_REPO, env=env(system_keyring),
                   check=True)
    return (time.perf_counter() - started) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--engine-repo", type=Path, default=REPO,
                    help="run the engine from this checkout (A/B of start-up changes)")
    args = ap.parse_args()
    global ENGINE_REPO
    ENGINE_REPO = args.engine_repo.resolve()
    import_once()  # fills the bytecode cache
    imports = [import_once() for _ in range(args.runs)]
    heavy = sorted({m for _, mods in imports for m in mods})
    import_ms = [t for t, _ in imports]
    bare = [wall_ms([sys.executable, "-c", "pass"]) for _ in range(args.runs)]
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        data = Path(tmp) / "data"
        status = [sys.executable, "-m", "engine.cli", "--data", str(data), "status"]
        inprocess = [wall_ms(status) for _ in range(max(3, args.runs // 3))]
        keyring = [wall_ms(status, system_keyring=True) for _ in range(max(3, args.runs // 3))]
        daemon = DaemonProcess(data, "http://127.0.0.1:9", Path(tmp) / "daemon.log", env=env())
        daemon.start()
        try:
            wall_ms(status)  # warm the page cache like a player's second command
            via_daemon = [wall_ms(status) for _ in range(args.runs)]
        finally:
            daemon.stop()
    rows = [("import engine.api.client", import_ms, 60.0),
            ("python -c pass (scale)", bare, None),
            ("launcher-engine status (daemon)", via_daemon, 150.0),
            ("launcher-engine status (in-process)", inprocess, None),
            ("launcher-engine status (in-process, system keyring)", keyring, None)]
    print("| what | median ms | best ms | goal ms | pass |")
    print("|---|---|---|---|---|")
    for name, values, goal in rows:
        med = statistics.median(values)
        verdict = "" if goal is None else ("yes" if med < goal else "NO")
        print(f"| {name} | {med:.1f} | {min(values):.1f} | {goal or ''} | {verdict} |")
    print(f"heavy modules loaded by the client: {', '.join(heavy) or 'none'}")
    if args.json:
        print(json.dumps({
            "client_import_ms": round(statistics.median(import_ms), 1),
            "client_import_heavy_modules": heavy,
            "status_daemon_ms": round(statistics.median(via_daemon), 1),
            "status_inprocess_ms": round(statistics.median(inprocess), 1),
            "status_inprocess_keyring_ms": round(statistics.median(keyring), 1),
            "python_start_ms": round(statistics.median(bare), 1),
            "runs": args.runs,
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
