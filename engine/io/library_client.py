"""The seeds' Library Service as the sync agent uses it: playtime sessions, cloud saves
(upload-url → PUT → confirm-upload, versions, restore), achievements, installation events and
the ``/api/v1/ws/library-updates`` channel.

Authenticated calls go through ``BackendClient.call`` (token refresh, error translation); the
save bytes go straight to the presigned URLs the backend hands out (its own blob route here,
an S3-compatible bucket elsewhere) and never carry our bearer token.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from engine.core.errors import EngineError, ErrorCode
from engine.core.savesync import CloudFile
from engine.io.backend_client import BackendClient

if TYPE_CHECKING:  # aiohttp loads when a save moves or the channel opens, not at start
    import aiohttp

LIBRARY = "/api/v1/library"
MAX_SAVE_BYTES = 512 * 1024 * 1024  # a single save file bigger than this is refused here


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass(frozen=True, slots=True)
class CloudVersion:
    savegame_id: str
    version: int
    sha256: str
    size: int
    created_at: str
    download_url: str
    comment: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"savegameId": self.savegame_id, "version": self.version, "sha256": self.sha256,
                "sizeBytes": self.size, "createdAt": self.created_at, "comment": self.comment}


@dataclass(frozen=True, slots=True)
class CloudSlot:
    slot: str
    versions: tuple[CloudVersion, ...]  # newest first

    @property
    def latest(self) -> CloudVersion:
        return self.versions[0]

    def as_cloud_file(self) -> CloudFile:
        return CloudFile(self.latest.sha256, self.latest.size, str(self.latest.version))


def _version(doc: dict[str, Any]) -> CloudVersion:
    a = doc["attributes"]
    return CloudVersion(str(doc["id"]), int(a["version"]), str(a["sha256"]), int(a["size_bytes"]),
                        str(a.get("created_at") or a.get("server_timestamp") or ""),
                        str(a["download_url"]), a.get("comment"))


class LibraryApi:
    def __init__(self, api: BackendClient,
                 http: aiohttp.ClientSession | Callable[[], aiohttp.ClientSession]) -> None:
        """``http``: a session, or what makes it when first needed (the engine's)."""
        self.api = api
        self._http = http

    @property
    def http(self) -> aiohttp.ClientSession:
        if callable(self._http):
            self._http = self._http()
        return self._http

    # -- playtime -----------------------------------------------------------------------------
    async def start_session(self, session_id: str, product_id: str, started_at: float) -> str:
        """The backend's session id for our ``session_id`` (a retry returns the same one)."""
        doc = await self.api.call("POST", f"{LIBRARY}/playtime/sessions/start", json={"data": {
            "type": "playtimeSessionStart", "attributes": {
                "product_id": product_id, "client_session_id": session_id,
                "start_time": iso(started_at)}}})
        return str(doc["data"]["id"])

    async def heartbeat(self, server_id: str, at: float) -> None:
        await self.api.call("POST", f"{LIBRARY}/playtime/sessions/{quote(server_id)}/heartbeat",
                            json={"data": {"type": "playtimeHeartbeat",
                                           "attributes": {"at": iso(at)}}})

    async def end_session(self, server_id: str, ended_at: float) -> dict[str, Any]:
        doc = await self.api.call("POST", f"{LIBRARY}/playtime/sessions/{quote(server_id)}/end",
                                  json={"data": {"type": "playtimeSessionEnd",
                                                 "attributes": {"ended_at": iso(ended_at)}}})
        return dict(doc["data"]["attributes"])

    async def playtime_summary(self) -> dict[str, dict[str, Any]]:
        doc = await self.api.call("GET", f"{LIBRARY}/playtime/summary")
        return {str(r["attributes"]["product_id"]): dict(r["attributes"]) for r in doc["data"]}

    # -- saves --------------------------------------------------------------------------------
    async def save_slots(self, product_id: str) -> dict[str, CloudSlot]:
        doc = await self.api.call("GET", f"{LIBRARY}/savegames", params={"product_id": product_id})
        out = {}
        for r in doc["data"]:
            a = r["attributes"]
            versions = tuple(sorted((_version(v) for v in a["versions"]),
                                    key=lambda v: -v.version))
            if versions:
                out[str(a["slot"])] = CloudSlot(str(a["slot"]), versions)
        return out

    async def upload_save(self, product_id: str, slot: str, data: bytes,
                          base_version: int | None, comment: str | None = None) -> CloudVersion:
        """upload-url → PUT to the presigned URL → confirm-upload. ``base_version`` is the
        version this upload replaces (0: a new slot); the backend refuses with
        ``SAVEGAME_VERSION_CONFLICT`` when the cloud moved on meanwhile."""
        sha = hashlib.sha256(data).hexdigest()
        attrs: dict[str, Any] = {"product_id": product_id, "save_slot_name": slot,
                                 "file_size_bytes": len(data), "file_hash_sha256": sha,
                                 "base_version": base_version or 0}
        if comment:
            attrs["comment"] = comment
        grant = (await self.api.call("POST", f"{LIBRARY}/savegames/upload-url", json={
            "data": {"type": "savegameUploadRequest", "attributes": attrs}}))["data"]["attributes"]
        headers = {str(k): str(v) for k, v in (grant.get("headers") or {}).items()}
        await self._transfer("PUT", str(grant["upload_url"]), data=data, headers=headers)
        doc = await self.api.call("POST", f"{LIBRARY}/savegames/confirm-upload", json={
            "data": {"type": "savegameUploadConfirmation", "attributes": {
                "internal_save_id": grant["internal_save_id"], "s3_path": grant.get("s3_path")}}})
        return _version(doc["data"])

    async def download_save(self, version: CloudVersion) -> bytes:
        data = await self._transfer("GET", version.download_url)
        if hashlib.sha256(data).hexdigest() != version.sha256:
            raise EngineError(ErrorCode.FILE_HASH_MISMATCH,
                              f"save version {version.version} arrived damaged (SHA-256 differs)")
        return data

    async def _transfer(self, method: str, url: str, *, data: bytes | None = None,
                        headers: dict[str, str] | None = None) -> bytes:
        import aiohttp

        try:
            async with self.http.request(method, url, data=data, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=600)) as resp:
                body = bytearray()
                async for piece in resp.content.iter_chunked(1 << 20):
                    body += piece
                    if len(body) > MAX_SAVE_BYTES:
                        break
                if resp.status >= 400:
                    code = {413: ErrorCode.SAVEGAME_FILE_TOO_LARGE,
                            403: ErrorCode.PERMISSION_DENIED}.get(resp.status,
                                                                 ErrorCode.BACKEND_ERROR)
                    raise EngineError(code, f"{method} save storage answered {resp.status}: "
                                      f"{bytes(body[:300]).decode(errors='replace')}")
                if len(body) > MAX_SAVE_BYTES:
                    raise EngineError(ErrorCode.SAVEGAME_FILE_TOO_LARGE,
                                      f"a save larger than {MAX_SAVE_BYTES} bytes")
                return bytes(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(ErrorCode.BACKEND_UNREACHABLE,
                              f"{method} save storage: {exc!r}") from exc

    # -- achievements -------------------------------------------------------------------------
    async def achievements(self, product_id: str) -> list[dict[str, Any]]:
        doc = await self.api.call("GET", f"{LIBRARY}/achievements/status/{quote(product_id)}")
        return [{"achievementId": r["id"], **r["attributes"]} for r in doc["data"]]

    async def unlock(self, product_id: str, achievement_id: str, key: str,
                     at: float) -> dict[str, Any]:
        doc = await self.api.call(
            "POST", f"{LIBRARY}/achievements/{quote(product_id)}/{quote(achievement_id)}/unlock",
            json={"data": {"type": "achievementUnlock", "attributes": {
                "client_unlock_id": key, "unlocked_at": iso(at)}}})
        return dict(doc["data"]["attributes"])

    async def progress(self, product_id: str, achievement_id: str, current: int,
                       at: float) -> dict[str, Any]:
        doc = await self.api.call(
            "POST", f"{LIBRARY}/achievements/{quote(product_id)}/{quote(achievement_id)}/progress",
            json={"data": {"type": "achievementProgress", "attributes": {
                "current": current, "at": iso(at)}}})
        return dict(doc["data"]["attributes"])

    # -- install state ------------------------------------------------------------------------
    async def installation_event(self, product_id: str, event_type: str,
                                 version_id: str | None, at: float) -> None:
        await self.api.call("POST", f"{LIBRARY}/installation-events", json={"data": {
            "type": "installationEvent", "attributes": {
                "product_id": product_id, "event_type": event_type, "version_id": version_id,
                "timestamp": iso(at)}}})

    # -- the live channel ---------------------------------------------------------------------
    async def updates(self) -> AsyncIterator[dict[str, Any]]:
        """Messages of ``/api/v1/ws/library-updates`` until the connection ends."""
        import aiohttp

        url = self.api.base_url.replace("http", "ws", 1) + "/api/v1/ws/library-updates"
        token = await self.api.access_token()
        try:
            async with self.http.ws_connect(url, headers={"Authorization": f"Bearer {token}"},
                                            heartbeat=30) as ws:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        doc = msg.json()
                        if isinstance(doc, dict):
                            yield doc
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(ErrorCode.BACKEND_UNREACHABLE, f"{url}: {exc!r}") from exc
