"""Shared fixtures: a published demo store and the REAL backend as a subprocess on loopback.

Fixtures (reuse them in engine/launcher tests):

``published_store`` (session)
    The demo catalog (``backend.democatalog.generate``, size_mb=3) published once into a store
    under a session tmp dir. ``.root`` (store dir), ``.builds`` (build folders),
    ``.products`` (list of ``DemoProductInfo(product_id, title, versions)``), ``.product(id)``.

``backend`` (module)
    One ``launcher-backend serve --data TMP --port 0`` process for a test module, its data dir
    holding a private copy of ``published_store``. Tests share it, so create users with unique
    names (``backend.new_user()``).

``backend_factory`` (function)
    ``backend_factory(settings={...}, args=[...], edges=[...])`` starts a fresh backend with
    settings written to DATA/backend.json (names as in ``backend.config.Settings``, e.g.
    ``{"playtime_timeout": 2, "cdn_rate_capacity": 3}``); all are stopped at the end of the test.

A ``BackendServer`` has ``.url``, ``.data_dir``, ``.store_dir``, ``.store`` (a
``patcher.store.Store`` opened lazily in the test process, e.g. to publish more versions),
``.cdn_key``, and methods ``add_user(name, password)``, ``grant(user, product)``,
``login(name, password) -> access token``, ``new_user(products=...) -> (name, token)``,
``client(token) -> httpx.Client``, ``start_cdn_edge() -> CdnEdge`` (a
``launcher-backend cdn`` process sharing the CDN secret), ``start_nginx_edge() -> NginxEdge``,
``set_edges([...])`` (rewrites DATA/cdn-edges.json: which edges appear in ``cdnSources``; the
backend re-reads it on change), ``restart()`` (same data dir, new port) and ``stop()``.

Databases: every test module named ``test_backend_*`` runs twice, on SQLite (``[sqlite]``) and
on PostgreSQL (``[postgresql]``): the ``database_kind`` fixture is parametrized for those modules
(other modules' backends use SQLite). The PostgreSQL server is a private cluster on 127.0.0.1
(``backend.stack.Postgres``, started once per session on first use, stopped at the end); each
backend server gets its own freshly created and dropped database. ``LAUNCHER_TEST_DSN`` (e.g.
``postgresql+psycopg://postgres:pw@127.0.0.1/postgres``) uses an existing server instead, and
``LAUNCHER_TEST_DATABASES=sqlite`` runs the backend modules on SQLite only.

``scaled_stack`` (module)
    The scaled stack (``backend.stack.Stack``): PostgreSQL, Redis, SeaweedFS S3, nginx and the
    backend with 2 workers on 127.0.0.1, its store a copy of ``published_store``; settings from
    the module's ``SCALED_SETTINGS`` dict if it has one. ``scaled_stack.server`` is a
    ``BackendServer`` on it (users, grants, clients).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from testing.processes import REPO, ServerProcess, copy_store, subprocess_env

TEST_DSN = os.environ.get("LAUNCHER_TEST_DSN")
DATABASE_KINDS = [k for k in os.environ.get("LAUNCHER_TEST_DATABASES", "sqlite,postgresql")
                  .split(",") if k]
STORE_SIZE_MB = 3
_names = itertools.count(1)


def cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``launcher-backend ARGS`` (as ``python -m backend.cli``) and capture its output."""
    proc = subprocess.run([sys.executable, "-m", "backend.cli", *args], capture_output=True,
                          text=True, env=subprocess_env(), timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"launcher-backend {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


# -- published store -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoProductInfo:
    product_id: str
    title: str
    versions: tuple[str, ...]


@dataclass(frozen=True)
class PublishedStore:
    root: Path
    builds: Path
    products: tuple[DemoProductInfo, ...]

    def product(self, product_id: str) -> DemoProductInfo:
        return next(p for p in self.products if p.product_id == product_id)

    @property
    def main(self) -> DemoProductInfo:
        """The product with the most versions (the demo's main game)."""
        return max(self.products, key=lambda p: len(p.versions))


@pytest.fixture(scope="session")
def published_store(tmp_path_factory: pytest.TempPathFactory) -> PublishedStore:
    from backend.demo import publish_catalog

    base = tmp_path_factory.mktemp("published-store")
    products = publish_catalog(base / "store", base / "builds", STORE_SIZE_MB, level=3)
    infos = tuple(DemoProductInfo(pid, title, tuple(v)) for pid, title, v in products)
    return PublishedStore(base / "store", base / "builds", infos)


# -- processes -----------------------------------------------------------------------------------


@dataclass
class CdnEdge:
    """A ``launcher-backend cdn`` process: ``url`` is its base URL (ends with /cdn/)."""

    process: ServerProcess

    @property
    def url(self) -> str:
        return f"{self.process.url}/cdn/"

    def stop(self) -> None:
        self.process.stop()


@dataclass
class BackendServer:
    data_dir: Path
    process: ServerProcess
    database_url: str | None = None
    argv: list[str] = field(default_factory=list)
    _store: Any = None
    _edges: list[Any] = field(default_factory=list)
    _db: Any = None

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def store(self) -> Any:
        """A ``patcher.store.Store`` on this backend's store (opened on first use)."""
        if self._store is None:
            from patcher.store import Store

            self._store = Store(self.store_dir)
        return self._store

    @property
    def cdn_key(self) -> bytes:
        return (self.data_dir / "secrets" / "cdn.key").read_bytes()

    def _database(self) -> Any:
        if self._db is None:
            from backend.config import load_settings
            from backend.db import Database

            settings = load_settings(self.data_dir, database_url=self.database_url)
            self._db = Database(settings.db_url)
        return self._db

    # -- accounts (same code paths as `launcher-backend user add` / `grant`) ------------------
    def add_user(self, name: str, password: str = "secret-pw") -> str:
        from backend import auth

        os.environ.setdefault("LAUNCHER_BCRYPT_ROUNDS", "4")
        with self._database().session() as s:
            return str(auth.create_user(s, name, password).id)

    def grant(self, user: str, product: str, title: str | None = None) -> str:
        from backend.library import grant

        with self._database().session() as s:
            return str(grant(s, user, product, title=title).id)

    def login(self, name: str, password: str = "secret-pw") -> str:
        return str(self.token_pair(name, password)["accessToken"])

    def token_pair(self, name: str, password: str = "secret-pw") -> dict[str, Any]:
        r = httpx.post(f"{self.api}/auth/token", json={"username": name, "password": password},
                       timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json()["data"]["attributes"])

    def new_user(self, products: tuple[str, ...] | list[str] = (),
                 password: str = "secret-pw") -> tuple[str, str]:
        """A uniquely named user entitled to ``products``; returns (name, access token)."""
        name = f"user{next(_names)}-{uuid.uuid4().hex[:6]}"
        self.add_user(name, password)
        for p in products:
            self.grant(name, p)
        return name, self.login(name, password)

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    # -- CDN edges ---------------------------------------------------------------------------
    def start_cdn_edge(self) -> CdnEdge:
        argv = [sys.executable, "-m", "backend.cli", "cdn", "--data", str(self.data_dir),
                "--port", "0"]
        n = len(self._edges)
        edge = CdnEdge(ServerProcess(argv, self.data_dir / f"cdn-edge-{n}.log"))
        self._edges.append(edge)
        return edge

    def start_nginx_edge(self) -> Any:
        from backend.nginx import NginxEdge

        prefix = self.data_dir / f"nginx-{len(self._edges)}"
        edge = NginxEdge(self.store_dir / "cdn", self.cdn_key, prefix).start()
        self._edges.append(edge)
        return edge

    def set_edges(self, edges: list[dict[str, Any] | str]) -> None:
        """Edges for new cdnSources, in priority order: "self", a URL (HMAC), or a dict
        ``{"baseUrl": URL, "mode": "hmac"|"nginx"}``."""
        from backend.config import EdgeConfig, write_edges

        parsed = []
        for i, e in enumerate(edges):
            if isinstance(e, str):
                parsed.append(EdgeConfig.parse(e, i))
            else:
                parsed.append(EdgeConfig.from_dict({"id": f"edge-{i}", "priority": i, **e}, i))
        write_edges(self.data_dir / "cdn-edges.json", parsed)

    def restart(self) -> None:
        """Stop the server process and start it again on the same data dir (new port)."""
        self.process.stop()
        self.process = ServerProcess(self.argv, self.data_dir / "backend.log",
                                     timeout=300 if "--demo" in self.argv else 60)

    def stop(self) -> None:
        for e in self._edges:
            with contextlib.suppress(Exception):
                e.stop()
        self.process.stop()
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._db is not None:
            self._db.dispose()
            self._db = None


# -- databases: SQLite, and PostgreSQL for the test_backend_* modules ---------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The backend's own test modules run on every database kind; the engine's and the UI's
    tests use a backend too but only on SQLite (the database is not what they test)."""
    if "database_kind" in metafunc.fixturenames and \
            metafunc.module.__name__.rsplit(".", 1)[-1].startswith("test_backend_"):
        metafunc.parametrize("database_kind", DATABASE_KINDS, indirect=True, scope="module")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private PostgreSQL cluster on 127.0.0.1 for the session (fsync off: test data)."""
    from backend.stack import Postgres

    if TEST_DSN:
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="launcher-test-pg-"))  # reachable by 'postgres' as root
    server = Postgres(root, durable=False).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def database_kind(request: pytest.FixtureRequest) -> str:
    kind: str = getattr(request, "param", "sqlite")
    return kind


@contextlib.contextmanager
def scratch_database(request: pytest.FixtureRequest, kind: str) -> Iterator[str | None]:
    """A fresh database on the test PostgreSQL server (dropped afterwards), or None (SQLite)."""
    if kind == "sqlite":
        yield None
        return
    server = request.getfixturevalue("postgres_server")
    if server is not None:
        with server.scratch_database() as dsn:
            yield dsn
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    assert TEST_DSN is not None
    name = f"launcher_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(TEST_DSN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(TEST_DSN).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


StartBackend = Callable[..., BackendServer]


def _start_backend(data_dir: Path, published: PublishedStore | None, dsn: str | None, *,
                   settings: dict[str, Any] | None = None, args: list[str] | None = None,
                   edges: list[str] | None = None) -> BackendServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    if published is not None and not (data_dir / "store").exists():
        copy_store(published.root, data_dir / "store")
    doc = dict(settings or {})
    if dsn:  # `launcher-backend COMMAND --data DIR` (tests' cli()) then reaches the same database
        doc["database_url"] = dsn
    if doc:
        (data_dir / "backend.json").write_text(json.dumps(doc))
    argv = [sys.executable, "-m", "backend.cli", "serve", "--data", str(data_dir), "--port", "0"]
    if dsn:
        argv += ["--db", dsn]
    for e in edges or []:
        argv += ["--cdn-edge", e]
    argv += args or []
    proc = ServerProcess(argv, data_dir / "backend.log", timeout=300 if "--demo" in argv else 60)
    server = BackendServer(data_dir, proc, dsn, argv)
    if published is not None:
        for p in published.products:  # titles as in the demo
            from backend.library import ensure_product

            with server._database().session() as s:
                ensure_product(s, p.product_id, p.title)
    return server


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            published_store: PublishedStore, database_kind: str) -> Iterator[BackendServer]:
    with scratch_database(request, database_kind) as dsn:
        server = _start_backend(tmp_path_factory.mktemp("backend"), published_store, dsn)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture()
def backend_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                    published_store: PublishedStore,
                    database_kind: str) -> Iterator[StartBackend]:
    started: list[BackendServer] = []
    with contextlib.ExitStack() as stack:

        def start(*, settings: dict[str, Any] | None = None, args: list[str] | None = None,
                  edges: list[str] | None = None, with_store: bool = True) -> BackendServer:
            dsn = stack.enter_context(scratch_database(request, database_kind))
            server = _start_backend(tmp_path_factory.mktemp("backend"),
                                    published_store if with_store else None, dsn,
                                    settings=settings, args=args, edges=edges)
            started.append(server)
            return server

        try:
            yield start
        finally:
            for s in started:
                s.stop()


# -- the scaled stack ----------------------------------------------------------------------------


@dataclass
class ScaledStack:
    stack: Any  # backend.stack.Stack
    server: BackendServer

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def scaled_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 published_store: PublishedStore) -> Iterator[ScaledStack]:
    from backend.stack import Stack

    root = tmp_path_factory.mktemp("stack")
    settings = dict(getattr(request.module, "SCALED_SETTINGS", {}))
    stack = Stack(root, workers=2, durable=False, settings=settings)
    copy_store(published_store.root, stack.data_dir / "store")
    stack.start()
    try:
        server = BackendServer(stack.data_dir, stack.backend, stack.postgres.dsn)  # type: ignore[arg-type]
        for p in published_store.products:
            from backend.library import ensure_product

            with server._database().session() as s:
                ensure_product(s, p.product_id, p.title)
        yield ScaledStack(stack, server)
        server.stop()
    finally:
        stack.stop()
        stack.remove_data()


def wait_until(cond: Callable[[], bool], timeout: float = 10, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert the seeds' error envelope; return the first error object."""
    assert resp.status_code == status, f"{resp.status_code} != {status}: {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"errors"}, body
    assert body["errors"], body
    for err in body["errors"]:
        assert err["status"] == str(status), err
        assert isinstance(err["code"], str) and err["code"].isupper(), err
        assert isinstance(err["title"], str) and err["title"], err
        assert isinstance(err["detail"], str), err
        assert set(err) <= {"status", "code", "title", "detail", "source"}, err
    first: dict[str, Any] = body["errors"][0]
    if code is not None:
        assert first["code"] == code, body
    return first


def task_body(product: str, version: str | None = None, target: str = "/games/x",
              priority: int = 0) -> dict[str, Any]:
    attrs: dict[str, Any] = {"productId": product, "targetPath": target, "priority": priority}
    if version is not None:
        attrs["versionId"] = version
    return {"data": {"type": "downloadTaskRequest", "attributes": attrs}}


def cdn_url(source: dict[str, Any], relpath: str) -> str:
    """A store file's URL on one of a task's cdnSources."""
    return f"{source['baseUrl']}{relpath}?{source['query']}"
