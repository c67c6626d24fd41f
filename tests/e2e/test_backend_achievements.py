"""Achievements: definitions published with the demo products, status with rarity, unlock and
progress for the game path (idempotent retries), isolation, the schema 2 -> 3 upgrade and the
``launcher-backend achievements`` publisher (real backend process)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.coverart import PNG_SIGNATURE, png_size
from backend.db import SCHEMA_VERSION
from tests.conftest import BackendServer, StartBackend, assert_error, cli

GAME = "star-courier"
BASE = "/api/v1/library/achievements"


def _status(c: httpx.Client, product: str = GAME) -> dict[str, Any]:
    r = c.get(f"{BASE}/status/{product}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["id"]: d["attributes"] for d in body["data"]}


def _unlock(c: httpx.Client, aid: str, product: str = GAME, key: str | None = None,
            **attrs: Any) -> httpx.Response:
    if key is not None:
        attrs["client_unlock_id"] = key
    return c.post(f"{BASE}/{product}/{aid}/unlock",
                  json={"data": {"type": "achievementUnlock", "attributes": attrs}})


def _progress(c: httpx.Client, aid: str, current: int, product: str = GAME) -> httpx.Response:
    return c.post(f"{BASE}/{product}/{aid}/progress", json={"data": {
        "type": "achievementProgress", "attributes": {"current": current}}})


def test_demo_definitions_status_and_icons(backend: BackendServer) -> None:
    _, token = backend.new_user([GAME, "tiny-tactics"])
    with backend.client(token) as c:
        body = _status(c)
        assert [d["id"] for d in body["data"]] == ["first-launch", "frequent-flyer", "long-haul"]
        assert all(d["type"] == "userAchievementStatus" for d in body["data"])
        assert body["meta"]["total"] == 3 and body["meta"]["unlocked"] == 0
        a = _by_id(body)
        first = a["first-launch"]
        assert first["name"] == "First Launch" and first["description"]
        assert first["is_unlocked"] is False and first["unlocked_at"] is None
        assert first["current_progress"] is None and first["rarity_percentage"] == 0.0
        assert a["frequent-flyer"]["current_progress"] == {"current": 0, "total": 5}
        # a hidden achievement shows neither its name nor its description until unlocked
        hidden = a["long-haul"]
        assert hidden["is_hidden"] is True and hidden["name"] != "Long Haul"
        assert "60 seconds" not in hidden["description"] and hidden["icon_url"] is None
        icon = httpx.get(first["icon_url_unlocked"])  # public, like covers
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
        assert icon.content.startswith(PNG_SIGNATURE) and png_size(icon.content) == (128, 128)
        assert [d["id"] for d in _status(c, "tiny-tactics")["data"]] == ["first-battle"]
    assert_error(httpx.get(f"{backend.api}/products/{GAME}/achievements/nope/icon"), 404,
                 "ACHIEVEMENT_NOT_FOUND")


def test_unlock_is_idempotent_only_for_the_same_unlock(backend: BackendServer) -> None:
    _, token = backend.new_user([GAME])
    with backend.client(token) as c:
        r = _unlock(c, "first-launch", key="unlock-1")
        assert r.status_code == 200, r.text
        first = r.json()["data"]
        assert first["type"] == "userAchievement" and first["id"] == "first-launch"
        assert first["attributes"]["is_unlocked"] is True
        assert first["attributes"]["newly_unlocked"] is True
        # the client's retry of the same unlock (its answer was lost): the same state again
        retry = _unlock(c, "first-launch", key="unlock-1")
        assert retry.status_code == 200
        assert retry.json()["data"]["attributes"] == {**first["attributes"],
                                                      "newly_unlocked": False}
        # the header works as the key too
        r = c.post(f"{BASE}/{GAME}/first-launch/unlock", headers={"Idempotency-Key": "unlock-1"})
        assert r.status_code == 200 and r.json()["data"]["attributes"]["newly_unlocked"] is False
        # any other unlock of an unlocked achievement is the seed's conflict
        assert_error(_unlock(c, "first-launch"), 409, "ACHIEVEMENT_ALREADY_UNLOCKED")
        assert_error(_unlock(c, "first-launch", key="unlock-2"), 409,
                     "ACHIEVEMENT_ALREADY_UNLOCKED")
        status = _by_id(_status(c))["first-launch"]
        assert status["is_unlocked"] and status["unlocked_at"] is not None
        assert _status(c)["meta"]["unlocked"] == 1
        # an offline unlock keeps the time the game unlocked it; the future is refused
        r = _unlock(c, "long-haul", unlocked_at="2024-03-15T19:00:00Z")
        assert r.json()["data"]["attributes"]["unlocked_at"].startswith("2024-03-15T19:00:00")
        assert_error(_unlock(c, "frequent-flyer", unlocked_at="2999-01-01T00:00:00Z"), 422)
        revealed = _by_id(_status(c))["long-haul"]
        assert revealed["name"] == "Long Haul" and "60 seconds" in revealed["description"]
        assert_error(_unlock(c, "no-such-achievement"), 404, "ACHIEVEMENT_NOT_FOUND")
        assert_error(_unlock(c, "first-battle", product="tiny-tactics"), 403, "PERMISSION_DENIED")
        assert_error(c.get(f"{BASE}/status/tiny-tactics"), 403, "PERMISSION_DENIED")
        assert_error(_unlock(c, "bad id!"), 422)


def test_progress_only_grows_and_unlocks_at_the_target(backend: BackendServer) -> None:
    _, token = backend.new_user([GAME])
    with backend.client(token) as c:
        r = _progress(c, "frequent-flyer", 2)
        assert r.status_code == 200, r.text
        a = r.json()["data"]["attributes"]
        assert a["current_progress"] == {"current": 2, "total": 5} and not a["is_unlocked"]
        # a late, older report does not lower it
        assert _progress(c, "frequent-flyer", 1).json()["data"]["attributes"][
            "current_progress"] == {"current": 2, "total": 5}
        done = _progress(c, "frequent-flyer", 9).json()["data"]["attributes"]
        assert done["is_unlocked"] and done["newly_unlocked"]
        assert done["current_progress"] == {"current": 5, "total": 5}
        again = _progress(c, "frequent-flyer", 5).json()["data"]["attributes"]
        assert again["is_unlocked"] and not again["newly_unlocked"]
        assert again["unlocked_at"] == done["unlocked_at"]
        assert _by_id(_status(c))["frequent-flyer"]["current_progress"] == {"current": 5,
                                                                            "total": 5}
        assert_error(_progress(c, "first-launch", 1), 422, "ACHIEVEMENT_NOT_PROGRESSIVE")
        assert_error(c.post(f"{BASE}/{GAME}/frequent-flyer/progress", json={"data": {
            "type": "achievementProgress", "attributes": {"current": -1}}}), 422)


def test_rarity_and_users_never_see_each_other(backend_factory: StartBackend) -> None:
    server = backend_factory()
    _, a_token = server.new_user([GAME])
    _, b_token = server.new_user([GAME])
    _, c_token = server.new_user([GAME])
    _, outsider = server.new_user([])
    with server.client(a_token) as a, server.client(b_token) as b, \
            server.client(c_token) as other, server.client(outsider) as x:
        assert _unlock(a, "first-launch").status_code == 200
        assert _unlock(b, "first-launch").status_code == 200
        assert _progress(a, "frequent-flyer", 3).status_code == 200
        # 2 of 3 owners unlocked it
        assert _by_id(_status(other))["first-launch"]["rarity_percentage"] == 66.7
        assert _by_id(_status(a))["frequent-flyer"]["rarity_percentage"] == 0.0
        # C sees its own state only: nothing unlocked, no progress of A's
        mine = _by_id(_status(other))
        assert not mine["first-launch"]["is_unlocked"]
        assert mine["frequent-flyer"]["current_progress"] == {"current": 0, "total": 5}
        # C's unlock is C's; A's state is untouched by it
        assert _unlock(other, "long-haul").status_code == 200
        seen_by_a = _by_id(_status(a))
        assert not seen_by_a["long-haul"]["is_unlocked"]
        assert seen_by_a["long-haul"]["rarity_percentage"] == 33.3
        # someone who does not own the game can neither read nor change anything
        assert_error(x.get(f"{BASE}/status/{GAME}"), 403, "PERMISSION_DENIED")
        assert_error(_unlock(x, "first-launch"), 403)
        assert_error(_progress(x, "frequent-flyer", 5), 403)
    assert_error(httpx.get(f"{server.api}/library/achievements/status/{GAME}"), 401)
    assert_error(httpx.post(f"{server.api}/library/achievements/{GAME}/first-launch/unlock"),
                 401)


def test_publish_definitions_with_the_cli(backend_factory: StartBackend,
                                          tmp_path: Path) -> None:
    server = backend_factory()
    name, token = server.new_user(["tiny-tactics"])
    spec = tmp_path / "achievements.json"
    spec.write_text(json.dumps([
        {"id": "first-battle", "name": "First Battle!", "description": "Start a battle."},
        {"id": "general", "name": "General", "progress_target": 3,
         "icon_url": "https://cdn.example.com/general.png"},
    ]))
    out = cli("achievements", "--data", str(server.data_dir), "tiny-tactics", str(spec),
              "--json")
    assert json.loads(out.stdout)["achievements"] == 2
    with server.client(token) as c:
        got = _by_id(_status(c, "tiny-tactics"))
        assert list(got) == ["first-battle", "general"]
        assert got["first-battle"]["name"] == "First Battle!"
        assert got["general"]["icon_url_unlocked"] == "https://cdn.example.com/general.png"
        assert got["general"]["current_progress"] == {"current": 0, "total": 3}
    spec.write_text(json.dumps([{"id": "bad id", "name": "x"}]))
    bad = cli("achievements", "--data", str(server.data_dir), "tiny-tactics", str(spec),
              check=False)
    assert bad.returncode != 0 and "bad id" in bad.stderr
    # the definitions live in the store: a restarted server imports them again
    server.restart()
    with server.client(server.login(name)) as c:
        assert list(_by_id(_status(c, "tiny-tactics"))) == ["first-battle", "general"]


def test_schema_2_database_is_migrated(backend_factory: StartBackend) -> None:
    """A database made before achievements (schema 2) is upgraded on start, its data kept."""
    server = backend_factory()
    if server.database_url is not None:
        pytest.skip("SQLite-specific tampering")
    name, token = server.new_user([GAME])
    with server.client(token) as c:
        item_id = c.get("/api/v1/library/items").json()["data"][0]["id"]
        c.patch(f"/api/v1/library/items/{item_id}", json={"data": {
            "type": "libraryItemUpdate", "attributes": {"is_hidden": True}}})
    server.stop()
    db = sqlite3.connect(server.data_dir / "backend.sqlite")
    db.execute("DROP TABLE user_achievements")
    db.execute("DROP TABLE achievement_definitions")
    for table, column in (("library_items", "reported_install_status"),
                          ("library_items", "reported_install_at"),
                          ("library_items", "installed_version_id"),
                          ("savegames", "comment"), ("savegame_uploads", "comment")):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("UPDATE schema_version SET version = 2")
    db.commit()
    db.close()
    server.restart()
    with server.client(server.login(name)) as c:
        item = c.get(f"/api/v1/library/items/{item_id}").json()["data"]["attributes"]
        assert item["is_hidden"] is True and item["installation_status"] == "not_installed"
        assert _unlock(c, "first-launch").status_code == 200
        assert _by_id(_status(c))["first-launch"]["is_unlocked"]
    db = sqlite3.connect(server.data_dir / "backend.sqlite")
    try:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION >= 3  # 2 -> 3 (achievements) -> later ones
    finally:
        db.close()
