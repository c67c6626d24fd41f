"""JSON:API helpers: pagination meta/links and timestamps."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

T = TypeVar("T")

MAX_LIMIT = 100


def page_slice(total: int, page: int, limit: int) -> tuple[int, int]:
    start = (page - 1) * limit
    return start, min(total, start + limit)


def paginate(
    items: Sequence[T], page: int, limit: int, path: str, params: dict[str, Any]
) -> tuple[list[T], dict[str, int], dict[str, str | None]]:
    """Pure: the page's items, the seed's ``meta`` and ``links`` (self/first/prev/next/last)."""
    total = len(items)
    pages = max(1, -(-total // limit))
    start, end = page_slice(total, page, limit)
    keep = {k: v for k, v in params.items() if v is not None and k not in ("page", "limit")}

    def link(p: int) -> str:
        return f"{path}?{urlencode({**keep, 'page': p, 'limit': limit})}"

    meta = {"total_items": total, "current_page": page, "per_page": limit, "total_pages": pages}
    links: dict[str, str | None] = {
        "self": link(page),
        "first": link(1),
        "prev": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if page < pages else None,
        "last": link(pages),
    }
    return list(items[start:end]), meta, links


def iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
