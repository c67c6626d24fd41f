"""The wishlist and family sharing as the engine's commands use them, and the one rule the
engine enforces itself: a borrowed game does not start while its owner plays it.

The backend is the judge of family access (it refuses a borrowed game's playtime session and
download with ``FAMILY_ACCESS_RESTRICTED`` while the owner has an active session), but a
session start is journaled and sent after the game is already running. So ``launch`` asks
first (``check_family_access``): one small call, and the player hears "the owner is playing"
before anything starts. When the backend cannot be reached the game starts anyway, as every
launch does offline (the backend's later refusal of the session is the agent's to log).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from engine.core.errors import EngineError, ErrorCode
from engine.core.playtime import Verdict, after_failure
from engine.io.backend_client import BackendClient
from engine.io.store_client import SharedGame, StoreApi

log = logging.getLogger(__name__)

ACCESS_CHECK_TIMEOUT_S = 10.0  # a launch does not wait longer on the question


def family_refusal(product_id: str, shared: list[SharedGame]) -> EngineError | None:
    """Pure: the refusal for starting ``product_id`` given the member's shared games, or None
    (not borrowed, or its owner is not playing it)."""
    game = next((g for g in shared if g.product_id == product_id), None)
    if game is None or not game.borrowed or game.available:
        return None
    return EngineError(ErrorCode.FAMILY_ACCESS_RESTRICTED,
                       f"{game.owner_name} is playing {game.title} now; a borrowed game can be "
                       "played while its owner is not playing it: try again when they stop",
                       item=game.owner_name)


class StoreJobs:
    def __init__(self, api: BackendClient, online: Callable[[], bool]) -> None:
        self.store = StoreApi(api)
        self.online = online  # logged in and not (simulated) offline

    # -- wishlist -----------------------------------------------------------------------------
    async def wishlist(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in await self.store.wishlist()]

    async def wish(self, product_id: str, priority: int | None) -> dict[str, Any]:
        return (await self.store.wish(product_id, priority)).to_dict()

    async def set_priority(self, product_id: str, priority: int) -> dict[str, Any]:
        return (await self.store.set_priority(product_id, priority)).to_dict()

    async def unwish(self, product_id: str) -> dict[str, Any]:
        await self.store.unwish(product_id)
        return {"removed": product_id}

    # -- family -------------------------------------------------------------------------------
    async def family(self) -> dict[str, Any]:
        """The family (members, the owner first) and, for a member, the owner's games."""
        family = await self.store.family()
        shared = await self.store.shared_games() if family.role == "member" else []
        return family.to_dict() | {"sharedGames": [g.to_dict() for g in shared]}

    async def add_member(self, username: str) -> dict[str, Any]:
        return (await self.store.add_member(username)).to_dict()

    async def remove_member(self, user_id: str) -> dict[str, Any]:
        await self.store.remove_member(user_id)
        return {"removed": user_id}

    async def borrow(self, product_id: str) -> dict[str, Any]:
        return await self.store.borrow(product_id)

    async def check_family_access(self, product_id: str) -> None:
        """Raise ``FAMILY_ACCESS_RESTRICTED`` when ``product_id`` is borrowed and its owner plays
        it now; unreachable backend (or offline, or logged out): no objection."""
        if not self.online():
            return
        try:
            async with asyncio.timeout(ACCESS_CHECK_TIMEOUT_S):
                shared = await self.store.shared_games()
        except TimeoutError:
            log.warning("family access of %s not checked: the backend did not answer in %.0f s",
                        product_id, ACCESS_CHECK_TIMEOUT_S)
            return
        except EngineError as exc:
            # the question is a courtesy before the backend's own check: a game is never kept
            # from starting because the question failed (offline, or an odd answer)
            level = logging.INFO if after_failure(exc.code, exc.http_status) \
                is Verdict.RETRY_LATER else logging.WARNING
            log.log(level, "family access of %s not checked: %s: %s", product_id, exc.code,
                    exc.message)
            return
        refusal = family_refusal(product_id, shared)
        if refusal is not None:
            raise refusal
