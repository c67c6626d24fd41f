"""The seeds' Library Service beyond owned games: the wishlist (seed 3.1.4) and family sharing
(seed 1.2), as REST calls on the backend.

Authenticated calls go through ``BackendClient.call`` (token refresh, and the backend's error
codes translated to ``EngineError``: ``GAME_NOT_FOUND_IN_WISHLIST``, ``FAMILY_ACCESS_RESTRICTED``
...). The JSON:API answers become frozen dataclasses here, at the boundary: an answer of another
shape is a ``BACKEND_ERROR`` naming what was missing, never a ``KeyError`` further in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from engine.core.errors import EngineError, ErrorCode
from engine.io.backend_client import BackendClient

WISHLIST = "/api/v1/library/wishlist/items"
FAMILY = "/api/v1/library/family"
PAGE_SIZE = 100  # the backend's largest page
MAX_PAGES = 100  # a wishlist is capped (100 by default); a longer walk is a backend fault

T = TypeVar("T")


def cover_url(base_url: str, product_id: str) -> str:
    """The catalog's public cover route. Wishlist entries and shared games carry no
    ``cover_image_url`` (library items do), so the address is made from the product id; a
    product without art answers 404 and the launcher keeps its placeholder."""
    return f"{base_url}/api/v1/products/{quote(product_id, safe='')}/cover"


@dataclass(frozen=True, slots=True)
class WishlistEntry:
    item_id: str
    product_id: str
    title: str
    priority: int  # 0..1000, higher first
    added_at: str
    cover_image_url: str

    def to_dict(self) -> dict[str, Any]:
        return {"wishlistItemId": self.item_id, "productId": self.product_id,
                "title": self.title, "priority": self.priority, "addedAt": self.added_at,
                "coverImageUrl": self.cover_image_url}


@dataclass(frozen=True, slots=True)
class FamilyMember:
    user_id: str
    username: str
    role: str  # owner | member
    added_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"userId": self.user_id, "username": self.username, "role": self.role,
                "addedAt": self.added_at}


@dataclass(frozen=True, slots=True)
class Family:
    role: str  # owner (shares the library) | member (borrows) | none
    owner_id: str | None
    max_members: int
    members: tuple[FamilyMember, ...]  # the owner first

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "ownerId": self.owner_id, "maxMembers": self.max_members,
                "members": [m.to_dict() for m in self.members]}


@dataclass(frozen=True, slots=True)
class SharedGame:
    """One of the owner's games as a member sees it."""

    product_id: str
    title: str
    owner_id: str
    owner_name: str
    available: bool  # the owner is not playing it now
    borrowed: bool  # it is in the member's library already
    library_item_id: str | None
    cover_image_url: str

    def to_dict(self) -> dict[str, Any]:
        return {"productId": self.product_id, "title": self.title, "ownerId": self.owner_id,
                "ownerName": self.owner_name, "isAvailable": self.available,
                "isBorrowed": self.borrowed, "libraryItemId": self.library_item_id,
                "coverImageUrl": self.cover_image_url}


def _parse(what: str, doc: Any, build: Callable[[Any], T]) -> T:
    """``build(doc)``, or BACKEND_ERROR naming the answer: the backend's shape is foreign."""
    try:
        return build(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EngineError(ErrorCode.BACKEND_ERROR,
                          f"unexpected {what} answer from the backend: {exc!r}") from exc


def _entry(base_url: str, r: dict[str, Any]) -> WishlistEntry:
    a = r["attributes"]
    pid = str(a["product_id"])
    return WishlistEntry(str(r["id"]), pid, str(a.get("title") or pid), int(a["priority"]),
                         str(a.get("added_at") or ""), cover_url(base_url, pid))


def _member(r: dict[str, Any]) -> FamilyMember:
    a = r["attributes"]
    return FamilyMember(str(a["user_id"]), str(a["username"]), str(a["role"]), a.get("added_at"))


def _family(doc: Any) -> Family:
    a = doc["data"]["attributes"]
    return Family(str(a["role"]), a.get("owner_id"), int(a["max_members"]),
                  tuple(_member(m) for m in a["members"]))


def _shared(base_url: str, r: dict[str, Any]) -> SharedGame:
    a = r["attributes"]
    pid = str(a["product_id"])
    return SharedGame(pid, str(a.get("title") or pid), str(a["shared_from_user_id"]),
                      str(a["shared_from_username"]), bool(a["is_available"]),
                      bool(a["is_borrowed"]), a.get("library_item_id"), cover_url(base_url, pid))


class StoreApi:
    def __init__(self, api: BackendClient) -> None:
        self.api = api

    # -- wishlist -----------------------------------------------------------------------------
    async def wishlist(self) -> list[WishlistEntry]:
        """The whole wishlist, priority high → low, then oldest first (the backend's order)."""
        out: list[WishlistEntry] = []
        for page in range(1, MAX_PAGES + 1):
            doc = await self.api.call("GET", WISHLIST, params={"page": page, "limit": PAGE_SIZE})
            rows = _parse("wishlist", doc, lambda d: [_entry(self.api.base_url, r)
                                                      for r in d["data"]])
            out.extend(rows)
            if not rows or not (doc.get("links") or {}).get("next"):
                return out
        raise EngineError(ErrorCode.BACKEND_ERROR, f"the wishlist has more than {MAX_PAGES} pages")

    async def wish(self, product_id: str, priority: int | None) -> WishlistEntry:
        """Add (or, when already there, keep it and set a given priority: the backend's rule)."""
        attrs: dict[str, Any] = {"product_id": product_id}
        if priority is not None:
            attrs["priority"] = priority
        doc = await self.api.call("POST", WISHLIST, json={
            "data": {"type": "wishlistItemCreation", "attributes": attrs}})
        return _parse("wishlist", doc, lambda d: _entry(self.api.base_url, d["data"]))

    async def set_priority(self, product_id: str, priority: int) -> WishlistEntry:
        doc = await self.api.call("PATCH", f"{WISHLIST}/{quote(product_id, safe='')}", json={
            "data": {"type": "wishlistItemUpdate", "attributes": {"priority": priority}}})
        return _parse("wishlist", doc, lambda d: _entry(self.api.base_url, d["data"]))

    async def unwish(self, product_id: str) -> None:
        await self.api.call("DELETE", f"{WISHLIST}/{quote(product_id, safe='')}")

    # -- family sharing -----------------------------------------------------------------------
    async def family(self) -> Family:
        return _parse("family", await self.api.call("GET", FAMILY), _family)

    async def shared_games(self) -> list[SharedGame]:
        doc = await self.api.call("GET", f"{FAMILY}/shared-games")
        return _parse("shared games", doc, lambda d: [_shared(self.api.base_url, r)
                                                      for r in d["data"]])

    async def add_member(self, username: str) -> FamilyMember:
        doc = await self.api.call("POST", f"{FAMILY}/members", json={
            "data": {"type": "familyMemberCreation", "attributes": {"username": username}}})
        return _parse("family member", doc, lambda d: _member(d["data"]))

    async def remove_member(self, user_id: str) -> None:
        await self.api.call("DELETE", f"{FAMILY}/members/{quote(user_id, safe='')}")

    async def borrow(self, product_id: str) -> dict[str, Any]:
        """The member's new library item (the ``library`` command's ``libraryItem`` shape)."""
        doc = await self.api.call("POST", f"{FAMILY}/shared-games/{quote(product_id, safe='')}"
                                  "/borrow")

        def item(d: Any) -> dict[str, Any]:
            attrs = dict(d["data"]["attributes"])
            attrs["itemId"] = str(d["data"]["id"])
            return attrs

        return _parse("borrow", doc, item)
