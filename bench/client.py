"""The light client's cost: import time of ``engine.api.client``, ``launcher-engine status``
and ``install`` against a running daemon, beside the in-process CLI and a bare Python start.

    .venv/bin/python bench/client.py [--runs 15] [--json] [--compare OLD_CHECKOUT]

What runs (everything binds 127.0.0.1; the backend is a closed port: these commands need none):

* ``import``: ``python -X importtime -c "import engine.api.client"`` in a fresh process, RUNS
  times; the figure is the cumulative microseconds of the top-level import (median, best),
  and the heavy modules that must not load (aiohttp, sqlite3, sqlite_utils, httpx,
  cryptography, zstandard, any ``engine.io``/``engine.jobs`` module) are listed if they do;
* ``python -c pass``: the interpreter's own start, for scale;
* ``status (daemon)``: wall time of ``launcher-engine --data D --json status`` (``python -m
  engine.cli``) while ``launcher-engine serve`` runs for D (the CLI's blocking client);
* ``install sent (daemon)``: spawn of ``launcher-engine --data D --json install GAME --no-wait
  --target T`` → the daemon reading that request (the verbose daemon logs its arrival with the
  system-wide monotonic clock: engine/api/daemon.py ``STAMPED``): the client's whole start;
* ``status (in-process)``: the same command with no daemon (the engine starts in the CLI);
* ``status (in-process, system keyring)``: the same without the tests' forced keyring backend
  (``PYTHON_KEYRING_BACKEND`` unset): what a player's machine pays for keyring's detection.

The data folder holds a ``config.toml`` (``username = ...``), as after a ``login``. The daemon
runs commands back to back (this host delays the first answer of a process idle for a second
or more by 10-60 ms: the figures are of a warm daemon). ``--compare DIR`` runs the daemon
commands of another checkout's CLI (``git worktree add DIR REV``) against the same daemon,
alternated with this checkout's, one pair at a time (the machine's speed drifts): rows ``(DIR)``.
Goals: import under 60 ms with none of the heavy modules (issue 10); status under 50 ms,
install sent under 40 ms (issue 13). Modules are compiled once into a private cache
(``PYTHONPYCACHEPREFIX``, as bench/download.py does): with ``PYTHONDONTWRITEBYTECODE`` set,
every start would recompile the engine's sources, which an installed engine never does.
``--engine-repo DIR`` runs everything from another checkout. JSON fields:
``client_import_ms``, ``client_import_heavy_modules``, ``status_daemon_ms``,
``status_daemon_best_ms``, ``install_sent_ms``, ``install_sent_best_ms``,
``status_inprocess_ms``, ``status_inprocess_keyring_ms``, ``python_start_ms``, and with
``--compare`` the same daemon fields with a ``compare_`` prefix (medians and bests, ms).
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

from testing.processes import ServerProcess, stop_process, subprocess_env  # noqa: E402

HEAVY = ("aiohttp", "sqlite3", "sqlite_utils", "httpx", "cryptography", "zstandard",
         "engine.io", "engine.jobs")
ARRIVED = "request install arrived at monotonic "  # engine/api/daemon.py's log line

ENGINE_REPO = REPO  # --engine-repo
PYCACHE = Path(tempfile.gettempdir()) / "launcher-bench-client-pycache"


def env(system_keyring: bool = False, repo: Path | None = None) -> dict[str, str]:
    extra = {"PYTHONDONTWRITEBYTECODE": "",  # Python reads an empty value as unset
             "PYTHONPYCACHEPREFIX": str(PYCACHE)}
    found = subprocess_env(extra)
    repo = repo or ENGINE_REPO
    if repo != REPO:  # the engine from another checkout; first on the path
        found["PYTHONPATH"] = str(repo) + os.pathsep + found["PYTHONPATH"]
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


def wall_ms(argv: list[str], system_keyring: bool = False, repo: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, cwd=repo or ENGINE_REPO,
                   env=env(system_keyring, repo), check=True)
    return (time.perf_counter() - started) * 1000


def sent_ms(argv: list[str], log: Path, repo: Path) -> float:
    """Spawn → the daemon reading the install request (its log line's monotonic clock)."""
    started = time.monotonic()
    subprocess.run(argv, capture_output=True, cwd=repo, env=env(repo=repo), check=True)
    stamps = [float(line.split(ARRIVED, 1)[1].split()[0])
              for line in log.read_text(errors="replace").splitlines() if ARRIVED in line]
    arrived = [s for s in stamps if s >= started]
    if not arrived:
        raise RuntimeError(f"the daemon logged no install request after the spawn; see {log}")
    return (min(arrived) - started) * 1000


def cli(data: Path, *words: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", "--data", str(data), "--backend",
            "http://127.0.0.1:9", "--json", *words]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--engine-repo", type=Path, default=REPO,
                    help="run the engine from this checkout (A/B of start-up changes)")
    ap.add_argument("--compare", type=Path, default=None,
                    help="another checkout whose CLI runs the daemon commands, alternated")
    args = ap.parse_args()
    global ENGINE_REPO
    ENGINE_REPO = args.engine_repo.resolve()
    repos = [ENGINE_REPO] + ([args.compare.resolve()] if args.compare else [])
    import_once()  # fills the bytecode cache
    imports = [import_once() for _ in range(args.runs)]
    heavy = sorted({m for _, mods in imports for m in mods})
    import_ms = [t for t, _ in imports]
    bare = [wall_ms([sys.executable, "-c", "pass"]) for _ in range(args.runs)]
    status_of: dict[Path, list[float]] = {r: [] for r in repos}
    sent_of: dict[Path, list[float]] = {r: [] for r in repos}
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "config.toml").write_text('username = "bench"\n')  # as after a login
        status = cli(data, "status")
        inprocess = [wall_ms(status) for _ in range(max(3, args.runs // 3))]
        keyring = [wall_ms(status, system_keyring=True) for _ in range(max(3, args.runs // 3))]
        log = Path(tmp) / "daemon.log"
        daemon = ServerProcess(cli(data, "-v", "serve"), log, env=env(), cwd=ENGINE_REPO)
        try:
            install = cli(data, "install", "star-courier", "--no-wait", "--target",
                          str(Path(tmp) / "game"))
            for repo in repos:  # warm the page cache like a player's second command
                wall_ms(status, repo=repo)
                sent_ms(install, log, repo)
            for _ in range(args.runs):
                for repo in repos:
                    status_of[repo].append(wall_ms(status, repo=repo))
                for repo in repos:
                    sent_of[repo].append(sent_ms(install, log, repo))
        finally:
            stop_process(daemon.proc, 15)
    rows: list[tuple[str, list[float], float | None]] = [
        ("import engine.api.client", import_ms, 60.0),
        ("python -c pass (scale)", bare, None)]
    for repo in repos:
        tag = "" if repo == ENGINE_REPO else f" ({repo})"
        rows += [(f"launcher-engine status (daemon){tag}", status_of[repo], 50.0),
                 (f"launcher-engine install: spawn → sent (daemon){tag}", sent_of[repo], 40.0)]
    rows += [("launcher-engine status (in-process)", inprocess, None),
             ("launcher-engine status (in-process, system keyring)", keyring, None)]
    print("| what | median ms | best ms | goal ms | pass |")
    print("|---|---|---|---|---|")
    for name, values, goal in rows:
        med = statistics.median(values)
        verdict = "" if goal is None else ("yes" if med < goal else "NO")
        print(f"| {name} | {med:.1f} | {min(values):.1f} | {goal or ''} | {verdict} |")
    print(f"heavy modules loaded by the client: {', '.join(heavy) or 'none'}")
    if args.json:
        result: dict[str, object] = {
            "client_import_ms": round(statistics.median(import_ms), 1),
            "client_import_heavy_modules": heavy,
            "python_start_ms": round(statistics.median(bare), 1),
            "status_inprocess_ms": round(statistics.median(inprocess), 1),
            "status_inprocess_keyring_ms": round(statistics.median(keyring), 1),
            "runs": args.runs,
        }
        for repo in repos:
            prefix = "" if repo == ENGINE_REPO else "compare_"
            result |= {f"{prefix}status_daemon_ms": round(statistics.median(status_of[repo]), 1),
                       f"{prefix}status_daemon_best_ms": round(min(status_of[repo]), 1),
                       f"{prefix}install_sent_ms": round(statistics.median(sent_of[repo]), 1),
                       f"{prefix}install_sent_best_ms": round(min(sent_of[repo]), 1)}
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
