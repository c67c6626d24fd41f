"""Sync agent benchmark: cloud save sync of 100 files / 50 MB between two devices, and playtime
accuracy after an hour of heartbeats with a backend outage in the middle.

    .venv/bin/python bench/sync.py [--files 100] [--mb 50] [--json]

What runs (everything real, bound to 127.0.0.1):

* ``launcher-backend serve --demo --demo-size 4`` on a fresh data dir (the demo user owns
  tiny-tactics, whose manifest declares ``install:saves/*.sav``);
* two engines (``launcher-engine`` subprocesses, two data dirs = two devices of one user),
  each installs tiny-tactics; device A gets ``--files`` save files of ``--mb`` MB in all
  (incompressible bytes), then ``saves sync`` uploads them (upload-url → PUT → confirm per
  file), device B's ``saves sync`` downloads them; then 10% of the files change on A and are
  synced again (only those move);
* playtime: the engine's own journal and outbox (``engine.io.playstate``, ``engine.jobs.agent``)
  in this process, through a fault proxy (``testing.faultproxy``) to the backend: a session that
  started an hour ago, a heartbeat every simulated minute, the outbox replayed every five, the
  backend answering 503 to everything for minutes 20-40; the session ends now. The backend's
  total for the session is compared with the journal's (the seed's heartbeat model would lose
  the outage; ours replays the journal and states the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testing.enginekit import EngineCli  # noqa: E402
from testing.faultproxy import Fault, FaultProxy  # noqa: E402
from testing.processes import ServerProcess  # noqa: E402

PRODUCT = "tiny-tactics"


def start_backend(work: Path) -> ServerProcess:
    argv = [sys.executable, "-m", "backend.cli", "serve", "--data", str(work / "backend"),
            "--port", "0", "--demo", "--demo-size", "4"]
    return ServerProcess(argv, work / "backend.log", timeout=600)


def last(lines: list[dict[str, Any]]) -> dict[str, Any]:
    return lines[-1]


def timed(cli: EngineCli, *args: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    out = last(cli.ok(*args, timeout=900))
    return time.perf_counter() - started, out


def bench_saves(url: str, work: Path, files: int, mb: float) -> dict[str, Any]:
    a, b = EngineCli(work / "device-a", url), EngineCli(work / "device-b", url)
    for cli in (a, b):
        cli.login("demo", "demo")
    a.ok("install", PRODUCT, "--target", str(work / "a"))
    b.ok("install", PRODUCT, "--target", str(work / "b"))
    saves = work / "a" / "saves"
    saves.mkdir(exist_ok=True)
    size = int(mb * 1_000_000 / files)
    for i in range(files):
        (saves / f"slot{i:03d}.sav").write_bytes(os.urandom(size))
    up_s, up = timed(a, "saves", PRODUCT, "sync")
    down_s, down = timed(b, "saves", PRODUCT, "sync")
    for i in range(0, files, 10):
        (saves / f"slot{i:03d}.sav").write_bytes(os.urandom(size))
    changed_s, changed = timed(a, "saves", PRODUCT, "sync")
    same = all((work / "b" / "saves" / p.name).read_bytes() == (saves / p.name).read_bytes()
               for p in sorted(saves.glob("*.sav")) if int(p.stem[4:]) % 10)
    return {"save_files": files, "save_mb": round(files * size / 1e6, 1),
            "save_sync_upload_s": round(up_s, 2), "save_sync_download_s": round(down_s, 2),
            "save_sync_changed_upload_s": round(changed_s, 2),
            "save_uploaded": len(up["saves"]["uploaded"]),
            "save_downloaded": len(down["saves"]["downloaded"]),
            "save_changed_uploaded": len(changed["saves"]["uploaded"]),
            "save_bytes_identical": same}


async def bench_playtime(url: str, work: Path, outage: tuple[int, int]) -> dict[str, Any]:
    import aiohttp
    import sqlite_utils

    from engine.io.backend_client import BackendClient
    from engine.io.bus import EventBus
    from engine.io.library_client import LibraryApi
    from engine.io.playstate import PlayState
    from engine.jobs.agent import Outbox

    with FaultProxy(url) as proxy:
        api = BackendClient(proxy.url)
        await api.login("demo", "demo")
        async with aiohttp.ClientSession() as http:
            lib = LibraryApi(api, http)
            before = (await lib.playtime_summary()).get(PRODUCT, {})
            play = PlayState(sqlite_utils.Database(work / "playtime.sqlite"))
            outbox = Outbox(play, EventBus(), lambda: lib, lambda: 60.0, lambda: set())
            session = uuid.uuid4().hex
            now = time.time()
            t0 = now - 3600
            play.start_session(session, PRODUCT, t0)
            for minute in range(1, 61):
                if outage[0] <= minute < outage[1]:
                    proxy.set_fault(Fault.HTTP_503)
                else:
                    proxy.clear_fault()
                at = t0 + 60 * minute
                if minute < 60:
                    play.beat(session, at)
                else:
                    play.end_session(session, at, 0)
                if minute % 5 == 0:
                    await outbox.replay()
            proxy.clear_fault()
            await outbox.replay()
            after = (await lib.playtime_summary()).get(PRODUCT, {})
        await api.aclose()
    local = play.session(session).seconds(time.time())
    server = int(after.get("total_playtime_seconds", 0)) - int(before.get("total_playtime_seconds", 0))
    return {"playtime_local_s": round(local, 1), "playtime_server_s": server,
            "playtime_error_s": round(server - local, 1),
            "playtime_outage_minutes": outage[1] - outage[0],
            "playtime_pending_after": play.pending_count()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    with tempfile.TemporaryDirectory(prefix="launcher-bench-sync-") as tmp:
        work = Path(tmp)
        server = start_backend(work)
        try:
            result = bench_saves(server.url, work, args.files, args.mb)
            result |= asyncio.run(bench_playtime(server.url, work, (20, 40)))
        finally:
            server.stop()
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    rows = [
        ("save sync up", f"{result['save_files']} files, {result['save_mb']} MB",
         f"{result['save_sync_upload_s']} s"),
        ("save sync down (other device)", f"{result['save_downloaded']} files",
         f"{result['save_sync_download_s']} s"),
        ("save sync, 10% changed", f"{result['save_changed_uploaded']} files",
         f"{result['save_sync_changed_upload_s']} s"),
        ("playtime, 1 h with a 20-min outage", f"local {result['playtime_local_s']} s",
         f"server {result['playtime_server_s']} s (error {result['playtime_error_s']} s)"),
    ]
    for name, what, value in rows:
        print(f"{name:38} {what:28} {value}")
    if args.json:
        print(json.dumps(result))
    return 0 if result["save_bytes_identical"] and result["playtime_pending_after"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
