"""The store's special cases seen through the API (real backend process): the launcher's own
product (``game-launcher-<channel>``) is every player's without a grant and stays out of the
library and family lists; a damaged delta index in the store gives a clear answer, not a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import assert_error, cli, task_body

LAUNCHER = "game-launcher-stable"


def _publish(store: Path, product: str, version: str, tmp: Path) -> None:
    build = tmp / f"{product}-{version}"
    (build / "bin").mkdir(parents=True)
    (build / "bin" / "launcher").write_bytes(b"#!/bin/sh\necho " + version.encode() + b"\n")
    (build / "README").write_text(f"launcher {version}\n")
    cli("publish", "--store", str(store), "--product", product, "--version", version,
        str(build))


def test_launcher_product_and_damaged_delta_index(backend_factory: Any, published_store: Any,
                                                  tmp_path: Path) -> None:
    server = backend_factory()  # one backend for both (a start costs seconds)
    launcher_product(server, tmp_path)
    damaged_delta_index(server, published_store)


def launcher_product(server: Any, tmp_path: Path) -> None:
    """Every player's without a grant; not in the library; not lent in a family."""
    _publish(server.store_dir, LAUNCHER, "1.0.0", tmp_path)
    owner, owner_token = server.new_user(products=["star-courier"])
    member, member_token = server.new_user()
    with server.client(member_token) as c:
        # no grant, yet the self-update may download it (and check for updates of it)
        made = c.post("/api/v1/download/tasks", json=task_body(LAUNCHER, target="launcher"))
        assert made.status_code == 202, made.text
        assert made.json()["data"]["attributes"]["versionId"] == "1.0.0"
        check = c.post("/api/v1/download/updates/check", json={"data": [{
            "type": "installedProduct",
            "attributes": {"productId": LAUNCHER, "currentVersionId": "1.0.0"}}]})
        assert check.status_code == 200, check.text
        assert check.json()["data"][0]["attributes"]["isUpdateAvailable"] is False
        # ... but it is not a game of the library
        items = c.get("/api/v1/library/items", params={"limit": 100}).json()
        assert [i["attributes"]["product_id"] for i in items["data"]] == []
        # a launcher channel that is not published is not anyone's
        assert_error(c.post("/api/v1/download/tasks",
                            json=task_body("game-launcher-nightly", target="x")),
                     403, "PERMISSION_DENIED")
    # in a family, the owner's launcher is not lent
    with server.client(owner_token) as c:
        assert c.post("/api/v1/download/tasks", json=task_body(LAUNCHER, target="l")
                      ).status_code == 202
        added = c.post("/api/v1/library/family/members", json={"data": {
            "type": "familyMemberCreation", "attributes": {"username": member}}})
        assert added.status_code == 201, added.text
    with server.client(member_token) as c:
        shared = c.get("/api/v1/library/family/shared-games").json()["data"]
        assert [g["id"] for g in shared] == ["star-courier"]
        assert_error(c.post(f"/api/v1/library/family/shared-games/{LAUNCHER}/borrow"),
                     403, "FAMILY_ACCESS_RESTRICTED")
    assert owner


def damaged_delta_index(server: Any, published_store: Any) -> None:
    """updates/check and initiate answer clearly (from chunks, with the reason), not 500."""
    versions = published_store.product("star-courier").versions
    new = versions[-1]  # updates/check answers for the latest
    old = versions[-2]  # a step with a delta index in the demo store
    store = server.store
    damaged = []
    for rel in (store.delta_rel("star-courier", old, new),
                store.delta_v2_rel("star-courier", old, new)):
        path = store.path(rel)
        if path.exists():
            blob = bytearray(path.read_bytes())
            blob[len(blob) // 2] ^= 0xFF
            # replaced, never rewritten in place: the store's files are hard links shared
            # with every other test backend
            fresh = path.with_name(path.name + ".tmp")
            fresh.write_bytes(bytes(blob))
            fresh.replace(path)
            damaged.append(rel)
    assert damaged, "the demo store publishes a delta index for its first step"
    _name, token = server.new_user(products=["star-courier"])
    with server.client(token) as c:
        check = c.post("/api/v1/download/updates/check", json={"data": [{
            "type": "installedProduct",
            "attributes": {"productId": "star-courier", "currentVersionId": old}}]})
        assert check.status_code == 200, check.text
        a = check.json()["data"][0]["attributes"]
        assert a["isUpdateAvailable"] is True and a["hasDeltaIndex"] is False
        assert a["deltaIndexError"].startswith("DELTA_INDEX_INVALID")
        assert a["downloadSizeBytes"] > 0
        # the update is still offered, from chunks: no delta is named to the engine
        task = c.post("/api/v1/download/updates/initiate", json={"data": {
            "type": "updateInitiateRequest", "attributes": {
                "productId": "star-courier", "currentVersionId": old,
                "targetVersionId": new}}})
        assert task.status_code == 202, task.text
        assert task.json()["data"]["attributes"]["delta"] is None
    assert "DELTA_INDEX_INVALID" in (server.data_dir / "backend.log").read_text()
