"""Backend benchmark: CDN-token issue latency under many concurrent clients, and CDN throughput
of the backend's own ``/cdn/`` route beside nginx serving the same store (large Range reads).

    .venv/bin/python bench/backend.py [--clients 200] [--requests 20] [--cdn-mb 2048] [--json]

Runs the real ``launcher-backend serve`` as a subprocess on 127.0.0.1 (and nginx with
``packaging/nginx/cdn.conf`` when an nginx binary exists), with the client on the same machine.
Token latency: each of N clients (its own user and download task) calls
``POST /api/v1/download/tasks/{id}/cdn-tokens`` back to back (closed loop); the per-request
latency percentiles are reported (the seed asks P99 < 200 ms); then each client asks once a
second on its own schedule (paced, the load 200 downloading clients really make). CDN throughput: 4 concurrent
readers fetch 8 MiB ranges of a 256 MiB pack through signed URLs until ``--cdn-mb`` MB were read.
With ``--json`` the last line is one JSON object with token_p50_ms, token_p99_ms, cdn_mb_s and
nginx_mb_s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.config import load_settings  # noqa: E402
from backend.db import Database  # noqa: E402
from backend.demo import publish_catalog  # noqa: E402
from backend.nginx import NginxEdge, find_nginx  # noqa: E402
from testing.processes import ServerProcess  # noqa: E402

MIB = 1024 * 1024
PACK_MB = 256
RANGE = 8 * MIB
READERS = 4


def start_backend(data: Path) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "backend.cli", "serve", "--data", str(data),
                          "--port", "0"], data / "backend.log", timeout=120)


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


async def prepare_clients(url: str, names: list[str], product: str) -> list[tuple[str, str]]:
    out = []
    async with aiohttp.ClientSession() as s:
        for name in names:
            async with s.post(f"{url}/api/v1/auth/token",
                              json={"username": name, "password": "pw"}) as r:
                token = (await r.json())["data"]["attributes"]["accessToken"]
            async with s.post(f"{url}/api/v1/download/tasks",
                              headers={"Authorization": f"Bearer {token}"},
                              json={"data": {"attributes": {"productId": product,
                                                            "targetPath": "/bench"}}}) as r:
                assert r.status == 202, await r.text()
                task = (await r.json())["data"]["id"]
            out.append((token, task))
    return out


async def token_bench(url: str, clients: list[tuple[str, str]], requests: int,
                      interval: float = 0.0) -> tuple[list[float], float, int]:
    """Each client requests back to back (interval 0: closed loop, saturation) or once every
    ``interval`` seconds on its own schedule (paced: a realistic refresh load)."""
    latencies: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        start = asyncio.Event()

        async def client(token: str, task: str) -> None:
            nonlocal errors
            headers = {"Authorization": f"Bearer {token}"}
            await start.wait()
            begin = time.perf_counter() + random.random() * interval
            for i in range(requests):
                if interval:
                    await asyncio.sleep(max(0.0, begin + i * interval - time.perf_counter()))
                t0 = time.perf_counter()
                async with s.post(f"{url}/api/v1/download/tasks/{task}/cdn-tokens",
                                  headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append((time.perf_counter() - t0) * 1000)

        # warm up connections and caches
        await asyncio.gather(*(s.post(f"{url}/api/v1/download/tasks/{task}/cdn-tokens",
                                      headers={"Authorization": f"Bearer {tok}"})
                               for tok, task in clients[:20]))
        latencies.clear()
        tasks = [asyncio.create_task(client(tok, task)) for tok, task in clients]
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    return latencies, len(latencies) / elapsed, errors


async def cdn_bench(urls: list[str], size: int, total_mb: int) -> float:
    """Concurrent readers fetching RANGE-sized ranges; returns MB/s (1 MB = 10^6 bytes)."""
    want = total_mb * 1_000_000
    read = 0
    rng = random.Random(7)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def reader(url: str) -> None:
            nonlocal read
            while read < want:
                off = rng.randrange(0, size - RANGE)
                async with s.get(url, headers={"Range": f"bytes={off}-{off + RANGE - 1}"}) as r:
                    assert r.status == 206, r.status
                    async for chunk in r.content.iter_chunked(MIB):
                        read += len(chunk)

        await asyncio.gather(*(reader(urls[0]) for _ in range(2)))  # warm page cache
        read = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(reader(urls[i % len(urls)]) for i in range(READERS)))
        return read / 1e6 / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--requests", type=int, default=20, help="token requests per client")
    ap.add_argument("--paced-requests", type=int, default=10,
                    help="requests per client in the paced run (one per second)")
    ap.add_argument("--cdn-mb", type=int, default=2048, help="MB read per CDN measurement")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-backend-"))
    server: ServerProcess | None = None
    try:
        data = tmp / "data"
        data.mkdir()
        (data / "backend.json").write_text(json.dumps(
            {"cdn_rate_capacity": 1e9, "cdn_rate_per_second": 1e9}))
        products = publish_catalog(data / "store", tmp / "builds", 2, level=3)
        product = products[0][0]
        pack = data / "store" / "cdn" / product / "packs" / ("b" * 64 + ".pack")
        with pack.open("wb") as fh:
            for _ in range(PACK_MB):
                fh.write(os.urandom(MIB))
        settings = load_settings(data)
        db = Database(settings.db_url)
        db.init_schema()
        from backend import auth
        from backend.library import grant

        os.environ["LAUNCHER_BCRYPT_ROUNDS"] = "4"
        names = [f"bench{i}" for i in range(args.clients)]
        with db.session() as s:
            for n in names:
                auth.create_user(s, n, "pw")
        with db.session() as s:
            for n in names:
                grant(s, n, product)
        db.dispose()

        server = start_backend(data)
        url = server.url
        clients = asyncio.run(prepare_clients(url, names, product))
        latencies, rps, errors = asyncio.run(token_bench(url, clients, args.requests))
        p50, p99 = statistics.median(latencies), percentile(latencies, 99)
        paced, paced_rps, paced_errors = asyncio.run(
            token_bench(url, clients, args.paced_requests, interval=1.0))
        paced_p50, paced_p99 = statistics.median(paced), percentile(paced, 99)

        # signed URLs for the big pack: one HMAC (own route) and one nginx-mode token
        from backend.config import Secrets
        from backend.signing import SigningMode, sign

        key = Secrets.load(settings).cdn_key
        rel = f"{product}/packs/{pack.name}"
        expires = int(time.time()) + 3600
        own = f"{url}/cdn/{rel}?{sign(key, SigningMode.HMAC, product, 'bench', expires).query}"
        cdn_mb_s = asyncio.run(cdn_bench([own], pack.stat().st_size, args.cdn_mb))
        nginx_mb_s: float | None = None
        if find_nginx():
            with NginxEdge(data / "store" / "cdn", key, tmp / "nginx") as edge:
                q = sign(key, SigningMode.NGINX, product, "bench", expires).query
                nginx_mb_s = asyncio.run(cdn_bench([f"{edge.url}{rel}?{q}"],
                                                   pack.stat().st_size, args.cdn_mb))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        ("CDN-token issue, P50", f"{p50:.1f} ms", f"{args.clients} concurrent clients, "
         f"{args.requests} requests each, closed loop"),
        ("CDN-token issue, P99", f"{p99:.1f} ms", "seed target < 200 ms"),
        ("CDN-token issue, rate", f"{rps:.0f} req/s", f"{errors} errors"),
        ("CDN-token issue paced, P50", f"{paced_p50:.1f} ms",
         f"{args.clients} clients, each 1 request/s ({paced_rps:.0f} req/s total)"),
        ("CDN-token issue paced, P99", f"{paced_p99:.1f} ms", f"{paced_errors} errors"),
        ("backend /cdn/ route", f"{cdn_mb_s:.0f} MB/s",
         f"{READERS} readers, {RANGE // MIB} MiB ranges of a {PACK_MB} MiB pack"),
        ("nginx secure_link edge",
         f"{nginx_mb_s:.0f} MB/s" if nginx_mb_s is not None else "n/a", "same reads"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'measure':<{w0}}  {'result':>{w1}}  notes")
    for name, value, note in rows:
        print(f"{name:<{w0}}  {value:>{w1}}  {note}")
    if args.json:
        print(json.dumps({"token_p50_ms": round(p50, 2), "token_p99_ms": round(p99, 2),
                          "token_rps": round(rps, 1), "token_paced_p50_ms": round(paced_p50, 2),
                          "token_paced_p99_ms": round(paced_p99, 2),
                          "cdn_mb_s": round(cdn_mb_s, 1),
                          "nginx_mb_s": round(nginx_mb_s, 1) if nginx_mb_s else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
