#!/usr/bin/env python3
"""Update A/B: engines from two (or more) checkouts install the demo's first version and update
through every later one, alternated round by round, against one backend; a table of each step's
wall and CPU seconds per checkout, and with ``--json`` one JSON object last.

    python bench/update_ab.py --engine-repo /path/to/old --engine-repo . --rounds 3 --json

The demo catalog and the backend are ``bench/update.py``'s (same work folder, generated on first
use); no peer tools run. Each round gives every checkout a fresh engine data folder and install.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import update as bench  # bench/update.py: the backend and the engine runner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine-repo", type=Path, action="append", required=True,
                    help="a checkout whose engine runs (give two or more)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=float, default=256, help="MB per demo version (default 256)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    repos = [r.resolve() for r in args.engine_repo]
    work = bench.default_work(args.size).resolve()
    backend = bench.Backend(work / "backend", args.size, 7200)
    runs: dict[str, list[dict[str, Any]]] = {str(r): [] for r in repos}
    steps: list[str] = []
    try:
        backend.set_edges([backend.url + "/cdn/"])
        time.sleep(1.1)  # the edge file is re-read on mtime change
        demo = json.loads((backend.data / "demo.json").read_text())
        versions = next(p["versions"] for p in demo["products"] if p["productId"] == bench.PRODUCT)
        steps = [f"{a} > {b}" for a, b in itertools.pairwise(versions)]
        for n in range(args.rounds):
            for repo in repos:
                folder = work / f"ab-{uuid.uuid4().hex[:8]}"
                try:
                    engine = bench.Engine(folder / "data", backend.url, repo)
                    engine.ok("login", "demo", "--password", "demo")
                    engine.ok("install", bench.PRODUCT, "--version", versions[0],
                              "--target", str(folder / "game"))
                    got = {}
                    for step, version in zip(steps, versions[1:], strict=True):
                        r = engine.ok("update", bench.PRODUCT, "--version", version)
                        got[step] = {"wall_s": round(r.seconds, 3), "cpu_s": round(r.cpu_seconds, 3)}
                    runs[str(repo)].append(got)
                    bench.log(f"round {n + 1}/{args.rounds} {repo}: " + ", ".join(
                        f"{s} {v['wall_s']:.2f} s / {v['cpu_s']:.2f} CPU-s" for s, v in got.items()))
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
    finally:
        backend.stop()
    print(f"| step | {' | '.join(f'{r.name}: wall s (median) | CPU s (median)' for r in repos)} |")
    print("|---|" + "---|---|" * len(repos))
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for step in steps:
        cells = []
        for repo in repos:
            wall = [run[step]["wall_s"] for run in runs[str(repo)]]
            cpu = [run[step]["cpu_s"] for run in runs[str(repo)]]
            medians.setdefault(str(repo), {})[step] = {"wall_s": statistics.median(wall),
                                                       "cpu_s": statistics.median(cpu)}
            cells.append(f"{' / '.join(f'{w:.2f}' for w in wall)} ({statistics.median(wall):.2f})"
                         f" | {' / '.join(f'{c:.2f}' for c in cpu)} ({statistics.median(cpu):.2f})")
        print(f"| {step} | {' | '.join(cells)} |")
    if args.json:
        print(json.dumps({"steps": steps, "runs": runs, "medians": medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
