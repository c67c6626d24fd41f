"""User categories: CRUD, names, library item memberships, the category filter, isolation between
users and the schema migration that adds them (real backend process)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import httpx
import pytest

from backend.db import SCHEMA_VERSION
from tests.conftest import BackendServer, PublishedStore, StartBackend, assert_error

CATS = "/api/v1/library/categories"
ITEMS = "/api/v1/library/items"


def create(c: httpx.Client, name: str, sort_order: int | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"name": name}
    if sort_order is not None:
        attrs["sort_order"] = sort_order
    r = c.post(CATS, json={"data": {"type": "userCategoryCreate", "attributes": attrs}})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()["data"]
    assert r.headers["location"] == data["links"]["self"] == f"{CATS}/{data['id']}"
    return data


def names(c: httpx.Client) -> list[str]:
    r = c.get(CATS)
    assert r.status_code == 200, r.text
    return [d["attributes"]["name"] for d in r.json()["data"]]


def set_categories(c: httpx.Client, item_id: str, ids: Any) -> httpx.Response:
    return c.patch(f"{ITEMS}/{item_id}", json={"data": {
        "type": "libraryItemUpdate", "id": item_id, "attributes": {"category_ids": ids}}})


def items_by_product(c: httpx.Client, **params: Any) -> dict[str, dict[str, Any]]:
    r = c.get(ITEMS, params=params)
    assert r.status_code == 200, r.text
    return {d["attributes"]["product_id"]: d for d in r.json()["data"]}


def test_category_crud(backend: BackendServer) -> None:
    _, token = backend.new_user()
    with backend.client(token) as c:
        assert c.get(CATS).json()["data"] == []
        fav = create(c, "  Favourites ")
        a = fav["attributes"]
        assert fav["type"] == "userCategory"
        assert a["name"] == "Favourites"  # trimmed
        assert a["sort_order"] == 0 and a["item_count"] == 0
        assert a["created_at"] == a["updated_at"]
        done = create(c, "Completed")
        assert done["attributes"]["sort_order"] == 1  # appended after the last
        first = create(c, "Backlog", sort_order=0)
        # by sort_order, then name
        assert names(c) == ["Backlog", "Favourites", "Completed"]
        body = c.get(CATS).json()
        assert body["meta"] == {"total_items": 3, "current_page": 1, "per_page": 100,
                                "total_pages": 1}
        assert c.get(CATS, params={"limit": 1, "page": 2}).json()["data"][0]["id"] == fav["id"]

        got = c.get(f"{CATS}/{fav['id']}")
        assert got.status_code == 200 and got.json()["data"] == fav

        r = c.patch(f"{CATS}/{fav['id']}", json={"data": {
            "type": "userCategoryUpdate", "id": fav["id"], "attributes": {"name": "Loved"}}})
        assert r.status_code == 200, r.text
        renamed = r.json()["data"]["attributes"]
        assert renamed["name"] == "Loved" and renamed["sort_order"] == 0
        assert renamed["updated_at"] >= renamed["created_at"]
        r = c.patch(f"{CATS}/{done['id']}", json={"data": {"attributes": {"sort_order": 0}}})
        assert r.status_code == 200 and r.json()["data"]["attributes"]["name"] == "Completed"
        assert names(c) == ["Backlog", "Completed", "Loved"]

        r = c.delete(f"{CATS}/{first['id']}")
        assert r.status_code == 204 and r.content == b""
        err = assert_error(c.get(f"{CATS}/{first['id']}"), 404, "CATEGORY_NOT_FOUND")
        assert first["id"] in err["detail"] and err["source"] == {"parameter": "category_id"}
        assert_error(c.delete(f"{CATS}/{first['id']}"), 404, "CATEGORY_NOT_FOUND")
        assert_error(c.patch(f"{CATS}/{first['id']}",
                             json={"data": {"attributes": {"name": "x"}}}), 404,
                     "CATEGORY_NOT_FOUND")
        assert names(c) == ["Completed", "Loved"]
        for bad in ("nul%00id", "a%20b", "x" * 65):
            assert_error(c.get(f"{CATS}/{bad}"), 422, "VALIDATION_ERROR")
            assert_error(c.delete(f"{CATS}/{bad}"), 422, "VALIDATION_ERROR")
    with backend.client() as anon:
        assert_error(anon.get(CATS), 401)
        assert_error(anon.post(CATS, json={"data": {"attributes": {"name": "x"}}}), 401)
        assert_error(anon.delete(f"{CATS}/{fav['id']}"), 401)


def test_category_names_unique_trimmed_and_validated(backend: BackendServer) -> None:
    _, token = backend.new_user()
    _, other_token = backend.new_user()
    with backend.client(token) as c, backend.client(other_token) as other:
        fav = create(c, "Favourites")
        games = create(c, "Игры 🎮")  # any script, emoji included
        assert games["attributes"]["name"] == "Игры 🎮"
        for dup in ("Favourites", " favourites\t", "FAVOURITES"):
            r = c.post(CATS, json={"data": {"attributes": {"name": dup}}})
            err = assert_error(r, 409, "CATEGORY_NAME_CONFLICT")
            assert err["source"] == {"pointer": "/data/attributes/name"}
            assert "Favourites" in err["detail"] or dup.strip() in err["detail"]
        # renaming onto another category's name conflicts; a new case of its own name does not
        assert_error(c.patch(f"{CATS}/{games['id']}",
                             json={"data": {"attributes": {"name": "favourites"}}}), 409,
                     "CATEGORY_NAME_CONFLICT")
        r = c.patch(f"{CATS}/{fav['id']}", json={"data": {"attributes": {"name": "FAVOURITES"}}})
        assert r.status_code == 200 and r.json()["data"]["attributes"]["name"] == "FAVOURITES"
        # names are unique per user only
        assert create(other, "Favourites")["attributes"]["name"] == "Favourites"

        assert create(c, "x" * 64)["attributes"]["name"] == "x" * 64
        assert create(c, "  " + "y" * 64 + "  ")["attributes"]["name"] == "y" * 64
        bad = ["", "   ", "\t\n", "z" * 65, "line\nbreak", "tab\there", "nul\x00", "bell\x07",
               "del\x7f", "c1\x85mid", "sep\u2028mid", "para\u2029mid",
               "lone\ud800surrogate", 42, None]
        for name in bad:
            body = json.dumps({"data": {"attributes": {"name": name}}})  # ASCII, escapes kept
            r = c.post(CATS, content=body, headers={"content-type": "application/json"})
            err = assert_error(r, 422, "VALIDATION_ERROR")
            assert err["source"] == {"pointer": "/data/attributes/name"}, (name, err)
            r = c.patch(f"{CATS}/{fav['id']}", content=body,
                        headers={"content-type": "application/json"})
            if name is None:  # absent and null both leave the name alone
                assert r.status_code == 200, r.text
            else:
                assert_error(r, 422, "VALIDATION_ERROR")
        assert_error(c.post(CATS, json={"data": {"attributes": {}}}), 422, "VALIDATION_ERROR")
        for order in (-1, 1_000_001, "first"):
            err = assert_error(c.post(CATS, json={"data": {"attributes": {
                "name": "ordered", "sort_order": order}}}), 422, "VALIDATION_ERROR")
            assert err["source"] == {"pointer": "/data/attributes/sort_order"}
        assert_error(c.post(CATS, content=b"{not json", headers={
            "content-type": "application/json"}), 422)
        assert "FAVOURITES" in names(c) and "Favourites" not in names(c)


def test_category_limit_per_user(backend_factory: StartBackend) -> None:
    server = backend_factory(with_store=False, settings={"max_categories": 3})
    _, token = server.new_user()
    with server.client(token) as c:
        for n in range(3):
            create(c, f"c{n}")
        err = assert_error(c.post(CATS, json={"data": {"attributes": {"name": "c3"}}}), 409,
                           "CATEGORY_LIMIT_REACHED")
        assert "3" in err["detail"]
        c.delete(f"{CATS}/{c.get(CATS).json()['data'][0]['id']}")
        create(c, "c3")


def test_patch_item_assigns_and_removes_categories(backend: BackendServer,
                                                   published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, token = backend.new_user([product])
    with backend.client(token) as c:
        item = c.get(ITEMS).json()["data"][0]
        assert item["attributes"]["category_ids"] == []
        assert item["relationships"] == {"categories": {"data": []}}
        a = create(c, "Alpha")
        b = create(c, "Beta")
        # duplicates collapse; ids come back in category order
        r = set_categories(c, item["id"], [b["id"], a["id"], b["id"]])
        assert r.status_code == 200, r.text
        got = r.json()["data"]
        assert got["attributes"]["category_ids"] == [a["id"], b["id"]]
        assert got["relationships"]["categories"]["data"] == [
            {"type": "userCategory", "id": a["id"]}, {"type": "userCategory", "id": b["id"]}]
        assert c.get(f"{ITEMS}/{item['id']}").json()["data"]["attributes"]["category_ids"] == \
            [a["id"], b["id"]]
        assert items_by_product(c)[product]["attributes"]["category_ids"] == [a["id"], b["id"]]
        assert c.get(f"{CATS}/{a['id']}").json()["data"]["attributes"]["item_count"] == 1
        # reordering the categories reorders the ids
        c.patch(f"{CATS}/{b['id']}", json={"data": {"attributes": {"sort_order": 0}}})
        c.patch(f"{CATS}/{a['id']}", json={"data": {"attributes": {"sort_order": 5}}})
        assert c.get(f"{ITEMS}/{item['id']}").json()["data"]["attributes"]["category_ids"] == \
            [b["id"], a["id"]]
        # other attributes, an absent or a null category_ids leave the categories alone
        r = c.patch(f"{ITEMS}/{item['id']}", json={"data": {"attributes": {"is_hidden": True}}})
        assert r.json()["data"]["attributes"]["category_ids"] == [b["id"], a["id"]]
        r = set_categories(c, item["id"], None)
        assert r.status_code == 200 and r.json()["data"]["attributes"]["category_ids"] == \
            [b["id"], a["id"]]
        # replacing: one removed, one kept
        r = set_categories(c, item["id"], [a["id"]])
        assert r.json()["data"]["attributes"]["category_ids"] == [a["id"]]
        assert c.get(f"{CATS}/{b['id']}").json()["data"]["attributes"]["item_count"] == 0
        # [] removes every category
        r = set_categories(c, item["id"], [])
        assert r.status_code == 200
        assert r.json()["data"]["attributes"]["category_ids"] == []
        assert r.json()["data"]["relationships"]["categories"]["data"] == []
        assert r.json()["data"]["attributes"]["is_hidden"] is True
        for bad in ("not-a-list", [1], [""], ["x" * 65], [f"c{i}" for i in range(101)],
                    ["nul\x00id"], ["a b"], ["../x"]):
            assert_error(set_categories(c, item["id"], bad), 422, "VALIDATION_ERROR")


def test_unknown_category_id_is_refused_and_named(backend: BackendServer,
                                                  published_store: PublishedStore) -> None:
    _, token = backend.new_user([published_store.main.product_id])
    with backend.client(token) as c:
        item_id = c.get(ITEMS).json()["data"][0]["id"]
        a = create(c, "Alpha")
        assert set_categories(c, item_id, [a["id"]]).status_code == 200
        err = assert_error(set_categories(c, item_id, [a["id"], "no-such-category"]), 404,
                           "CATEGORY_NOT_FOUND")
        assert "'no-such-category'" in err["detail"]
        assert err["source"] == {"pointer": "/data/attributes/category_ids/1"}
        err = assert_error(set_categories(c, item_id, ["ghost-1", a["id"], "ghost-2"]), 404,
                           "CATEGORY_NOT_FOUND")
        assert "'ghost-1'" in err["detail"] and "'ghost-2'" in err["detail"]
        assert err["source"] == {"pointer": "/data/attributes/category_ids/0"}
        # a refused PATCH changes nothing, not even the other attributes
        r = c.patch(f"{ITEMS}/{item_id}", json={"data": {"attributes": {
            "is_hidden": True, "category_ids": ["ghost"]}}})
        assert_error(r, 404, "CATEGORY_NOT_FOUND")
        attrs = c.get(f"{ITEMS}/{item_id}").json()["data"]["attributes"]
        assert attrs["category_ids"] == [a["id"]] and attrs["is_hidden"] is False
        # a deleted category is unknown too
        b = create(c, "Beta")
        c.delete(f"{CATS}/{b['id']}")
        err = assert_error(set_categories(c, item_id, [b["id"]]), 404, "CATEGORY_NOT_FOUND")
        assert b["id"] in err["detail"]


def test_category_filter_on_library_items(backend: BackendServer,
                                          published_store: PublishedStore) -> None:
    products = sorted(p.product_id for p in published_store.products)
    assert len(products) >= 2
    one, two = products[0], products[1]
    _, token = backend.new_user(products)
    with backend.client(token) as c:
        items = items_by_product(c)
        a, b, empty = create(c, "Alpha"), create(c, "Beta"), create(c, "Empty")
        set_categories(c, items[one]["id"], [a["id"], b["id"]])
        set_categories(c, items[two]["id"], [b["id"]])
        assert set(items_by_product(c, category_id=a["id"])) == {one}
        assert set(items_by_product(c, category_id=b["id"])) == {one, two}
        assert items_by_product(c, category_id=empty["id"]) == {}
        # combined with the other filters and kept in the pagination links
        page = c.get(ITEMS, params={"category_id": b["id"], "limit": 1}).json()
        assert page["meta"]["total_items"] == 2
        assert f"category_id={b['id']}" in page["links"]["next"]
        assert len(c.get(page["links"]["next"]).json()["data"]) == 1
        assert items_by_product(c, category_id=b["id"], search="zzz-none") == {}
        c.patch(f"{ITEMS}/{items[two]['id']}", json={"data": {"attributes": {"is_hidden": True}}})
        assert set(items_by_product(c, category_id=b["id"], include_hidden="false")) == {one}
        counts = {d["attributes"]["name"]: d["attributes"]["item_count"]
                  for d in c.get(CATS).json()["data"]}
        assert counts == {"Alpha": 1, "Beta": 2, "Empty": 0}
        err = assert_error(c.get(ITEMS, params={"category_id": "no-such-category"}), 404,
                           "CATEGORY_NOT_FOUND")
        assert err["source"] == {"parameter": "category_id"}
        for bad in ("x" * 65, "nul\x00id", "a b", ""):
            err = assert_error(c.get(ITEMS, params={"category_id": bad}), 422, "VALIDATION_ERROR")
            assert err["source"] == {"parameter": "category_id"}


def test_deleting_a_category_removes_it_from_items(backend: BackendServer,
                                                   published_store: PublishedStore) -> None:
    products = [p.product_id for p in published_store.products]
    _, token = backend.new_user(products)
    with backend.client(token) as c:
        items = items_by_product(c)
        a, b = create(c, "Alpha"), create(c, "Beta")
        for item in items.values():
            assert set_categories(c, item["id"], [a["id"], b["id"]]).status_code == 200
        assert c.delete(f"{CATS}/{a['id']}").status_code == 204
        for pid, item in items_by_product(c).items():
            assert item["attributes"]["category_ids"] == [b["id"]], pid
            assert item["relationships"]["categories"]["data"] == [
                {"type": "userCategory", "id": b["id"]}]
        assert set(items_by_product(c)) == set(products)  # the items themselves stay
        assert_error(c.get(ITEMS, params={"category_id": a["id"]}), 404, "CATEGORY_NOT_FOUND")
        # a new category with the deleted one's name starts empty
        again = create(c, "Alpha")
        assert again["id"] != a["id"] and again["attributes"]["item_count"] == 0
        assert items_by_product(c, category_id=again["id"]) == {}


def test_other_users_categories_are_invisible(backend: BackendServer,
                                              published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, a_token = backend.new_user([product])
    _, b_token = backend.new_user([product])
    with backend.client(a_token) as a, backend.client(b_token) as b:
        cat = create(a, "Mine")
        a_item = a.get(ITEMS).json()["data"][0]["id"]
        b_item = b.get(ITEMS).json()["data"][0]["id"]
        assert set_categories(a, a_item, [cat["id"]]).status_code == 200
        assert b.get(CATS).json()["data"] == []
        assert_error(b.get(f"{CATS}/{cat['id']}"), 404, "CATEGORY_NOT_FOUND")
        assert_error(b.patch(f"{CATS}/{cat['id']}",
                             json={"data": {"attributes": {"name": "Stolen"}}}), 404,
                     "CATEGORY_NOT_FOUND")
        assert_error(b.delete(f"{CATS}/{cat['id']}"), 404, "CATEGORY_NOT_FOUND")
        # using it on one's own item or as a filter is refused, naming the id
        err = assert_error(set_categories(b, b_item, [cat["id"]]), 404, "CATEGORY_NOT_FOUND")
        assert cat["id"] in err["detail"]
        assert_error(b.get(ITEMS, params={"category_id": cat["id"]}), 404, "CATEGORY_NOT_FOUND")
        # and another user's item cannot be put into one's own category
        own = create(b, "Mine")  # the same name is fine for another user
        assert_error(set_categories(b, a_item, [own["id"]]), 404, "LIBRARY_ITEM_NOT_FOUND")
        assert b.get(ITEMS).json()["data"][0]["attributes"]["category_ids"] == []
        # A's category is untouched
        got = a.get(f"{CATS}/{cat['id']}").json()["data"]["attributes"]
        assert got["name"] == "Mine" and got["item_count"] == 1
        assert a.get(f"{ITEMS}/{a_item}").json()["data"]["attributes"]["category_ids"] == \
            [cat["id"]]


def test_openapi_documents_categories(backend: BackendServer) -> None:
    with backend.client() as c:
        doc = c.get("/openapi.json").json()
    assert set(doc["paths"][CATS]) == {"get", "post"}
    assert set(doc["paths"][f"{CATS}/{{category_id}}"]) == {"get", "patch", "delete"}
    params = {p["name"] for p in doc["paths"][ITEMS]["get"]["parameters"]}
    assert "category_id" in params
    patch = doc["components"]["schemas"]["LibraryItemPatchAttributes"]["properties"]
    assert "category_ids" in patch


def test_schema_1_database_is_migrated(backend_factory: StartBackend) -> None:
    """A database made before categories existed (schema 1) is upgraded on start."""
    server = backend_factory(with_store=False)
    if server.database_url is not None:
        pytest.skip("SQLite-specific tampering")
    name, _ = server.new_user()
    server.stop()
    db = sqlite3.connect(server.data_dir / "backend.sqlite")
    db.execute("DROP TABLE library_item_categories")
    db.execute("DROP TABLE user_categories")
    db.execute("UPDATE schema_version SET version = 1")
    db.commit()
    db.close()
    server.restart()
    with server.client(server.login(name)) as c:
        create(c, "After the upgrade")
        assert names(c) == ["After the upgrade"]
    db = sqlite3.connect(server.data_dir / "backend.sqlite")
    try:
        # migrated step by step to the current version (3 added achievements)
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        db.close()
