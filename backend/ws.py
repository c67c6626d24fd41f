"""``/api/v1/ws/library-updates`` (seed 3.3): the user's live library events.

Authentication is the same JWT access token as the REST API, given when the connection is set
up (the seed: "JWT токен при установлении соединения"): ``Authorization: Bearer <token>`` on the
upgrade request, or ``?access_token=<token>`` for clients that cannot set headers (browsers).
Without a valid token the upgrade is refused with 401 and the seed's error body (or, where the
server cannot send a body, closed with 1008 before it is accepted).

After accepting, the server sends ``{"event_type": "connection.ready", "payload": {"user_id",
"expires_at"}}`` and then, in order, every event published for that user (``backend.events``):
``library.item.updated``, ``achievement.unlocked``, ``savegame.sync.status``. Access tokens are
short-lived: at the token's expiry the server closes with 4401 unless the client sent a fresh
token first as ``{"action": "authenticate", "access_token": "..."}`` (same user). A connection
that falls ``QUEUE_LIMIT`` events behind is closed with 1013 (reconnect and re-read). Other
client messages are ignored, except ``{"action": "ping"}``, answered with ``{"event_type":
"pong", "payload": {}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from backend.auth import AuthUser, decode_access_token_exp, parse_bearer
from backend.context import ctx_of
from backend.errors import ApiError, Unauthenticated, error_body
from backend.events import Subscription
from backend.jsonapi import iso

router = APIRouter(tags=["websocket"])

PATH = "/api/v1/ws/library-updates"
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
CLOSE_TOKEN_EXPIRED = 4401


def _authenticate(websocket: WebSocket) -> tuple[AuthUser, float]:
    key = ctx_of(websocket).secrets.jwt_key
    query_token = websocket.query_params.get("access_token")
    header = websocket.headers.get("authorization")
    if header is None and query_token:
        return decode_access_token_exp(key, query_token)
    return decode_access_token_exp(key, parse_bearer(header))


async def _refuse(websocket: WebSocket, exc: ApiError) -> None:
    """401 with the error envelope when the server supports denial responses, else 1008."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(
            error_body(exc.to_dict()), status_code=exc.status, headers=exc.headers))
    else:
        await websocket.close(code=CLOSE_POLICY, reason=exc.code)


@router.websocket(PATH)
async def library_updates(websocket: WebSocket) -> None:
    try:
        user, expires = _authenticate(websocket)
    except ApiError as exc:
        await _refuse(websocket, exc)
        return
    ctx = ctx_of(websocket)
    # subscribe before accepting: once the client sees the connection open, nothing published
    # afterwards can be missed
    sub = ctx.events.subscribe(user.id)
    try:
        await websocket.accept()
        await websocket.send_json({"event_type": "connection.ready", "payload": {
            "user_id": user.id, "expires_at": iso_ts(expires)}})
        await _pump(websocket, sub, user, expires)
    except WebSocketDisconnect:
        pass
    finally:
        sub.close()


def iso_ts(ts: float) -> str | None:
    from datetime import UTC, datetime

    return iso(datetime.fromtimestamp(ts, UTC))


async def _pump(websocket: WebSocket, sub: Subscription, user: AuthUser, expires: float) -> None:
    state = {"expires": expires}
    reader = asyncio.create_task(_read(websocket, user, state))
    try:
        while True:
            get = asyncio.create_task(sub.queue.get())
            overflow = asyncio.create_task(sub.overflowed.wait())
            timeout = max(0.0, state["expires"] - time.time())
            done, _pending = await asyncio.wait({get, overflow, reader}, timeout=timeout,
                                               return_when=asyncio.FIRST_COMPLETED)
            for t in (get, overflow):
                if t not in done:
                    t.cancel()
            if reader in done:
                reader.result()  # a disconnect ends the connection
                return
            if overflow in done:
                await websocket.close(code=CLOSE_TRY_AGAIN, reason="too far behind; reconnect")
                return
            if get in done:
                await websocket.send_json(get.result())
            elif time.time() >= state["expires"]:
                await websocket.close(code=CLOSE_TOKEN_EXPIRED, reason="access token expired")
                return
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


async def _read(websocket: WebSocket, user: AuthUser, state: dict[str, float]) -> None:
    """Client messages: a fresh token extends the connection; anything else is ignored."""
    key = ctx_of(websocket).secrets.jwt_key
    while True:
        text = await websocket.receive_text()
        try:
            msg: Any = json.loads(text)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if msg.get("action") == "ping":
            await websocket.send_json({"event_type": "pong", "payload": {}})
        elif msg.get("action") == "authenticate":
            try:
                fresh, exp = decode_access_token_exp(key, str(msg.get("access_token", "")))
                if fresh.id != user.id:
                    raise Unauthenticated("token of another user", code="TOKEN_INVALID")
            except ApiError as exc:
                await websocket.send_json({"event_type": "error", "payload": exc.to_dict()})
                continue
            state["expires"] = exp
            await websocket.send_json({"event_type": "connection.ready", "payload": {
                "user_id": user.id, "expires_at": iso_ts(exp)}})
