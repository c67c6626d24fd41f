"""Wishlist (library seed 3.1.4): add, list by priority, change the priority, remove,
``GAME_NOT_FOUND_IN_WISHLIST``, isolation between users, the limit, and the schema 3 -> 4
upgrade that adds it (real backend process, SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import inspect, text

from backend.db import SCHEMA_VERSION, Database
from tests.conftest import (
    BackendServer,
    PublishedStore,
    StartBackend,
    assert_error,
    scratch_database,
)

WISH = "/api/v1/library/wishlist/items"


def add(c: httpx.Client, product: str, priority: int | None = None,
        status: int = 201) -> dict[str, Any]:
    attrs: dict[str, Any] = {"product_id": product}
    if priority is not None:
        attrs["priority"] = priority
    r = c.post(WISH, json={"data": {"type": "wishlistItemCreation", "attributes": attrs}})
    assert r.status_code == status, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


def listed(c: httpx.Client) -> list[str]:
    r = c.get(WISH)
    assert r.status_code == 200, r.text
    return [d["attributes"]["product_id"] for d in r.json()["data"]]


def test_wishlist_add_list_priority_remove(backend: BackendServer,
                                           published_store: PublishedStore) -> None:
    products = [p.product_id for p in published_store.products]
    assert len(products) >= 2
    a, b = products[0], products[1]
    _, token = backend.new_user()
    with backend.client(token) as c:
        assert listed(c) == []
        r = c.post(WISH, json={"data": {"type": "wishlistItemCreation",
                                        "attributes": {"product_id": a}}})
        assert r.status_code == 201, r.text
        first = r.json()["data"]
        # the seed's response shape
        assert first["type"] == "wishlistItem" and first["id"]
        assert first["attributes"]["product_id"] == a
        assert first["attributes"]["added_at"].endswith("Z")
        assert first["attributes"]["priority"] == 0
        assert first["attributes"]["title"] == published_store.product(a).title
        assert r.headers["location"] == f"{WISH}/{first['id']}"
        second = add(c, b, priority=5)
        assert listed(c) == [b, a]  # higher priority first
        # adding again is harmless: the same entry, 200
        again = add(c, a, status=200)
        assert again["id"] == first["id"]
        assert len(listed(c)) == 2
        # priority by item id or by product id
        r = c.patch(f"{WISH}/{first['id']}", json={"data": {
            "type": "wishlistItemUpdate", "attributes": {"priority": 9}}})
        assert r.status_code == 200, r.text
        assert r.json()["data"]["attributes"]["priority"] == 9
        assert listed(c) == [a, b]
        got = c.get(f"{WISH}/{b}")
        assert got.status_code == 200 and got.json()["data"]["id"] == second["id"]
        body = c.get(WISH, params={"limit": 1}).json()
        assert body["meta"]["total_items"] == 2 and len(body["data"]) == 1
        assert body["links"]["next"] is not None
        # remove
        assert c.delete(f"{WISH}/{a}").status_code == 204
        assert listed(c) == [b]
        assert_error(c.delete(f"{WISH}/{a}"), 404, "GAME_NOT_FOUND_IN_WISHLIST")
        assert_error(c.get(f"{WISH}/{first['id']}"), 404, "GAME_NOT_FOUND_IN_WISHLIST")
        assert_error(c.patch(f"{WISH}/{a}", json={"data": {"attributes": {"priority": 1}}}),
                     404, "GAME_NOT_FOUND_IN_WISHLIST")
        assert c.delete(f"{WISH}/{second['id']}").status_code == 204
        assert listed(c) == []


def test_wishlist_refusals_and_isolation(backend: BackendServer,
                                         published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, alice = backend.new_user()
    _, bob = backend.new_user()
    with backend.client(alice) as c:
        err = assert_error(c.post(WISH, json={"data": {"type": "wishlistItemCreation",
                                                       "attributes": {"product_id": "no-such"}}}),
                           404, "PRODUCT_NOT_FOUND")
        assert err["source"] == {"pointer": "/data/attributes/product_id"}
        assert_error(c.post(WISH, json={"data": {"attributes": {}}}), 422, "VALIDATION_ERROR")
        assert_error(c.post(WISH, json={"data": {"attributes": {"product_id": product,
                                                                "priority": -1}}}), 422)
        mine = add(c, product)
    with backend.client(bob) as c:
        assert listed(c) == []
        assert_error(c.get(f"{WISH}/{mine['id']}"), 404, "GAME_NOT_FOUND_IN_WISHLIST")
        assert_error(c.delete(f"{WISH}/{mine['id']}"), 404, "GAME_NOT_FOUND_IN_WISHLIST")
    with backend.client(alice) as c:
        assert listed(c) == [product]
    with backend.client() as c:
        assert_error(c.get(WISH), 401, "UNAUTHENTICATED")


def test_wishlist_limit(backend_factory: StartBackend, published_store: PublishedStore) -> None:
    server = backend_factory(settings={"wishlist_max_items": 1})
    products = [p.product_id for p in published_store.products]
    _, token = server.new_user()
    with server.client(token) as c:
        add(c, products[0])
        assert_error(c.post(WISH, json={"data": {"attributes": {"product_id": products[1]}}}),
                     409, "WISHLIST_LIMIT_REACHED")
        add(c, products[0], status=200)  # re-adding the one there is still fine
        assert listed(c) == [products[0]]


# -- the schema 3 -> 4 upgrade -------------------------------------------------------------------


@pytest.fixture
def database_url(request: pytest.FixtureRequest, database_kind: str,
                 tmp_path: Path) -> Iterator[str]:
    with scratch_database(request, database_kind) as dsn:
        yield dsn or f"sqlite:///{tmp_path / 'backend.sqlite'}"


def test_schema_3_is_upgraded_to_4_keeping_data(database_url: str) -> None:
    """A database as schema 3 left it (no wishlist, no family tables, no
    ``library_items.shared_from_user_id``), holding a library item, is upgraded on start."""
    db = Database(database_url)
    try:
        db.init_schema()
        with db.engine.begin() as conn:
            conn.execute(text("DROP TABLE wishlist_items"))
            conn.execute(text("DROP TABLE family_members"))
            conn.execute(text("ALTER TABLE library_items DROP COLUMN shared_from_user_id"))
            for column in ("origin", "device_id", "target_device_id"):  # schema 5's
                conn.execute(text(f"ALTER TABLE download_tasks DROP COLUMN {column}"))
            conn.execute(text("UPDATE schema_version SET version = 3"))
            conn.execute(text("INSERT INTO users (id, username, password_hash, created_at) "
                              "VALUES ('u1', 'old-user', 'x', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO products (id, title, created_at) "
                              "VALUES ('star-courier', 'Star Courier', CURRENT_TIMESTAMP)"))
            conn.execute(text(
                "INSERT INTO library_items (id, user_id, product_id, added_at, acquisition_type, "
                "is_hidden, total_playtime_seconds) VALUES ('i1', 'u1', 'star-courier', "
                "CURRENT_TIMESTAMP, 'purchase', false, 42)"))
        db.dispose()
        db = Database(database_url)
        assert db.stored_versions() == [3]
        assert "wishlist_items" not in inspect(db.engine).get_table_names()
        db.init_schema()  # what every start does
        assert db.stored_versions() == [SCHEMA_VERSION] and SCHEMA_VERSION >= 4  # 3 -> 4 -> ...
        insp = inspect(db.engine)
        assert {"origin", "device_id", "target_device_id"} <= {
            c["name"] for c in insp.get_columns("download_tasks")}
        assert {"wishlist_items", "family_members"} <= set(insp.get_table_names())
        assert "shared_from_user_id" in {c["name"] for c in insp.get_columns("library_items")}
        with db.engine.begin() as conn:
            assert conn.execute(text("SELECT total_playtime_seconds, shared_from_user_id "
                                     "FROM library_items WHERE id = 'i1'")).one() == (42, None)
            conn.execute(text("INSERT INTO wishlist_items (id, user_id, product_id, added_at, "
                              "priority) VALUES ('w1', 'u1', 'star-courier', "
                              "CURRENT_TIMESTAMP, 3)"))
        db.init_schema()  # a second start finds nothing to do
        assert db.stored_versions() == [SCHEMA_VERSION]
    finally:
        db.dispose()


def test_openapi_documents_wishlist(backend: BackendServer) -> None:
    with backend.client() as c:
        doc = c.get("/openapi.json").json()
    assert set(doc["paths"][WISH]) == {"get", "post"}
    assert set(doc["paths"][f"{WISH}/{{item_id}}"]) == {"get", "patch", "delete"}
