"""Backend benchmark: CDN-token capacity at the SLO on the scaled stack and on the embedded
default, the per-user rate limit across workers, closed-loop saturation, and CDN throughput of
the backend's own ``/cdn/`` route beside nginx serving the same store.

    .venv/bin/python bench/backend.py [--stack scaled|embedded|both] [--workers 2]
                                      [--step-seconds 4] [--clients 200] [--cdn-mb 2048] [--json]

Stacks (every server a real process on 127.0.0.1, the load generator on the same machine):
- ``scaled``: ``backend.stack.Stack``: PostgreSQL, Redis (token buckets), SeaweedFS S3 (saves),
  nginx, and the backend with ``--workers`` uvicorn workers behind one port, access log on;
- ``embedded``: ``launcher-backend serve`` as the demo runs it: SQLite, one process, buckets in
  memory, saves on local disk.

Capacity: an open-loop load of ``POST /api/v1/download/tasks/{id}/cdn-tokens`` (each of
``--clients`` users its own task; request i is sent at t0 + i/rate whether or not earlier ones
returned, and its latency counts from that scheduled moment, so a slow server cannot slow the
generator down and hide its queueing) is raised step by step; the capacity at the SLO is the
highest rate whose P99 stays under 20 ms with no errors (the generator's own lateness is
reported beside it), the seed's point (P99 < 200 ms) likewise; a step over 200 ms is run once
more before the ladder stops (the machine is shared: one burst of another job must not end it).
Rate limit: one user with a bucket of 10 and 100/s hammered for 10 s from 32 connections spread
over the workers; exact = allowed / (10 + 100 x elapsed).
With ``--json`` the last line is one JSON object (``--stack both``: the scaled one, with the
embedded one under ``"embedded"``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.config import Secrets, load_settings  # noqa: E402
from backend.db import Database  # noqa: E402
from backend.demo import publish_catalog  # noqa: E402
from backend.nginx import NginxEdge, find_nginx  # noqa: E402
from backend.stack import Backend, Stack  # noqa: E402

MIB = 1024 * 1024
PACK_MB = 256
RANGE = 8 * MIB
READERS = 4
SLO_MS = 20.0
SEED_MS = 200.0
RATES = (250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 3500, 4000)
NO_LIMIT = {"cdn_rate_capacity": 1e9, "cdn_rate_per_second": 1e9}


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def seed_data(data: Path, builds: Path, dsn: str | None, names: list[str]) -> str:
    """Store, users and grants; returns the product the clients download."""
    products = publish_catalog(data / "store", builds, 2, level=3)
    product = products[0][0]
    db = Database(load_settings(data, database_url=dsn).db_url)
    db.init_schema()
    from backend import auth
    from backend.library import ensure_product, grant

    os.environ["LAUNCHER_BCRYPT_ROUNDS"] = "4"
    with db.session() as s:
        for pid, title, _ in products:
            ensure_product(s, pid, title)
        for n in names:
            auth.create_user(s, n, "pw")
    with db.session() as s:
        for n in names:
            grant(s, n, product)
    db.dispose()
    return product


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


class _HttpConn(asyncio.Protocol):
    """A bare HTTP/1.1 keep-alive client connection: the load generator shares the 2 cores
    with the servers, so it must cost little (aiohttp spends ~5x the CPU per request)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        m = _CONTENT_LENGTH.search(self.buf, 0, end)
        length = int(m.group(1)) if m else 0
        if len(self.buf) < end + 4 + length:
            return
        status = int(self.buf[9:12])
        self.buf = self.buf[end + 4 + length:]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def request(self, payload: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter


_CONTENT_LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")


async def open_loop(url: str, clients: list[tuple[str, str]], rate: float,
                    seconds: float) -> dict[str, Any]:
    """Requests at fixed intervals, each on an idle connection (a new one when all are busy,
    as a population of clients would); latency from each request's scheduled time."""
    host, port = url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    payloads = [(f"POST /api/v1/download/tasks/{task}/cdn-tokens HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {tok}\r\nContent-Length: 0\r\n\r\n").encode()
                for tok, task in clients]
    idle: list[_HttpConn] = []

    async def connection() -> _HttpConn:
        if idle:
            return idle.pop()
        _, proto = await loop.create_connection(_HttpConn, host, int(port))
        return proto

    latencies: list[float] = []
    late: list[float] = []
    errors = 0
    rng = random.Random(1)

    async def one(at: float, payload: bytes) -> None:
        nonlocal errors
        late.append(time.perf_counter() - at)
        conn = await connection()
        try:
            status = await conn.request(payload)
            if status != 200:
                errors += 1
            idle.append(conn)
        except ConnectionError:
            errors += 1
        latencies.append((time.perf_counter() - at) * 1000)

    # warm up: connections and caches
    await asyncio.gather(*(one(time.perf_counter(), p) for p in payloads[:64]))
    latencies.clear()
    late.clear()
    errors = 0
    n = int(rate * seconds)
    pending: list[asyncio.Task[None]] = []
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        at = t0 + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one(at, payloads[rng.randrange(len(payloads))])))
    await asyncio.gather(*pending)
    for c in idle:
        if c.transport is not None:
            c.transport.close()
    return {"rate": rate, "requests": n, "errors": errors,
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "max_ms": round(max(latencies), 2),
            "generator_late_p99_ms": round(percentile(late, 99) * 1000, 2),
            "connections": len(idle)}


def capacity_ladder(url: str, clients: list[tuple[str, str]], seconds: float,
                    log: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None,
                                       dict[str, Any] | None]:
    steps: list[dict[str, Any]] = []
    at_slo = at_seed = None
    for rate in RATES:
        for attempt in (1, 2):  # a step over the seed's bound is tried once more: the machine
            step = asyncio.run(open_loop(url, clients, rate, seconds))  # is shared, and one
            step["attempt"] = attempt  # other job's burst must not end the ladder
            steps.append(step)
            log(f"  {rate:5d} req/s: p50 {step['p50_ms']:7.2f} ms  p99 {step['p99_ms']:8.2f} ms"
                f"  errors {step['errors']}  generator late p99 "
                f"{step['generator_late_p99_ms']} ms{'  (again)' if attempt == 2 else ''}")
            if step["errors"] == 0 and step["p99_ms"] < SEED_MS:
                break
            time.sleep(2.0)
        ok = step["errors"] == 0
        if ok and step["p99_ms"] < SLO_MS:
            at_slo = step
        if ok and step["p99_ms"] < SEED_MS:
            at_seed = step
        else:
            break
        time.sleep(1.0)
    return steps, at_slo, at_seed


async def closed_loop(url: str, clients: list[tuple[str, str]],
                      requests: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def client(token: str, task: str) -> None:
            nonlocal errors
            for _ in range(requests):
                t0 = time.perf_counter()
                async with s.post(f"{url}/api/v1/download/tasks/{task}/cdn-tokens",
                                  headers={"Authorization": f"Bearer {token}"}) as r:
                    await r.read()
                    errors += r.status != 200
                latencies.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(client(tok, task) for tok, task in clients))
        return latencies, len(latencies) / (time.perf_counter() - t0), errors


async def rate_limit_exactness(url: str, token: str, task: str, capacity: float, rate: float,
                               seconds: float) -> dict[str, Any]:
    ok = limited = other = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:
        t0 = time.perf_counter()

        async def hammer() -> None:
            nonlocal ok, limited, other
            while time.perf_counter() - t0 < seconds:
                async with s.post(f"{url}/api/v1/download/tasks/{task}/cdn-tokens",
                                  headers={"Authorization": f"Bearer {token}"}) as r:
                    await r.read()
                    if r.status == 200:
                        ok += 1
                    elif r.status == 429:
                        limited += 1
                    else:
                        other += 1

        await asyncio.gather(*(hammer() for _ in range(32)))
        elapsed = time.perf_counter() - t0
    expected = capacity + rate * elapsed
    return {"allowed": ok, "refused": limited, "errors": other, "seconds": round(elapsed, 2),
            "expected": round(expected, 1), "ratio": round(ok / expected, 4)}


async def cdn_bench(urls: list[str], size: int, total_mb: int) -> float:
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

        await asyncio.gather(*(reader(urls[0]) for _ in range(2)))
        read = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(reader(urls[i % len(urls)]) for i in range(READERS)))
        return read / 1e6 / (time.perf_counter() - t0)


def run_stack(kind: str, args: argparse.Namespace, tmp: Path, log: Any) -> dict[str, Any]:
    names = [f"bench{i}" for i in range(args.clients)]
    stack: Stack | None = None
    server: Backend | None = None
    result: dict[str, Any] = {"stack": kind}
    try:
        if kind == "scaled":
            stack = Stack(tmp / "scaled", workers=args.workers, durable=True,
                          access_log=not args.no_access_log, settings=NO_LIMIT,
                          with_nginx=False)
            # PostgreSQL must run before the users can be created: start the stack with an
            # empty store, seed through the same database, then restart only the backend
            stack.start()
            product = seed_data(stack.data_dir, tmp / "builds", stack.postgres.dsn,
                                [*names, "limited"])
            stack.restart_backend(NO_LIMIT)
            url = stack.url
            result.update(workers=args.workers, database="postgresql", cache="redis",
                          saves="s3 (seaweedfs)", access_log=not args.no_access_log)
        else:
            data = tmp / "embedded"
            data.mkdir()
            (data / "backend.json").write_text(json.dumps(NO_LIMIT))
            product = seed_data(data, tmp / "builds-e", None, names)
            server = Backend(data).start()
            url = server.url
            result.update(workers=1, database="sqlite", cache="memory", saves="local disk",
                          access_log=False)
        clients = asyncio.run(prepare_clients(url, names, product))
        log(f"{kind}: open-loop CDN-token capacity ({args.step_seconds} s per step)")
        steps, at_slo, at_seed = capacity_ladder(url, clients, args.step_seconds, log)
        result["token_capacity_rps_p99_20ms"] = at_slo["rate"] if at_slo else 0
        result["token_p99_ms"] = at_slo["p99_ms"] if at_slo else None
        result["token_capacity_rps_p99_200ms"] = at_seed["rate"] if at_seed else 0
        result["token_p99_ms_at_200ms_point"] = at_seed["p99_ms"] if at_seed else None
        result["ladder"] = steps
        lat, rps, errors = asyncio.run(closed_loop(url, clients, args.requests))
        result.update(closed_loop_clients=args.clients, closed_loop_rps=round(rps, 1),
                      closed_loop_p50_ms=round(statistics.median(lat), 2),
                      closed_loop_p99_ms=round(percentile(lat, 99), 2),
                      closed_loop_errors=errors)
        log(f"{kind}: closed loop {args.clients} clients: {rps:.0f} req/s, "
            f"p99 {result['closed_loop_p99_ms']} ms")
        if stack is not None:
            capacity, rate = 10.0, 100.0
            stack.restart_backend({"cdn_rate_capacity": capacity, "cdn_rate_per_second": rate})
            [(tok, task)] = asyncio.run(prepare_clients(stack.url, ["limited"], product))
            # the task creation took one token: wait for the bucket to fill up again
            time.sleep(capacity / rate + 0.2)
            rl = asyncio.run(rate_limit_exactness(stack.url, tok, task, capacity, rate,
                                                  args.limit_seconds))
            result["rate_limit"] = {"capacity": capacity, "per_second": rate, **rl}
            log(f"{kind}: rate limit {rate:.0f}/s + {capacity:.0f} across {args.workers} "
                f"workers for {rl['seconds']} s: {rl['allowed']} allowed of "
                f"{rl['expected']} expected ({rl['ratio']:.4f})")
        if args.cdn_mb and kind == "embedded":
            result.update(cdn_throughput(data, product, url, args.cdn_mb, tmp))
    finally:
        if server is not None:
            server.stop()
        if stack is not None:
            stack.stop()
            stack.remove_data()
    return result


def cdn_throughput(data: Path, product: str, url: str, total_mb: int,
                   tmp: Path) -> dict[str, Any]:
    from backend.signing import SigningMode, sign

    pack = data / "store" / "cdn" / product / "packs" / ("b" * 64 + ".pack")
    with pack.open("wb") as fh:
        for _ in range(PACK_MB):
            fh.write(os.urandom(MIB))
    key = Secrets.load(load_settings(data)).cdn_key
    rel = f"{product}/packs/{pack.name}"
    expires = int(time.time()) + 3600
    own = f"{url}/cdn/{rel}?{sign(key, SigningMode.HMAC, product, 'bench', expires).query}"
    out: dict[str, Any] = {"cdn_mb_s": round(asyncio.run(cdn_bench([own], pack.stat().st_size,
                                                                  total_mb)), 1)}
    out["nginx_mb_s"] = None
    if find_nginx():
        with NginxEdge(data / "store" / "cdn", key, tmp / "nginx") as edge:
            q = sign(key, SigningMode.NGINX, product, "bench", expires).query
            out["nginx_mb_s"] = round(asyncio.run(cdn_bench(
                [f"{edge.url}{rel}?{q}"], pack.stat().st_size, total_mb)), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stack", choices=("scaled", "embedded", "both"), default="both")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--requests", type=int, default=20, help="per client, closed loop")
    ap.add_argument("--step-seconds", type=float, default=4.0, help="per open-loop rate step")
    ap.add_argument("--limit-seconds", type=float, default=10.0)
    ap.add_argument("--cdn-mb", type=int, default=0,
                    help="MB read per CDN throughput measurement (embedded; 0 skips)")
    ap.add_argument("--no-access-log", action="store_true", help="scaled stack without it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-backend-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        kinds = ("scaled", "embedded") if args.stack == "both" else (args.stack,)
        for kind in kinds:
            results[kind] = run_stack(kind, args, tmp, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for kind, r in results.items():
        print(f"\n{kind}: {r['workers']} worker(s), {r['database']}, cache {r['cache']}, "
              f"saves {r['saves']}")
        print(f"  capacity at P99 < {SLO_MS:.0f} ms: {r['token_capacity_rps_p99_20ms']} req/s "
              f"(P99 {r['token_p99_ms']} ms)")
        print(f"  capacity at P99 < {SEED_MS:.0f} ms: {r['token_capacity_rps_p99_200ms']} req/s")
        print(f"  closed loop {r['closed_loop_clients']} clients: {r['closed_loop_rps']} req/s, "
              f"P99 {r['closed_loop_p99_ms']} ms")
    main_result = dict(results.get("scaled") or results["embedded"])
    if "scaled" in results and "embedded" in results:
        main_result["embedded"] = {k: v for k, v in results["embedded"].items() if k != "ladder"}
    main_result["load_average_before"] = [round(x, 2) for x in load_before]
    main_result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    main_result["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(main_result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
