"""Infrastructure pieces on their own (issue 15): schema migrations from an older schema on
SQLite and PostgreSQL, the Redis token bucket shared by several limiters, health, readiness and
metrics of the embedded default, the metric and readiness rules."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect, text

from backend.db import SCHEMA_VERSION, Base, Database
from backend.errors import ServiceUnavailable
from backend.observability import BUCKETS, Metrics, merge, readiness, render
from backend.ratelimit import RedisRateLimiter
from backend.stack import Redis
from tests.conftest import BackendServer, assert_error, scratch_database, task_body

# -- migrations ----------------------------------------------------------------------------------

V1_TABLES = {"schema_version", "users", "refresh_tokens", "products", "library_items",
             "download_tasks", "download_task_history", "update_history", "verification_tasks",
             "playtime_sessions", "savegame_uploads", "savegames"}
V2_TABLES = ("library_item_categories", "user_categories")
V3_TABLES = ("user_achievements", "achievement_definitions")
V3_COLUMNS = {"library_items": ("reported_install_status", "reported_install_at",
                                "installed_version_id"),
              "savegames": ("comment",), "savegame_uploads": ("comment",)}


@pytest.fixture
def database_url(request: pytest.FixtureRequest, database_kind: str,
                 tmp_path: Path) -> Iterator[str]:
    with scratch_database(request, database_kind) as dsn:
        yield dsn or f"sqlite:///{tmp_path / 'backend.sqlite'}"


def _make_schema_1(url: str) -> None:
    """A database as schema 1 left it, holding data: today's schema with what 2 and 3 added
    taken away again (portable DDL, so the same steps run on both databases)."""
    db = Database(url)
    db.init_schema()
    with db.engine.begin() as conn:
        # every table schema 1 did not have, children first (later schemas' too)
        for table in reversed(Base.metadata.sorted_tables):
            if table.name not in V1_TABLES:
                conn.execute(text(f"DROP TABLE IF EXISTS {table.name}"))
        for table, columns in V3_COLUMNS.items():
            for column in columns:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(text("UPDATE schema_version SET version = 1"))
        conn.execute(text("INSERT INTO users (id, username, password_hash, created_at) "
                          "VALUES ('u1', 'old-user', 'x', CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO products (id, title, created_at) "
                          "VALUES ('star-courier', 'Star Courier', CURRENT_TIMESTAMP)"))
        conn.execute(text(
            "INSERT INTO library_items (id, user_id, product_id, added_at, acquisition_type, "
            "is_hidden, total_playtime_seconds) VALUES ('i1', 'u1', 'star-courier', "
            "CURRENT_TIMESTAMP, 'purchase', false, 42)"))
        conn.execute(text(
            "INSERT INTO savegame_uploads (id, user_id, product_id, slot, size_bytes, sha256, "
            "base_version, token_hash, status, expires_at, created_at) VALUES ('up1', 'u1', "
            "'star-courier', 's', 1, 'ab', NULL, 'h', 'pending', CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP)"))
    db.dispose()


def test_schema_1_is_migrated_step_by_step_keeping_data(database_url: str) -> None:
    _make_schema_1(database_url)
    db = Database(database_url)
    try:
        assert db.stored_versions() == [1]
        tables = set(inspect(db.engine).get_table_names())
        assert not tables & {*V2_TABLES, *V3_TABLES}
        db.init_schema()  # what every start does
        assert db.stored_versions() == [SCHEMA_VERSION]  # 1 -> 2 -> 3 -> 4 (-> later ones)
        assert SCHEMA_VERSION >= 4
        insp = inspect(db.engine)
        assert set(insp.get_table_names()) >= {*V2_TABLES, *V3_TABLES}
        for table, columns in V3_COLUMNS.items():
            assert set(columns) <= {c["name"] for c in insp.get_columns(table)}
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT total_playtime_seconds FROM library_items "
                                     "WHERE id = 'i1'")).scalar() == 42
            # a pending upload from before 3 meant "new slot" by NULL; now that is 0
            assert conn.execute(text("SELECT base_version FROM savegame_uploads "
                                     "WHERE id = 'up1'")).scalar() == 0
        db.init_schema()  # a second start finds nothing to do
        assert db.stored_versions() == [SCHEMA_VERSION]
    finally:
        db.dispose()


def test_a_newer_schema_is_refused(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.init_schema()
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE schema_version SET version = 99"))
        from backend.db import SchemaMismatch

        with pytest.raises(SchemaMismatch):
            db.init_schema()
    finally:
        db.dispose()


# -- the embedded default's meta routes ----------------------------------------------------------


def test_embedded_health_readiness_and_metrics(backend: BackendServer) -> None:
    assert httpx.get(f"{backend.url}/healthz", timeout=10).json()["status"] == "ok"
    ready = httpx.get(f"{backend.url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok"}  # no Redis configured
    _, token = backend.new_user(products=["star-courier"])
    with backend.client(token) as c:
        task = c.post("/api/v1/download/tasks", json=task_body("star-courier")).json()["data"]
        assert c.post(f"/api/v1/download/tasks/{task['id']}/cdn-tokens").status_code == 200
    text_ = httpx.get(f"{backend.url}/metrics", timeout=10).text
    issued = next(line for line in text_.splitlines()
                  if line.startswith("launcher_cdn_tokens_issued_total "))
    assert int(issued.split()[1]) >= 2
    assert ('launcher_http_request_duration_seconds_count{method="POST",'
            'route="/api/v1/download/tasks/{taskId}/cdn-tokens",status="200"}') in text_


# -- the Redis token bucket ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = Redis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


def _client(url: str) -> object:
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)


def test_redis_bucket_is_shared_by_every_limiter(redis_server: Redis) -> None:
    # two limiters = two workers; no refill, so exactly the capacity passes in total
    a = RedisRateLimiter(_client(redis_server.url), capacity=5, rate=0.0, prefix="t1:")
    b = RedisRateLimiter(_client(redis_server.url), capacity=5, rate=0.0, prefix="t1:")
    results = [lim.check("user") for _ in range(4) for lim in (a, b)]
    assert sum(1 for w in results if w == 0) == 5
    assert all(w == float("inf") for w in results[5:])
    assert a.check("someone-else") == 0  # buckets are per key


def test_redis_bucket_refills_and_says_how_long_to_wait(redis_server: Redis) -> None:
    lim = RedisRateLimiter(_client(redis_server.url), capacity=1, rate=10.0, prefix="t2:")
    assert lim.check("u") == 0
    wait = lim.check("u")
    assert 0 < wait <= 0.1
    time.sleep(wait + 0.05)
    assert lim.check("u") == 0
    ttl = _client(redis_server.url).pttl("t2:u")  # type: ignore[attr-defined]
    assert 0 < ttl <= 1100  # the key goes away once the bucket would be full again


def test_redis_unreachable_is_service_unavailable(tmp_path: Path) -> None:
    from backend.stack import free_port

    lim = RedisRateLimiter(_client(f"redis://127.0.0.1:{free_port()}/0"), capacity=5, rate=1.0)
    with pytest.raises(ServiceUnavailable) as exc:
        lim.check("u")
    assert exc.value.status == 503 and exc.value.code == "SERVICE_UNAVAILABLE"


# -- pure rules ----------------------------------------------------------------------------------


def test_metrics_merge_and_render() -> None:
    a, b = Metrics(), Metrics()
    a.observe("POST", "/x", 200, 0.004)
    b.observe("POST", "/x", 200, 0.030)
    b.observe("GET", "/y", 404, 0.0005)
    b.inc("launcher_cdn_tokens_issued_total", 3)
    total = merge([a.snapshot(), b.snapshot()])
    row = total.requests[("POST", "/x", "200")]
    assert row[BUCKETS.index(0.005)] == 1 and row[BUCKETS.index(0.05)] == 2
    assert row[len(BUCKETS)] == 2
    out = render(total, workers=2)
    assert 'launcher_http_request_duration_seconds_bucket{method="POST",route="/x",' \
           'status="200",le="0.02"} 1' in out
    assert 'le="+Inf"} 2' in out
    assert "launcher_cdn_tokens_issued_total 3" in out
    assert "launcher_workers 2" in out


def test_readiness_names_each_failed_check() -> None:
    def down() -> None:
        raise ServiceUnavailable("connection refused")

    status, body = readiness({"database": lambda: None, "redis": down,
                              "storage": lambda: (_ for _ in ()).throw(OSError("gone"))})
    assert status == 503
    assert [e["source"]["parameter"] for e in body["errors"]] == ["redis", "storage"]
    assert all(e["code"] == "SERVICE_UNAVAILABLE" and e["status"] == "503"
               for e in body["errors"])
    assert "connection refused" in body["errors"][0]["detail"]
    assert readiness({"database": lambda: None}) == (200, {"status": "ready",
                                                            "checks": {"database": "ok"}})


def test_embedded_readiness_fails_when_save_storage_is_unusable(backend_factory: object,
                                                                database_kind: str) -> None:
    if database_kind != "sqlite":
        pytest.skip("about the save folder, not the database")
    server = backend_factory(with_store=False)  # type: ignore[operator]
    (server.data_dir / "saves" / "objects").chmod(0o500)
    try:
        import os

        if os.geteuid() == 0:  # root writes anyway; make the folder disappear instead
            (server.data_dir / "saves" / "objects").chmod(0o700)
            (server.data_dir / "saves" / "objects").rename(server.data_dir / "saves" / "gone")
        err = assert_error(httpx.get(f"{server.url}/readyz", timeout=10), 503,
                           "SERVICE_UNAVAILABLE")
        assert err["source"] == {"parameter": "storage"}
    finally:
        gone = server.data_dir / "saves" / "gone"
        if gone.exists():
            gone.rename(server.data_dir / "saves" / "objects")
        (server.data_dir / "saves" / "objects").chmod(0o700)
