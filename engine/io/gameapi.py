"""The small local API a running game talks to (loopback only): unlock an achievement, report
progress, ask for a save sync. Each launch gets a token of its own, passed in the game's
environment (``LAUNCHER_API_URL``, ``LAUNCHER_API_TOKEN``); a request without a live token is
refused with 401, so only a game the launcher started can speak for the player.

    POST /v1/achievements/{id}/unlock
    POST /v1/achievements/{id}/progress   {"current": N}
    POST /v1/saves/sync
    GET  /v1/session

Answers are JSON: ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code", "message"}}``.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from engine.core.errors import EngineError, ErrorCode

if TYPE_CHECKING:  # the server part of aiohttp loads when a game first starts (~30 ms)
    from aiohttp import web

Handler = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_BODY = 16 * 1024
ACHIEVEMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
STATUS = {ErrorCode.INVALID_PARAMS: 400, ErrorCode.PERMISSION_DENIED: 403,
          ErrorCode.PRODUCT_NOT_FOUND: 404}


class GameApi:
    """``handle(product_session_token, action, params)`` does the work; this only checks the
    token, the shape of the request, and speaks HTTP."""

    def __init__(self, handle: Handler) -> None:
        self.handle = handle
        self.tokens: dict[str, str] = {}  # token -> the game session it belongs to
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        if self.runner is None:
            from aiohttp import web

            app = web.Application(client_max_size=MAX_BODY)
            app.router.add_post("/v1/achievements/{aid}/unlock", self._route("unlock"))
            app.router.add_post("/v1/achievements/{aid}/progress", self._route("progress"))
            app.router.add_post("/v1/saves/sync", self._route("sync"))
            app.router.add_get("/v1/session", self._route("session"))
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def session_of(self, header: str | None) -> str | None:
        if not header or not header.startswith("Bearer "):
            return None
        given = header[len("Bearer "):].strip()
        for token, session in self.tokens.items():
            if hmac.compare_digest(token, given):
                return session
        return None

    def _route(self, action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def route(request: web.Request) -> web.Response:
            from aiohttp import web
            session = self.session_of(request.headers.get("Authorization"))
            if session is None:
                return _error(401, ErrorCode.UNAUTHENTICATED,
                              "no valid launch token (LAUNCHER_API_TOKEN)")
            params: dict[str, Any] = {}
            if request.can_read_body:
                try:
                    body = json.loads(await request.read() or b"{}")
                except (ValueError, web.HTTPRequestEntityTooLarge):
                    return _error(400, ErrorCode.INVALID_PARAMS, "the body is not JSON")
                if not isinstance(body, dict):
                    return _error(400, ErrorCode.INVALID_PARAMS, "the body must be an object")
                params = body
            if "aid" in request.match_info:
                aid = request.match_info["aid"]
                if not ACHIEVEMENT_ID.match(aid):
                    return _error(400, ErrorCode.INVALID_PARAMS, f"bad achievement id {aid!r}")
                params["achievementId"] = aid
            try:
                result = await self.handle(session, action, params)
            except EngineError as exc:
                return _error(STATUS.get(exc.code, 409 if "CONFLICT" in exc.code else 502),
                              exc.code, exc.message)
            return web.json_response({"ok": True, **result})

        return route


def _error(status: int, code: ErrorCode, message: str) -> web.Response:
    from aiohttp import web

    return web.json_response({"ok": False, "error": {"code": code.value, "message": message}},
                             status=status)
