"""Family sharing (library seed 1.2): an owner shares the library with up to N members; a
member borrows a game and plays and installs it while the owner is not playing it, and is
refused with 403 ``FAMILY_ACCESS_RESTRICTED`` while the owner plays; the member's playtime,
saves and achievements stay the member's (real backend process, SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import (
    BackendServer,
    PublishedStore,
    StartBackend,
    assert_error,
    task_body,
)

FAMILY = "/api/v1/library/family"
PLAY = "/api/v1/library/playtime"


def add_member(c: httpx.Client, username: str) -> httpx.Response:
    return c.post(f"{FAMILY}/members", json={"data": {"type": "familyMemberCreation",
                                                      "attributes": {"username": username}}})


def start(c: httpx.Client, product: str, backdate: int = 0) -> httpx.Response:
    attrs: dict[str, Any] = {"product_id": product}
    if backdate:  # an offline replay: the session began that many seconds ago
        attrs["start_time"] = (datetime.now(UTC) - timedelta(seconds=backdate)).isoformat()
    return c.post(f"{PLAY}/sessions/start", json={"data": {
        "type": "playtimeSessionStart", "attributes": attrs}})


def shared(c: httpx.Client) -> dict[str, dict[str, Any]]:
    r = c.get(f"{FAMILY}/shared-games")
    assert r.status_code == 200, r.text
    return {d["id"]: d["attributes"] for d in r.json()["data"]}


def test_member_borrows_plays_and_is_refused_while_the_owner_plays(
        backend: BackendServer, published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    other = next(p.product_id for p in published_store.products if p.product_id != product)
    _, owner = backend.new_user([product, other])
    member_name, member = backend.new_user([other])  # owns `other` herself
    with backend.client(owner) as o, backend.client(member) as m:
        # not a member yet: nothing shared, borrowing refused
        assert shared(m) == {}
        assert_error(m.post(f"{FAMILY}/shared-games/{product}/borrow"), 403,
                     "FAMILY_ACCESS_RESTRICTED")
        r = add_member(o, member_name)
        assert r.status_code == 201, r.text
        assert r.json()["data"]["attributes"]["username"] == member_name
        fam = o.get(FAMILY).json()["data"]["attributes"]
        assert fam["role"] == "owner" and [x["attributes"]["role"] for x in fam["members"]] \
            == ["owner", "member"]
        assert m.get(FAMILY).json()["data"]["attributes"]["role"] == "member"

        games = shared(m)
        assert set(games) == {product}  # `other` is her own
        assert games[product]["is_available"] and not games[product]["is_borrowed"]
        r = m.post(f"{FAMILY}/shared-games/{product}/borrow")
        assert r.status_code == 201, r.text
        item = r.json()["data"]
        assert item["attributes"]["acquisition_type"] == "family_shared_access"
        owner_id = next(x["id"] for x in o.get(FAMILY).json()["data"]["attributes"]["members"]
                        if x["attributes"]["role"] == "owner")
        assert item["attributes"]["shared_from_user_id"] == owner_id
        listed = {i["attributes"]["product_id"]: i["attributes"]
                  for i in m.get("/api/v1/library/items").json()["data"]}
        assert listed[product]["acquisition_type"] == "family_shared_access"
        assert listed[product]["shared_from_user_id"] == owner_id
        assert listed[other]["shared_from_user_id"] is None
        assert item["attributes"]["product_id"] == product
        assert m.post(f"{FAMILY}/shared-games/{product}/borrow").status_code == 200
        assert shared(m)[product]["is_borrowed"]
        # a game the owner does not own cannot be borrowed
        assert_error(m.post(f"{FAMILY}/shared-games/not-owned/borrow"), 403,
                     "FAMILY_ACCESS_RESTRICTED")

        # the member installs and plays it while the owner does not play
        r = m.post("/api/v1/download/tasks", json=task_body(product))
        assert r.status_code == 202, r.text
        r = start(m, product, backdate=120)
        assert r.status_code == 201, r.text
        sid = r.json()["data"]["id"]
        r = m.post(f"{PLAY}/sessions/{sid}/end", json={"data": {
            "type": "playtimeSessionEnd", "attributes": {"duration_seconds": 30}}})
        assert r.status_code == 200, r.text

        # the owner plays: the member is refused (play and install), the owner is not
        r = start(o, product)
        assert r.status_code == 201, r.text
        owner_sid = r.json()["data"]["id"]
        assert not shared(m)[product]["is_available"]
        err = assert_error(start(m, product), 403, "FAMILY_ACCESS_RESTRICTED")
        assert "owner" in err["detail"]
        assert_error(m.post("/api/v1/download/tasks", json=task_body(product)), 403,
                     "FAMILY_ACCESS_RESTRICTED")
        # her own game is not affected by the owner's play
        assert start(m, other).status_code == 201

        # the owner stops: the member may play again
        assert o.post(f"{PLAY}/sessions/{owner_sid}/end").status_code == 200
        assert shared(m)[product]["is_available"]
        r = start(m, product, backdate=60)
        assert r.status_code == 201, r.text
        m.post(f"{PLAY}/sessions/{r.json()['data']['id']}/end", json={"data": {
            "attributes": {"duration_seconds": 10}}})

        # the borrower's playtime is hers, not the owner's
        mine = {d["id"]: d["attributes"] for d in m.get(f"{PLAY}/summary").json()["data"]}
        assert mine[product]["total_playtime_seconds"] == 40
        assert mine[product]["session_count"] == 2
        theirs = {d["id"]: d["attributes"] for d in o.get(f"{PLAY}/summary").json()["data"]}
        assert theirs[product]["session_count"] == 1
        assert theirs[product]["total_playtime_seconds"] < 30  # the owner's own short session


def test_borrowers_saves_stay_theirs_and_removal_takes_the_game_away(
        backend: BackendServer, published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, owner = backend.new_user([product])
    member_name, member = backend.new_user()
    with backend.client(owner) as o, backend.client(member) as m:
        assert add_member(o, member_name).status_code == 201
        assert m.post(f"{FAMILY}/shared-games/{product}/borrow").status_code == 201
        blob = b"borrowed save"
        r = m.post("/api/v1/library/savegames/upload-url", json={"data": {
            "type": "savegameUploadRequest", "attributes": {
                "product_id": product, "slot": "slot1.sav", "size_bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest()}}})
        assert r.status_code == 200, r.text
        up = r.json()["data"]["attributes"]
        put = httpx.put(up["upload_url"], content=blob, headers=up["headers"], timeout=30)
        assert put.status_code in (200, 201, 204), put.text
        r = m.post("/api/v1/library/savegames/confirm-upload", json={"data": {
            "type": "savegameUploadConfirmation",
            "attributes": {"internal_save_id": up["internal_save_id"]}}})
        assert r.status_code in (200, 201), r.text
        # the owner does not see the member's save
        owner_saves = o.get("/api/v1/library/savegames", params={"product_id": product})
        member_saves = m.get("/api/v1/library/savegames", params={"product_id": product})
        assert member_saves.status_code == 200, member_saves.text
        assert "slot1.sav" in member_saves.text
        assert "slot1.sav" not in owner_saves.text

        # the owner removes her: the borrowed game goes, her save stays hers
        member_id = next(x["id"] for x in o.get(FAMILY).json()["data"]["attributes"]["members"]
                         if x["attributes"]["username"] == member_name)
        assert o.delete(f"{FAMILY}/members/{member_id}").status_code == 204
        assert_error(o.delete(f"{FAMILY}/members/{member_id}"), 404, "FAMILY_MEMBER_NOT_FOUND")
        assert m.get(FAMILY).json()["data"]["attributes"]["role"] == "none"
        items = m.get("/api/v1/library/items").json()["data"]
        assert product not in [i["attributes"]["product_id"] for i in items]
        assert_error(start(m, product), 403)
        assert_error(m.post("/api/v1/download/tasks", json=task_body(product)), 403)
        # re-added later, the save is still there
        assert add_member(o, member_name).status_code == 201
        assert m.post(f"{FAMILY}/shared-games/{product}/borrow").status_code == 201
        again = m.get("/api/v1/library/savegames", params={"product_id": product})
        assert "slot1.sav" in again.text
        # the member leaves by herself
        me = next(x["id"] for x in m.get(FAMILY).json()["data"]["attributes"]["members"]
                  if x["attributes"]["username"] == member_name)
        assert m.delete(f"{FAMILY}/members/{me}").status_code == 204
        assert shared(m) == {}


def test_family_limits_and_conflicts(backend_factory: StartBackend,
                                     published_store: PublishedStore) -> None:
    server = backend_factory(settings={"family_max_members": 1})
    product = published_store.main.product_id
    owner_name, owner = server.new_user([product])
    a_name, a = server.new_user()
    b_name, _ = server.new_user()
    with server.client(owner) as o, server.client(a) as ca:
        assert add_member(o, a_name).status_code == 201
        assert_error(add_member(o, b_name), 409, "FAMILY_LIMIT_REACHED")
        assert_error(add_member(o, a_name), 409, "FAMILY_CONFLICT")  # already in one
        assert_error(add_member(o, owner_name), 422, "VALIDATION_ERROR")
        assert_error(add_member(o, "nobody-here"), 404, "USER_NOT_FOUND")
        assert_error(add_member(ca, b_name), 409, "FAMILY_CONFLICT")  # a member cannot share on
        assert_error(ca.delete(f"{FAMILY}/members/not-a-user"), 404, "FAMILY_MEMBER_NOT_FOUND")


def test_concurrent_borrows_and_invitations_agree(backend: BackendServer,
                                                  published_store: PublishedStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    product = published_store.main.product_id
    _, owner_a = backend.new_user([product])
    _, owner_b = backend.new_user([product])
    member_name, member = backend.new_user()

    def invite(token: str) -> int:
        with backend.client(token) as c:
            return add_member(c, member_name).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(invite, [owner_a, owner_b] * 4))
    assert sorted(codes).count(201) == 1 and set(codes) <= {201, 409}, codes

    def borrow_once(_: int) -> int:
        with backend.client(member) as c:
            return c.post(f"{FAMILY}/shared-games/{product}/borrow").status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(borrow_once, range(8)))
    assert codes.count(201) == 1 and set(codes) <= {200, 201}, codes
    with backend.client(member) as c:
        items = c.get("/api/v1/library/items").json()["data"]
    assert [i["attributes"]["product_id"] for i in items] == [product]


def test_nobody_becomes_a_member_and_an_owner_in_a_race(backend: BackendServer) -> None:
    """X adds Y while Y adds Z (and X adds Y while Z adds X), from two threads against the
    real backend: one add wins, the other is 409 FAMILY_CONFLICT; no user is ever both a
    member of a family and the owner of one."""
    from concurrent.futures import ThreadPoolExecutor

    def role(token: str) -> str:
        with backend.client(token) as c:
            r = c.get(FAMILY)
            assert r.status_code == 200, r.text
            return str(r.json()["data"]["attributes"]["role"])

    with ThreadPoolExecutor(2) as pool:
        for round_ in range(10):
            (x, tx), (y, ty), (z, tz) = (backend.new_user() for _ in range(3))
            # even rounds: X adds Y | Y adds Z; odd rounds: X adds Y | Z adds X
            second = (ty, z) if round_ % 2 == 0 else (tz, x)

            def add(pair: tuple[str, str]) -> httpx.Response:
                with backend.client(pair[0]) as c:
                    return add_member(c, pair[1])

            answers = list(pool.map(add, [(tx, y), second]))
            codes = sorted(r.status_code for r in answers)
            assert codes == [201, 409], [r.text for r in answers]
            refused = next(r for r in answers if r.status_code == 409)
            assert_error(refused, 409, "FAMILY_CONFLICT")
            # one family of two: a member, an owner and a user outside (with the bug, the user
            # both adds involve was a member and an owner: two members, one owner)
            roles = sorted([role(tx), role(ty), role(tz)])
            assert roles == ["member", "none", "owner"], roles


def test_family_changes_reach_both_library_channels(backend: BackendServer,
                                                    published_store: PublishedStore) -> None:
    import contextlib
    import json

    from websockets.sync.client import connect

    product = published_store.main.product_id
    _, owner = backend.new_user([product])
    member_name, member = backend.new_user()
    _, stranger = backend.new_user()
    url = backend.url.replace("http://", "ws://", 1) + "/api/v1/ws/library-updates"

    def open_ws(stack: contextlib.ExitStack, token: str) -> Any:
        ws = stack.enter_context(connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10))
        assert json.loads(ws.recv(timeout=10))["event_type"] == "connection.ready"
        return ws

    def family_event(ws: Any) -> dict[str, Any]:
        while True:  # skip other library events
            msg: dict[str, Any] = json.loads(ws.recv(timeout=10))
            if msg["event_type"] == "library.family.updated":
                return dict(msg["payload"])

    with contextlib.ExitStack() as stack:
        wo, wm = open_ws(stack, owner), open_ws(stack, member)
        ws_other = open_ws(stack, stranger)
        with backend.client(owner) as o, backend.client(member) as m:
            assert add_member(o, member_name).status_code == 201
            for ws in (wo, wm):
                p = family_event(ws)
                assert p["change"] == "member_added" and p["product_ids"] == []
            member_id = p["member_id"]
            assert m.post(f"{FAMILY}/shared-games/{product}/borrow").status_code == 201
            for ws in (wo, wm):
                p = family_event(ws)
                assert p["change"] == "game_borrowed" and p["product_ids"] == [product]
            assert o.delete(f"{FAMILY}/members/{member_id}").status_code == 204
            for ws in (wo, wm):
                p = family_event(ws)
                assert p["change"] == "member_removed" and p["product_ids"] == [product]
        with pytest.raises(TimeoutError):
            ws_other.recv(timeout=0.5)
