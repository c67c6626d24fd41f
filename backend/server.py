"""Run an ASGI app with uvicorn on an already-bound socket, so port 0 works: the actually bound
URL is printed as ``listening on http://HOST:PORT`` (flushed) once the server accepts requests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI


def bind(host: str, port: int) -> tuple[socket.socket, str]:
    family = socket.AF_INET
    try:
        if ipaddress.ip_address(host).version == 6:
            family = socket.AF_INET6
    except ValueError:
        pass
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"http://{shown}:{bound}"


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _http() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


def run(sock: socket.socket, url: str, make_app: Callable[[], FastAPI],
        on_started: Callable[[], None] | None = None) -> int:
    def announce() -> None:
        if on_started is not None:
            on_started()  # before the URL line, which tests and scripts wait for
        print(f"listening on {url}", flush=True)

    return _serve(sock, make_app, announce)


def _serve(sock: socket.socket, make_app: Callable[[], FastAPI],
           started: Callable[[], None]) -> int:
    app = make_app()
    config = uvicorn.Config(app, loop=_loop(), http=_http(), lifespan="off", access_log=False,
                            log_level="warning", timeout_keep_alive=30, backlog=2048,
                            server_header=False)
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            gc.collect()
            gc.freeze()  # long-lived startup objects leave the collector's working set
            gc.set_threshold(50_000, 50, 100)  # fewer young-generation pauses under load
            started()
        await task

    try:
        if _loop() == "uvloop":
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    sys.stdout.flush()
    return 0


def run_workers(sock: socket.socket, url: str, make_app: Callable[[], FastAPI], workers: int,
                on_started: Callable[[], None] | None = None, start_timeout: float = 120) -> int:
    """Pre-fork: ``workers`` processes accept on the one bound socket (the kernel spreads the
    connections); this parent only supervises. A worker that dies (crash, OOM kill, kill -9) is
    replaced at once and the others keep serving; SIGTERM/SIGINT stop every worker gracefully.
    The parent must not have started threads or opened connections it shares (fork)."""
    ready_r, ready_w = os.pipe()
    children: set[int] = set()
    pdeathsig = None
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pdeathsig = ctypes.CDLL(None).prctl  # PR_SET_PDEATHSIG is option 1 (Linux)
    stopping = False

    def spawn() -> int:
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(ready_r)
            if pdeathsig is not None:  # a killed supervisor must not leave workers serving
                pdeathsig(1, signal.SIGTERM)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)

            def started() -> None:
                with contextlib.suppress(OSError):  # the parent stopped listening after start-up
                    os.write(ready_w, b"1")

            code = 1
            try:
                code = _serve(sock, make_app, started)
            finally:
                sys.stdout.flush()
                os._exit(code)
        children.add(pid)
        return pid

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    os.set_blocking(ready_r, True)
    seen = 0
    deadline = time.monotonic() + start_timeout
    while seen < workers and time.monotonic() < deadline and not stopping:
        try:
            seen += len(os.read(ready_r, workers - seen))
        except InterruptedError:
            continue
    os.close(ready_r)
    if seen >= workers and not stopping:
        if on_started is not None:
            on_started()
        print(f"{workers} workers: {', '.join(str(p) for p in sorted(children))}", flush=True)
        print(f"listening on {url}", flush=True)
    last_restart = 0.0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        if stopping:
            continue
        print(f"worker {pid} exited ({status}); starting another", file=sys.stderr, flush=True)
        if time.monotonic() - last_restart < 1.0:
            time.sleep(0.5)  # a crash loop must not spin the CPU
        last_restart = time.monotonic()
        spawn()
    sock.close()
    return 0
