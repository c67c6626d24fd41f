"""The engine's backend client against the real backend: token refresh under concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.io.backend_client import BackendClient


async def test_concurrent_requests_share_one_token_refresh(backend: Any) -> None:
    """Refresh tokens rotate and a reused one revokes the session: two requests that both find
    the access token missing (a daemon's update check and a launcher's first request) must not
    both refresh. Found by the launcher's tests, where the player was logged out at start."""
    name, _ = backend.new_user(products=["tiny-tactics"])
    saved: list[str | None] = []
    first = BackendClient(backend.url, save_refresh_token=saved.append)
    await first.login(name, "secret-pw")
    token = first._refresh
    await first.aclose()
    client = BackendClient(backend.url, refresh_token=token, save_refresh_token=saved.append)
    try:
        results = await asyncio.gather(*(client.library() for _ in range(5)))
        assert all(isinstance(r, list) and len(r) == 1 for r in results)
        assert client.logged_in and saved[-1] is not None
        assert len([t for t in saved[1:] if t is not None]) == 1  # exactly one rotation
    finally:
        await client.aclose()
