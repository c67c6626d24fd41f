"""Run an ASGI app with uvicorn on an already-bound socket, so port 0 works: the actually bound
URL is printed as ``listening on http://HOST:PORT`` (flushed) once the server accepts requests."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import socket
import sys
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
            if on_started is not None:
                on_started()  # before the URL line, which tests and scripts wait for
            print(f"listening on {url}", flush=True)
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
