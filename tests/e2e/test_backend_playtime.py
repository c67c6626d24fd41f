"""Playtime sessions: start / heartbeat / end, idempotent retries, inactivity timeout."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.conftest import BackendServer, PublishedStore, StartBackend, assert_error


def _start(c: httpx.Client, product: str, key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return c.post("/api/v1/library/playtime/sessions/start", headers=headers,
                  json={"data": {"type": "playtimeSessionStart",
                                 "attributes": {"product_id": product}}})


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _summary(c: httpx.Client, product: str) -> dict[str, Any]:
    data = c.get("/api/v1/library/playtime/summary").json()["data"]
    attrs: dict[str, Any] = next(d["attributes"] for d in data if d["id"] == product)
    return attrs


def test_session_lifecycle_and_totals(backend: BackendServer,
                                      published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, token = backend.new_user([product])
    with backend.client(token) as c:
        r = _start(c, product)
        assert r.status_code == 201, r.text
        sess = r.json()["data"]
        assert sess["type"] == "playtimeSession" and sess["attributes"]["status"] == "active"
        sid = sess["id"]
        assert _summary(c, product)["active_session_id"] == sid
        time.sleep(1.1)
        assert c.post(f"/api/v1/library/playtime/sessions/{sid}/heartbeat").status_code == 204
        time.sleep(0.5)
        r = c.post(f"/api/v1/library/playtime/sessions/{sid}/end")
        assert r.status_code == 200
        ended = r.json()["data"]["attributes"]
        assert ended["status"] == "completed" and ended["end_reason"] == "client"
        assert ended["duration_seconds"] >= 1
        # a retried end returns the same result and counts nothing twice
        again = c.post(f"/api/v1/library/playtime/sessions/{sid}/end").json()["data"]["attributes"]
        assert again == ended
        total = _summary(c, product)
        assert total["total_playtime_seconds"] == ended["duration_seconds"]
        assert total["session_count"] == 1 and total["active_session_id"] is None
        item = c.get("/api/v1/library/items").json()["data"][0]["attributes"]
        assert item["total_playtime_seconds"] == ended["duration_seconds"]
        assert _ts(item["last_played_at"]) == _ts(ended["end_time"])
        assert_error(c.post(f"/api/v1/library/playtime/sessions/{sid}/heartbeat"), 409,
                     "PLAYTIME_SESSION_NOT_ACTIVE")


def test_start_is_idempotent_with_a_key(backend: BackendServer,
                                        published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, token = backend.new_user([product])
    with backend.client(token) as c:
        first = _start(c, product, key="launch-42").json()["data"]
        retry = _start(c, product, key="launch-42").json()["data"]
        assert retry == first
        other = _start(c, product, key="launch-43").json()["data"]
        assert other["id"] != first["id"]
        # a new start supersedes the unfinished session of the same product
        old = c.get(f"/api/v1/library/playtime/sessions/{first['id']}").json()["data"]
        assert old["attributes"]["status"] == "completed"
        assert old["attributes"]["end_reason"] == "superseded"


def test_start_errors_and_cross_user(backend: BackendServer,
                                     published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, a_token = backend.new_user([product])
    _, b_token = backend.new_user([product])
    with backend.client(a_token) as a, backend.client(b_token) as b:
        err = assert_error(_start(b, "not-owned-game"), 403, "PERMISSION_DENIED")
        assert err["source"]["pointer"] == "/data/attributes/product_id"
        assert_error(a.post("/api/v1/library/playtime/sessions/start", json={"data": {}}), 422)
        sid = _start(a, product, key="same-key").json()["data"]["id"]
        # B guesses A's session id, or replays A's idempotency key: nothing of A's is touched
        assert_error(b.post(f"/api/v1/library/playtime/sessions/{sid}/heartbeat"), 404,
                     "PLAYTIME_SESSION_NOT_FOUND")
        assert_error(b.post(f"/api/v1/library/playtime/sessions/{sid}/end"), 404)
        assert_error(b.get(f"/api/v1/library/playtime/sessions/{sid}"), 404)
        b_sess = _start(b, product, key="same-key").json()["data"]
        assert b_sess["id"] != sid
        assert a.get(f"/api/v1/library/playtime/sessions/{sid}").json()["data"]["attributes"][
            "status"] == "active"
        assert all(d["attributes"]["total_playtime_seconds"] == 0
                   for d in b.get("/api/v1/library/playtime/summary").json()["data"])
        assert_error(httpx.post(f"{backend.api}/library/playtime/sessions/{sid}/end"), 401)


def test_inactivity_timeout_closes_at_last_heartbeat(backend_factory: StartBackend,
                                                     published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    server = backend_factory(settings={"playtime_timeout": 2})
    _, token = server.new_user([product])
    _, token2 = server.new_user([product])
    with server.client(token) as c, server.client(token2) as c2:
        # another player's session, left without any request until it is read at the end
        sid2 = _start(c2, product).json()["data"]["id"]
        sid = _start(c, product).json()["data"]["id"]
        time.sleep(1.0)
        assert c.post(f"/api/v1/library/playtime/sessions/{sid}/heartbeat").status_code == 204
        time.sleep(3.0)  # the client vanished (crash, power loss)
        assert_error(c.post(f"/api/v1/library/playtime/sessions/{sid}/heartbeat"), 409,
                     "PLAYTIME_SESSION_NOT_ACTIVE")
        s = c.get(f"/api/v1/library/playtime/sessions/{sid}").json()["data"]["attributes"]
        assert s["status"] == "completed" and s["end_reason"] == "timeout"
        assert _ts(s["end_time"]) == _ts(s["last_heartbeat_at"])
        assert 0.9 <= s["duration_seconds"] <= 2
        ended = c.post(f"/api/v1/library/playtime/sessions/{sid}/end").json()["data"]["attributes"]
        assert ended == s  # the late end does not add the idle time
        assert _summary(c, product)["total_playtime_seconds"] == s["duration_seconds"]
        # a session timed out without any later request (4 s since its start, not one of its
        # player's requests since) is closed lazily on the next read
        assert _summary(c2, product)["active_session_id"] is None
        s2 = c2.get(f"/api/v1/library/playtime/sessions/{sid2}").json()["data"]["attributes"]
        assert s2["end_reason"] == "timeout" and s2["duration_seconds"] == 0


def _start_with(c: httpx.Client, product: str, **attrs: Any) -> httpx.Response:
    return c.post("/api/v1/library/playtime/sessions/start", json={"data": {
        "type": "playtimeSessionStart", "attributes": {"product_id": product, **attrs}}})


def _end(c: httpx.Client, sid: str, **attrs: Any) -> httpx.Response:
    return c.post(f"/api/v1/library/playtime/sessions/{sid}/end", json={"data": {
        "type": "playtimeSessionEnd", "attributes": attrs}})


def _beat(c: httpx.Client, sid: str, at: datetime) -> httpx.Response:
    return c.post(f"/api/v1/library/playtime/sessions/{sid}/heartbeat", json={"data": {
        "type": "playtimeHeartbeat", "attributes": {"at": _iso(at)}}})


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_client_session_id_makes_start_idempotent(backend: BackendServer,
                                                  published_store: PublishedStore) -> None:
    products = [p.product_id for p in published_store.products]
    _, token = backend.new_user(products)
    with backend.client(token) as c:
        r = _start_with(c, products[0], client_session_id="device-a-0001")
        assert r.status_code == 201, r.text
        first = r.json()["data"]
        assert first["attributes"]["client_session_id"] == "device-a-0001"
        retry = _start_with(c, products[0], client_session_id="device-a-0001")
        assert retry.status_code == 201 and retry.json()["data"] == first
        # the header and the body name the same key
        assert _start(c, products[0], key="device-a-0001").json()["data"]["id"] == first["id"]
        assert_error(c.post("/api/v1/library/playtime/sessions/start",
                            headers={"Idempotency-Key": "other"},
                            json={"data": {"type": "playtimeSessionStart", "attributes": {
                                "product_id": products[0],
                                "client_session_id": "device-a-0001"}}}), 422)
        # a key is one session: reusing it for another product is a conflict, not a new session
        assert_error(_start_with(c, products[1], client_session_id="device-a-0001"), 409,
                     "IDEMPOTENCY_CONFLICT")
        summary = c.get("/api/v1/library/playtime/summary",
                        params={"product_id": products[0]}).json()["data"]
        assert [s["id"] for s in summary] == [products[0]]
        assert summary[0]["attributes"]["active_session_id"] == first["id"]


def test_offline_replay_with_stated_times(backend: BackendServer,
                                          published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, token = backend.new_user([product])
    began = datetime.now(UTC) - timedelta(hours=1)
    with backend.client(token) as c:
        r = _start_with(c, product, client_session_id="offline-1", start_time=_iso(began))
        assert r.status_code == 201, r.text
        sess = r.json()["data"]
        sid = sess["id"]
        assert _ts(sess["attributes"]["start_time"]) == began
        for minute in (1, 2, 3):
            hb = _beat(c, sid, began + timedelta(minutes=minute))
            if hb.status_code == 409:  # closed by timeout meanwhile: the stated end fixes it
                break
            assert hb.status_code == 204, hb.text
        ended = _end(c, sid, ended_at=_iso(began + timedelta(seconds=200)))
        assert ended.status_code == 200, ended.text
        a = ended.json()["data"]["attributes"]
        assert a["status"] == "completed" and a["end_reason"] == "client"
        assert a["duration_seconds"] == 200
        assert _ts(a["end_time"]) == began + timedelta(seconds=200)
        # retries of the end (with or without the statement) change nothing
        assert _end(c, sid, ended_at=_iso(began + timedelta(seconds=200))).json()["data"][
            "attributes"] == a
        assert c.post(f"/api/v1/library/playtime/sessions/{sid}/end").json()["data"][
            "attributes"] == a
        assert_error(_beat(c, sid, began), 409, "PLAYTIME_SESSION_NOT_ACTIVE")
        assert _summary(c, product)["total_playtime_seconds"] == 200
        # a measured duration wins over the clock (skew between client and server)
        sid2 = _start_with(c, product, start_time=_iso(began + timedelta(minutes=10))
                           ).json()["data"]["id"]
        a2 = _end(c, sid2, duration_seconds=90,
                  ended_at=_iso(began + timedelta(minutes=50))).json()["data"]["attributes"]
        assert a2["duration_seconds"] == 90
        assert _summary(c, product)["total_playtime_seconds"] == 290
        assert _summary(c, product)["session_count"] == 2


def test_stated_times_are_bounded(backend: BackendServer,
                                  published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    _, token = backend.new_user([product])
    now = datetime.now(UTC)
    with backend.client(token) as c:
        err = assert_error(_start_with(c, product, start_time=_iso(now + timedelta(hours=2))),
                           422, "PLAYTIME_TIME_INVALID")
        assert err["source"]["pointer"] == "/data/attributes/start_time"
        assert_error(_start_with(c, product, start_time=_iso(now - timedelta(days=400))), 422,
                     "PLAYTIME_TIME_INVALID")
        began = now - timedelta(days=3)
        sid = _start_with(c, product, start_time=_iso(began)).json()["data"]["id"]
        err = assert_error(_end(c, sid, ended_at=_iso(began - timedelta(seconds=1))), 422,
                           "PLAYTIME_TIME_INVALID")
        assert err["source"]["pointer"] == "/data/attributes/ended_at"
        assert_error(_end(c, sid, ended_at=_iso(now + timedelta(days=1))), 422,
                     "PLAYTIME_TIME_INVALID")
        assert_error(_end(c, sid, duration_seconds=-5), 422)
        # two days of "play" are capped at playtime_max_session (24 h)
        a = _end(c, sid, duration_seconds=2 * 86_400).json()["data"]["attributes"]
        assert a["duration_seconds"] == 86_400
        assert _summary(c, product)["total_playtime_seconds"] == 86_400


def test_stated_end_corrects_a_timeout(backend_factory: StartBackend,
                                       published_store: PublishedStore) -> None:
    product = published_store.main.product_id
    server = backend_factory(settings={"playtime_timeout": 2})
    _, token = server.new_user([product])
    with server.client(token) as c:
        sess = _start_with(c, product, client_session_id="crash-1").json()["data"]
        sid, began = sess["id"], _ts(sess["attributes"]["start_time"])
        time.sleep(3.0)  # offline: heartbeats could not be delivered; the server times it out
        assert _summary(c, product)["active_session_id"] is None
        timed = c.get(f"/api/v1/library/playtime/sessions/{sid}").json()["data"]["attributes"]
        assert timed["end_reason"] == "timeout" and timed["duration_seconds"] == 0
        # back online, the client replays: its last recorded heartbeat was 2 s after the start
        a = _end(c, sid, ended_at=_iso(began + timedelta(seconds=2))).json()["data"]["attributes"]
        assert a["end_reason"] == "client" and a["duration_seconds"] == 2
        again = _end(c, sid, ended_at=_iso(began + timedelta(seconds=2))).json()["data"]
        assert again["attributes"] == a
        assert _summary(c, product)["total_playtime_seconds"] == 2
        # heartbeats never move time back
        sid2 = _start(c, product).json()["data"]["id"]
        assert c.post(f"/api/v1/library/playtime/sessions/{sid2}/heartbeat").status_code == 204
        before = c.get(f"/api/v1/library/playtime/sessions/{sid2}").json()["data"]["attributes"]
        assert _beat(c, sid2, began).status_code == 204
        after = c.get(f"/api/v1/library/playtime/sessions/{sid2}").json()["data"]["attributes"]
        assert after["last_heartbeat_at"] == before["last_heartbeat_at"]
