"""Health, readiness, metrics and access logs (seed section 11).

- ``GET /healthz``: the process serves (liveness; no dependency is asked).
- ``GET /readyz``: the database, Redis (when configured) and save storage answer; 503
  ``SERVICE_UNAVAILABLE`` in the seed's error format, one error per failed check, otherwise.
- ``GET /metrics``: Prometheus text format: request latency histograms per route template,
  method and status; CDN-token issuance and refusals. Each worker keeps its own counters in
  memory and writes a snapshot to DATA/metrics/<pid>.json every second; ``/metrics`` (whichever
  worker answers) adds up the snapshots of the live workers, so one scrape sees the whole server.
- access log: one JSON object per request on stderr (``access_log`` setting).

The middleware is plain ASGI (no ``BaseHTTPMiddleware``: its extra task per request costs more
than the whole CDN-token route).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from backend.errors import ServiceUnavailable, error_body, error_object

# seconds; the SLO (20 ms) and the seed's 200 ms are bucket bounds, so the share under them is
# exact
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)

access_log = logging.getLogger("backend.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Metrics:
    """Counters and histograms of one process (thread-safe: sync routes run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (method, route, status) -> [bucket counts..., +Inf count, sum seconds]
        self.requests: dict[tuple[str, str, str], list[float]] = {}
        self.counters: dict[str, float] = {"launcher_cdn_tokens_issued_total": 0.0,
                                           "launcher_cdn_token_rate_limited_total": 0.0}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        with self._lock:
            row = self.requests.get(key)
            if row is None:
                row = self.requests[key] = [0.0] * (len(BUCKETS) + 2)
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    row[i] += 1
            row[len(BUCKETS)] += 1
            row[len(BUCKETS) + 1] += seconds

    def inc(self, name: str, n: float = 1.0) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0.0) + n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": [[*k, *v] for k, v in self.requests.items()],
                    "counters": dict(self.counters)}


METRICS = Metrics()


def merge(snapshots: list[dict[str, Any]]) -> Metrics:
    """Pure: the sum of several workers' snapshots."""
    total = Metrics()
    for snap in snapshots:
        for row in snap.get("requests", []):
            key = (str(row[0]), str(row[1]), str(row[2]))
            have = total.requests.setdefault(key, [0.0] * (len(BUCKETS) + 2))
            for i, v in enumerate(row[3:]):
                have[i] += float(v)
        for name, v in snap.get("counters", {}).items():
            total.counters[name] = total.counters.get(name, 0.0) + float(v)
    return total


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(m: Metrics, workers: int) -> str:
    """Pure: Prometheus text exposition format 0.0.4."""
    out = ["# HELP launcher_http_request_duration_seconds Request latency by route template.",
           "# TYPE launcher_http_request_duration_seconds histogram"]
    for (method, route, status), row in sorted(m.requests.items()):
        labels = f'method="{_esc(method)}",route="{_esc(route)}",status="{status}"'
        for i, bound in enumerate(BUCKETS):
            out.append(f'launcher_http_request_duration_seconds_bucket{{{labels},le="{bound}"}} '
                       f"{int(row[i])}")
        out.append(f'launcher_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} '
                   f"{int(row[len(BUCKETS)])}")
        out.append(f"launcher_http_request_duration_seconds_count{{{labels}}} "
                   f"{int(row[len(BUCKETS)])}")
        out.append(f"launcher_http_request_duration_seconds_sum{{{labels}}} "
                   f"{row[len(BUCKETS) + 1]:.6f}")
    helps = {"launcher_cdn_tokens_issued_total": "CDN source lists (signed URLs) issued.",
             "launcher_cdn_token_rate_limited_total": "CDN token requests refused with 429."}
    for name, v in sorted(m.counters.items()):
        out += [f"# HELP {name} {helps.get(name, name)}", f"# TYPE {name} counter",
                f"{name} {int(v)}"]
    out += ["# HELP launcher_workers Worker processes whose metrics are included.",
            "# TYPE launcher_workers gauge", f"launcher_workers {workers}"]
    return "\n".join(out) + "\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SnapshotWriter:
    """Writes this worker's snapshot to DIR/<pid>.json every ``interval`` seconds."""

    def __init__(self, directory: Path, interval: float = 1.0) -> None:
        self.directory = directory
        self.interval = interval
        self._started_pid: int | None = None

    def start(self) -> None:
        if self._started_pid == os.getpid():
            return
        self._started_pid = os.getpid()
        self.directory.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self._loop, name="metrics-snapshot", daemon=True).start()

    def write(self) -> None:
        path = self.directory / f"{os.getpid()}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(METRICS.snapshot()))
        os.replace(tmp, path)

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            with contextlib.suppress(OSError):  # a full disk must not kill the worker
                self.write()

    def collect(self) -> tuple[Metrics, int]:
        """Every live worker's latest snapshot (this one's fresh); dead workers' files go."""
        snaps = [METRICS.snapshot()]
        me = os.getpid()
        for f in self.directory.glob("*.json"):
            try:
                pid = int(f.stem)
            except ValueError:
                continue
            if pid == me:
                continue
            if not _alive(pid):
                f.unlink(missing_ok=True)
                continue
            try:
                snaps.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        return merge(snaps), len(snaps)


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, log_requests: bool) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            METRICS.observe(scope["method"], route, status, seconds)
            if self.log_requests:
                client = scope.get("client") or ("", 0)
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "method": scope["method"], "route": route,
                    "path": scope["path"], "status": status, "ms": round(seconds * 1000, 2),
                    "client": client[0], "pid": os.getpid()}, separators=(",", ":")))


def readiness(checks: dict[str, Callable[[], None]]) -> tuple[int, dict[str, Any]]:
    """Run each check; (200, {"status": "ready", "checks": ...}) or (503, seed error body)."""
    results: dict[str, str] = {}
    errors = []
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; the detail says which
            detail = exc.detail if isinstance(exc, ServiceUnavailable) else f"{type(exc).__name__}: {exc}"
            results[name] = "failed"
            errors.append(error_object(503, "SERVICE_UNAVAILABLE", "Service unavailable",
                                       f"{name}: {detail}", {"parameter": name}))
    if errors:
        return 503, error_body(*errors)
    return 200, {"status": "ready", "checks": results}
