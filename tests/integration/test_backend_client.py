"""The engine's backend client against the real backend: token refresh under concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.core.errors import EngineError, ErrorCode
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


async def test_update_applied_carries_the_seeds_type_and_status(backend: Any,
                                                              published_store: Any) -> None:
    """``updates/applied`` (seed 3.1.2, flow 14.3): ``updateType`` and the seed's statuses
    reach the backend's update history; a status or type outside the seed's is refused here,
    before anything is sent."""
    name, _ = backend.new_user(products=["star-courier"])
    versions = published_store.product("star-courier").versions
    client = BackendClient(backend.url)
    await client.login(name, "secret-pw")
    try:
        await client.report_update_applied("star-courier", versions[0], versions[1], True,
                                           update_type="delta")
        await client.report_update_applied("star-courier", versions[0], versions[1], False,
                                           "a patch did not apply", update_type="delta",
                                           status="patch_failed")
        await client.report_update_applied("star-courier", versions[0], versions[1], False,
                                           "bad bytes")
        doc = await client.call("GET", "/api/v1/download/updates/history")
        rows = [(r["attributes"]["status"], r["attributes"]["updateType"])
                for r in doc["data"]]
        assert sorted(rows, key=str) == sorted([("success", "delta"), ("patch_failed", "delta"),
                                                ("failed", None)], key=str)
        for bad in ({"status": "broken"}, {"update_type": "partial"}):
            try:
                await client.report_update_applied("star-courier", versions[0], versions[1],
                                                   False, **bad)
            except EngineError as exc:
                assert exc.code == ErrorCode.INVALID_PARAMS
            else:
                raise AssertionError(f"{bad} was sent")
    finally:
        await client.aclose()


async def test_integrity_report_records_a_verification(backend: Any,
                                                       published_store: Any) -> None:
    """``POST /integrity/verify`` (seed 3.1.3): the engine's report after a verify is recorded
    and answers the signed reference of the installed version."""
    name, _ = backend.new_user(products=["star-courier"])
    version = published_store.product("star-courier").versions[0]
    client = BackendClient(backend.url)
    await client.login(name, "secret-pw")
    try:
        doc = await client.report_integrity("star-courier", version)
        a = doc["attributes"]
        assert (a["productId"], a["versionId"], a["status"]) == ("star-courier", version,
                                                                 "completed")
        assert a["fileCount"] > 0 and a["manifest"]["path"].endswith(f"{version}.manifest")
        again = await client.call("GET", f"/api/v1/download/integrity/verify/{doc['id']}")
        assert again["data"]["id"] == doc["id"]
        try:
            await client.report_integrity("star-courier", "no-such-version")
        except EngineError as exc:
            assert exc.code == ErrorCode.VERSION_NOT_FOUND
        else:
            raise AssertionError("an unknown version was accepted")
    finally:
        await client.aclose()
