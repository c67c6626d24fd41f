"""nginx as a CDN edge: render ``packaging/nginx/cdn.conf`` and run nginx in the foreground with
its own prefix (pid, logs, temp files), listening on loopback only by default."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from backend.signing import nginx_secret

TEMPLATE = Path(__file__).resolve().parent.parent / "packaging" / "nginx" / "cdn.conf"


def find_nginx() -> str | None:
    for cand in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def render_cdn_conf(*, store_root: Path, port: int, cdn_key: bytes, prefix: Path,
                    host: str = "127.0.0.1", user: str | None = None,
                    template: Path = TEMPLATE) -> str:
    """Substitute the template's @NAMES@. ``store_root`` is the store's ``cdn/`` folder."""
    if user is None and os.geteuid() == 0:
        user = getpass.getuser()  # workers must read the store (often a 0700 temp dir)
    values = {
        "@USER_DIRECTIVE@": f"user {user};" if user else "",
        "@PREFIX@": str(prefix.resolve()),
        "@HOST@": host,
        "@PORT@": str(port),
        "@CDN_ROOT@": str(store_root.resolve()),
        "@SECRET@": nginx_secret(cdn_key),
    }
    text = template.read_text()
    for k, v in values.items():
        text = text.replace(k, v)
    return text


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NginxEdge:
    """A foreground nginx serving a store's cdn/ folder; ``url`` is the edge's base URL."""

    def __init__(self, cdn_root: Path, cdn_key: bytes, prefix: Path, *, host: str = "127.0.0.1",
                 binary: str | None = None) -> None:
        self.cdn_root = cdn_root
        self.cdn_key = cdn_key
        self.prefix = prefix
        self.host = host
        self.binary = binary or find_nginx()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/cdn/"

    def start(self, timeout: float = 10.0) -> NginxEdge:
        if self.binary is None:
            raise FileNotFoundError("no nginx binary (Debian: apt-get install nginx-light)")
        self.prefix.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            self.port = free_port(self.host)
            conf = self.prefix / "cdn.conf"
            conf.write_text(render_cdn_conf(store_root=self.cdn_root, port=self.port,
                                            cdn_key=self.cdn_key, prefix=self.prefix,
                                            host=self.host))
            log = (self.prefix / "stderr.log").open("ab")
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(self.prefix), "-c", str(conf),
                 "-e", str(self.prefix / "error.log")],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(OSError), socket.create_connection(
                        (self.host, self.port), timeout=0.2):
                    return self
                time.sleep(0.05)
            self.stop()
            if attempt == 4:
                raise RuntimeError(f"nginx did not start: {self.log_tail()}")
        return self

    def log_tail(self) -> str:
        out = []
        for name in ("stderr.log", "error.log"):
            p = self.prefix / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-2000:])
        return "\n".join(out)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> NginxEdge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
