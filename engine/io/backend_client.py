"""The engine's client for the platform backend: auth, library, download tasks.

Foreign errors are translated here: the rest of the engine sees only ``EngineError`` with the
seed's codes. A 401 triggers one token refresh and one retry.

On the engine's own small HTTP/1.1 client (``engine.io.httpclient``): httpx with its transport
(httpcore, h11, anyio) cost ~60-70 ms of every in-process command's start, then aiohttp's
import ~110 ms (issue 13). What httpx did by default is kept: no redirects followed, proxies
from the environment, its CA choice for https (``SSL_CERT_FILE``, ``SSL_CERT_DIR``, else
certifi's), 30 s connect and read timeouts, ``params`` values written as httpx wrote them.
"""

from __future__ import annotations

import asyncio
import base64
import json as jsonlib
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from engine.core.errors import EngineError, ErrorCode
from engine.core.sources import CdnSource
from engine.io.httpclient import HttpClient, HttpError

TokenSaver = Callable[[str | None], None]
AccessSaver = Callable[[str, float], None]  # (access token, expiry as a wall-clock timestamp)
APPLIED_STATUSES = ("success", "verification_failed", "patch_failed", "failed")  # seed 14.3


@dataclass(frozen=True, slots=True)
class TaskGrant:
    """What the backend authorizes for one download: where the manifest is, which CDNs."""

    backend_task_id: str
    product_id: str
    version_id: str
    manifest_path: str
    signature_path: str
    sources: tuple[CdnSource, ...]
    delta_path: str | None = None
    delta_signature_path: str | None = None


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """A manifest's published bytes and signature as the backend gave them (unchecked)."""

    version_id: str
    blob: bytes
    signature: bytes


def _parse_time(text: str | None) -> float:
    if not text:
        return time.time() + 300
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_sources(raw: list[dict[str, Any]]) -> tuple[CdnSource, ...]:
    """The backend lists sources best first; the pool ranks a higher ``priority`` first."""
    return tuple(
        CdnSource(
            id=str(s["id"]), base_url=str(s["baseUrl"]), query=str(s.get("query", "")),
            expires_at=_parse_time(s.get("expiresAt")), priority=len(raw) - i,
        )
        for i, s in enumerate(raw)
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """One backend answer, read whole (the backend's documents are small JSON)."""

    status_code: int
    headers: Mapping[str, str]  # lower-case names
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


def _query_text(value: Any) -> str:
    """A query value as httpx wrote it (``true``/``false``, ``""`` for None)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return "" if value is None else str(value)


def query_pairs(params: Mapping[str, Any] | None) -> list[tuple[str, str]] | None:
    if params is None:
        return None
    return [(k, _query_text(item)) for k, v in params.items()
            for item in (v if isinstance(v, list | tuple) else [v])]


def _error_from(resp: Answer) -> EngineError:
    wire, detail = "", resp.text[:300]
    try:
        err = resp.json()["errors"][0]
        wire = str(err.get("code") or "")
        detail = str(err.get("detail") or err.get("title") or detail)
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    code = ErrorCode.from_wire(wire, ErrorCode.BACKEND_ERROR)
    if code is ErrorCode.BACKEND_ERROR and wire and wire != code.value:
        detail = f"{wire}: {detail}"  # a backend code the engine has no meaning for
    if resp.status_code == 404 and code is ErrorCode.BACKEND_ERROR:
        code = ErrorCode.PRODUCT_NOT_FOUND
    if resp.status_code == 429:
        code = ErrorCode.RATE_LIMITED
        detail = f"{detail} (retry after {resp.headers.get('retry-after', '?')} s)"
    return EngineError(code, f"backend answered {resp.status_code}: {detail}",
                       http_status=resp.status_code)


def _tls_for(base_url: str) -> ssl.SSLContext | bool:
    """TLS verification for the client of ``base_url``. Loading a CA bundle costs 20-40 ms; a
    plain-http backend never needs one, so it gets a context that verifies but trusts no CA:
    never used, and failing closed if it were (requests are relative to the base URL and
    redirects are not followed). True: verified as httpx verified (``_verified_context``)."""
    if base_url.lower().startswith("http://"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname: on
    return True


def _verified_context() -> ssl.SSLContext:
    """The CAs httpx trusted by default (this client used httpx before): ``SSL_CERT_FILE``,
    else ``SSL_CERT_DIR``, else certifi's bundle."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _tls_context(base_url: str) -> ssl.SSLContext:
    tls = _tls_for(base_url)
    return tls if isinstance(tls, ssl.SSLContext) else _verified_context()


class BackendClient:
    def __init__(self, base_url: str, *, refresh_token: str | None = None,
                 save_refresh_token: TokenSaver | None = None,
                 access_token: tuple[str, float] | None = None,
                 save_access_token: AccessSaver | None = None, timeout: float = 30.0) -> None:
        """``access_token``: a stored (token, wall-clock expiry) still good, used before any
        refresh (a 401 drops it); ``save_access_token`` keeps each new one."""
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._http: HttpClient | None = None  # made at the first request
        self._closed = False
        self._access: str | None = None
        self._refresh_lock: asyncio.Lock | None = None  # made on the loop that first needs it
        self._access_expires = 0.0
        self._refresh = refresh_token
        self._save = save_refresh_token
        self._save_access = save_access_token
        if access_token is not None and refresh_token is not None:
            self._access = access_token[0]
            self._access_expires = time.monotonic() + (access_token[1] - time.time())
        # this engine's device id (remote downloads): a task it creates for itself carries it,
        # so no other engine of the player takes it; None for clients that run nothing
        self.device_id: str | None = None

    async def aclose(self) -> None:
        self._closed = True
        if self._http is not None:
            await self._http.aclose()

    @property
    def logged_in(self) -> bool:
        return self._refresh is not None or self._access is not None

    # -- transport ----------------------------------------------------------------------------
    def _session(self) -> HttpClient:
        if self._closed:
            raise RuntimeError("the backend client has been closed")
        if self._http is None:
            base = self.base_url
            # made only when a TLS connection is (a plain-http backend never loads a CA bundle)
            self._http = HttpClient(connect_timeout=self._timeout, read_timeout=self._timeout,
                                    tls=lambda: _tls_context(base))
        return self._http

    async def _request(self, method: str, path: str, *, json: Any = None,
                       params: Mapping[str, Any] | None = None,
                       headers: Mapping[str, str] | None = None,
                       limit: int | None = None) -> Answer:
        url = self.base_url + path
        pairs = query_pairs(params)
        if pairs:
            url += ("&" if "?" in url else "?") + urlencode(pairs)
        send = dict(headers or {})
        body = None
        if json is not None:
            body = jsonlib.dumps(json).encode("utf-8")
            send["Content-Type"] = "application/json"
        resp = await self._session().request(method, url, body=body, headers=send)
        content = await resp.read(limit)
        return Answer(resp.status, resp.head.headers, content)

    async def _send(self, method: str, path: str, *, auth: bool = True,
                    json: Any = None, params: dict[str, Any] | None = None,
                    limit: int | None = None) -> Answer:
        try:
            headers = {}
            if auth:
                headers["Authorization"] = f"Bearer {await self._token()}"
            return await self._request(method, path, json=json, params=params, headers=headers,
                                       limit=limit)
        except (HttpError, TimeoutError) as exc:
            raise EngineError(ErrorCode.BACKEND_UNREACHABLE,
                              f"{method} {self.base_url}{path}: {exc!r}") from exc

    async def _answer(self, method: str, path: str, *, json: Any = None,
                      params: dict[str, Any] | None = None, auth: bool = True,
                      limit: int | None = None) -> Answer:
        """A successful answer (an expired access token refreshed once), else its error."""
        resp = await self._send(method, path, json=json, params=params, auth=auth, limit=limit)
        if resp.status_code == 401 and auth and self._refresh is not None:
            self._access = None
            resp = await self._send(method, path, json=json, params=params, auth=auth,
                                    limit=limit)
        if resp.status_code >= 400:
            raise _error_from(resp)
        return resp

    async def call(self, method: str, path: str, *, json: Any = None,
                   params: dict[str, Any] | None = None, auth: bool = True) -> Any:
        resp = await self._answer(method, path, json=json, params=params, auth=auth)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise EngineError(ErrorCode.BACKEND_ERROR, f"{path}: answer is not JSON") from exc

    # -- auth ---------------------------------------------------------------------------------
    async def login(self, username: str, password: str) -> None:
        doc = await self.call("POST", "/api/v1/auth/token", auth=False,
                              json={"username": username, "password": password})
        self._take_tokens(doc)

    async def logout(self) -> None:
        if self._refresh is not None:
            try:
                await self.call("POST", "/api/v1/auth/revoke", auth=False,
                                json={"refreshToken": self._refresh})
            finally:
                self._set_refresh(None)
                self._access = None

    def _take_tokens(self, doc: Any) -> None:
        attrs = doc["data"]["attributes"]
        access = str(attrs["accessToken"])
        lifetime = float(attrs.get("expiresIn", 300)) - 30
        self._access = access
        self._access_expires = time.monotonic() + lifetime
        if attrs.get("refreshToken"):
            self._set_refresh(str(attrs["refreshToken"]))
        if self._save_access is not None and self._refresh is not None:
            self._save_access(access, time.time() + lifetime)

    def _set_refresh(self, token: str | None) -> None:
        self._refresh = token
        if self._save is not None:
            self._save(token)

    async def access_token(self) -> str:
        """A valid access token (refreshed when due), for channels that authenticate once."""
        try:
            return await self._token()
        except (HttpError, TimeoutError) as exc:
            raise EngineError(ErrorCode.BACKEND_UNREACHABLE,
                              f"refreshing the session at {self.base_url}: {exc!r}") from exc

    async def _token(self) -> str:
        if self._access is not None and time.monotonic() < self._access_expires:
            return self._access
        # one refresh at a time: refresh tokens rotate, and the backend treats a second use of
        # the same token as theft (the whole session is revoked); concurrent callers (the
        # daemon's update check and a launcher's first request) wait for the first refresh
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        async with self._refresh_lock:
            if self._access is not None and time.monotonic() < self._access_expires:
                return self._access
            return await self._refresh_access()

    async def _refresh_access(self) -> str:
        if self._refresh is None:
            raise EngineError(ErrorCode.AUTH_REQUIRED, "not logged in: run `launcher-engine login`")
        resp = await self._request("POST", "/api/v1/auth/refresh",
                                   json={"refreshToken": self._refresh})
        if resp.status_code in (400, 401, 403):
            self._set_refresh(None)
            raise EngineError(ErrorCode.AUTH_REQUIRED, "session expired: run `launcher-engine login` again")
        if resp.status_code >= 400:
            raise _error_from(resp)
        self._take_tokens(resp.json())
        assert self._access is not None
        return self._access

    # -- platform calls -----------------------------------------------------------------------
    async def library(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            doc = await self.call("GET", "/api/v1/library/items",
                                  params={"page": page, "limit": 100})
            items.extend(doc.get("data", []))
            if not doc.get("links", {}).get("next") or not doc.get("data"):
                return items
            page += 1

    async def categories(self) -> list[dict[str, Any]]:
        doc = await self.call("GET", "/api/v1/library/categories", params={"limit": 100})
        return [{"categoryId": d["id"], **d["attributes"]} for d in doc.get("data", [])]

    async def create_category(self, name: str) -> dict[str, Any]:
        doc = await self.call("POST", "/api/v1/library/categories", json={
            "data": {"type": "userCategoryCreate", "attributes": {"name": name}}})
        return {"categoryId": doc["data"]["id"], **doc["data"]["attributes"]}

    async def delete_category(self, category_id: str) -> None:
        await self.call("DELETE", f"/api/v1/library/categories/{category_id}")

    async def update_item(self, item_id: str, *, category_ids: list[str] | None = None,
                          hidden: bool | None = None) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if category_ids is not None:
            attrs["category_ids"] = category_ids
        if hidden is not None:
            attrs["is_hidden"] = hidden
        doc = await self.call("PATCH", f"/api/v1/library/items/{item_id}", json={
            "data": {"type": "libraryItemUpdate", "attributes": attrs}})
        return dict(doc["data"]["attributes"])

    async def manifest_key(self) -> str:
        doc = await self.call("GET", "/api/v1/download/manifest-key")
        return str(doc["data"]["attributes"]["publicKey"])

    async def create_task(self, product_id: str, version_id: str | None, target_path: str,
                          priority: int = 0) -> TaskGrant:
        attrs: dict[str, Any] = {"productId": product_id, "targetPath": target_path,
                                 "priority": priority}
        if version_id:
            attrs["versionId"] = version_id
        if self.device_id:
            attrs["deviceId"] = self.device_id
        doc = await self.call("POST", "/api/v1/download/tasks",
                              json={"data": {"type": "downloadTaskRequest", "attributes": attrs}})
        return self._grant(doc)

    async def signed_manifest(self, product_id: str, version_id: str | None,
                              limit: int) -> SignedManifest:
        """A version's signed manifest straight from the backend (the latest without
        ``version_id``), at most ``limit`` bytes; what it says is checked by the caller. Its
        binary form is asked for (a few ms to decode, where the JSON takes tens); a backend
        that has none, or knows no such form, answers the JSON one: the decoder takes either."""
        params = {"form": "binary", **({"versionId": version_id} if version_id else {})}
        resp = await self._answer("GET", f"/api/v1/download/manifests/{quote(product_id, safe='')}",
                                  params=params, limit=limit)
        version = resp.headers.get("x-manifest-version", "")
        try:
            signature = base64.b64decode(resp.headers.get("x-manifest-signature", ""),
                                         validate=True)
        except ValueError as exc:
            raise EngineError(ErrorCode.BACKEND_ERROR, "manifest signature header is not "
                              "base64") from exc
        if not version or len(signature) != 64:
            raise EngineError(ErrorCode.BACKEND_ERROR,
                              "manifest answer without its version or a 64-byte signature")
        return SignedManifest(version, resp.content, signature)

    # -- remote downloads ---------------------------------------------------------------------
    async def create_remote_task(self, product_id: str, version_id: str | None = None, *,
                                 target_device: str | None = None,
                                 priority: int = 0) -> dict[str, Any]:
        """Queue a download for another device of the player (``target_device``, or whichever
        of the player's engines is running): the backend announces it and that engine runs it.
        Returns the ``downloadTask`` resource."""
        attrs: dict[str, Any] = {"productId": product_id, "targetPath": product_id,
                                 "priority": priority}
        if version_id:
            attrs["versionId"] = version_id
        if target_device:
            attrs["targetDeviceId"] = target_device
        doc = await self.call("POST", "/api/v1/download/tasks",
                              json={"data": {"type": "downloadTaskRequest", "attributes": attrs}})
        return dict(doc["data"])

    async def claim_task(self, backend_task_id: str, device_id: str) -> dict[str, Any]:
        """Take a remote download to run it here; 409 when another device took it (or it is
        no longer waiting). Returns the claimed ``downloadTask`` resource: its status and
        deviceId say whether it is this device's to run (``engine.core.remote.claimed``)."""
        doc = await self.call("POST", f"/api/v1/download/tasks/{backend_task_id}/claim",
                              json={"data": {"type": "downloadTaskClaim",
                                             "attributes": {"deviceId": device_id}}})
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, dict):
            raise EngineError(ErrorCode.BACKEND_ERROR,
                              f"claim of {backend_task_id}: the backend answered no task")
        return dict(data)

    async def task_grant(self, backend_task_id: str) -> TaskGrant:
        """The grant of a task that exists already (a remote download bound here, a local task
        run again): fresh signed sources, no new backend task."""
        doc = await self.call("POST", f"/api/v1/download/tasks/{backend_task_id}/cdn-tokens")
        return self._grant(doc)

    async def get_task(self, backend_task_id: str) -> dict[str, Any]:
        doc = await self.call("GET", f"/api/v1/download/tasks/{backend_task_id}")
        return dict(doc["data"])

    async def task_queue(self) -> list[dict[str, Any]]:
        """The player's active backend tasks in queue order (``GET /tasks/queue``)."""
        doc = await self.call("GET", "/api/v1/download/tasks/queue")
        return [dict(d) for d in doc.get("data", [])]

    async def pause_task(self, backend_task_id: str) -> dict[str, Any]:
        doc = await self.call("POST", f"/api/v1/download/tasks/{backend_task_id}/pause")
        return dict(doc["data"])

    async def resume_task(self, backend_task_id: str) -> dict[str, Any]:
        doc = await self.call("POST", f"/api/v1/download/tasks/{backend_task_id}/resume")
        return dict(doc["data"])

    async def cancel_task(self, backend_task_id: str) -> None:
        await self.call("DELETE", f"/api/v1/download/tasks/{backend_task_id}")

    async def reorder_tasks(self, order: list[tuple[str, int]]) -> None:
        await self.call("POST", "/api/v1/download/tasks/queue/reorder",
                        json={"data": [{"taskId": t, "order": o} for t, o in order]})

    async def initiate_update(self, product_id: str, from_version: str,
                              target_version: str | None) -> TaskGrant:
        attrs: dict[str, Any] = {"productId": product_id, "currentVersionId": from_version}
        if target_version:
            attrs["targetVersionId"] = target_version
        if self.device_id:
            attrs["deviceId"] = self.device_id
        doc = await self.call("POST", "/api/v1/download/updates/initiate",
                              json={"data": {"type": "updateInitiateRequest", "attributes": attrs}})
        return self._grant(doc)

    @staticmethod
    def _grant(doc: Any) -> TaskGrant:
        try:
            data = doc["data"]
            a = data["attributes"]
            delta = a.get("delta") or {}
            return TaskGrant(
                backend_task_id=str(data["id"]), product_id=str(a["productId"]),
                version_id=str(a["versionId"]), manifest_path=str(a["manifest"]["path"]),
                signature_path=str(a["manifest"]["signaturePath"]),
                sources=parse_sources(a["cdnSources"]),
                delta_path=delta.get("path"), delta_signature_path=delta.get("signaturePath"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(ErrorCode.BACKEND_ERROR, f"unexpected download task answer: {exc!r}") from exc

    async def refresh_sources(self, backend_task_id: str) -> tuple[CdnSource, ...]:
        doc = await self.call("POST", f"/api/v1/download/tasks/{backend_task_id}/cdn-tokens")
        try:
            return parse_sources(doc["data"]["attributes"]["cdnSources"])
        except (KeyError, TypeError) as exc:
            raise EngineError(ErrorCode.CDN_LINK_GENERATION_FAILED, f"bad token answer: {exc!r}") from exc

    async def report_status(self, backend_task_id: str, status: str, downloaded: int,
                            error: EngineError | None = None,
                            items: list[dict[str, Any]] | None = None) -> None:
        """``items``: files that moved since the last report (``ItemNote.to_wire``), sent on
        to the progress channel as ``downloadItemProgressUpdate``."""
        attrs: dict[str, Any] = {"status": status, "downloadedBytes": downloaded}
        if self.device_id:  # the backend takes a task's reports only from the device running it
            attrs["deviceId"] = self.device_id
        if error is not None:
            attrs["errorCode"] = error.code
            attrs["errorMessage"] = error.message
        if items:
            attrs["items"] = items
        await self.call("POST", f"/api/v1/download/tasks/{backend_task_id}/status",
                        json={"data": {"type": "downloadTaskStatus", "attributes": attrs}})

    async def check_updates(self, installed: list[tuple[str, str]]) -> list[dict[str, Any]]:
        body = {"data": [{"type": "installedProduct",
                          "attributes": {"productId": p, "currentVersionId": v}}
                         for p, v in installed]}
        doc = await self.call("POST", "/api/v1/download/updates/check", json=body)
        return [d["attributes"] for d in doc.get("data", [])]

    async def report_update_applied(self, product_id: str, from_version: str, to_version: str,
                                    success: bool, error: str | None = None,
                                    task_id: str | None = None, *,
                                    update_type: str | None = None,
                                    status: str | None = None) -> None:
        """``updates/applied`` (seed 3.1.2, flow 14.3): ``update_type`` "delta" or "full";
        ``status`` one of the seed's "success", "verification_failed", "patch_failed",
        "failed" (default: "success" or "failed" from ``success``)."""
        if status is not None and status not in APPLIED_STATUSES:
            raise EngineError(ErrorCode.INVALID_PARAMS, f"update status {status!r} is not one of "
                              f"{', '.join(APPLIED_STATUSES)}")
        if update_type is not None and update_type not in ("delta", "full"):
            raise EngineError(ErrorCode.INVALID_PARAMS,
                              f"update type {update_type!r} is not delta or full")
        attrs: dict[str, Any] = {"productId": product_id, "fromVersionId": from_version,
                                 "versionId": to_version,
                                 "status": status or ("success" if success else "failed")}
        if update_type:
            attrs["updateType"] = update_type
        if error:
            attrs["detail"] = error[:4000]
        if task_id:
            attrs["taskId"] = task_id
        await self.call("POST", "/api/v1/download/updates/applied",
                        json={"data": {"type": "updateApplied", "attributes": attrs}})

    async def report_integrity(self, product_id: str, installed_version: str) -> dict[str, Any]:
        """``POST /integrity/verify`` (seed 3.1.3) after a local verify or repair: the backend
        records the check and answers the signed reference (manifest, file count, size)."""
        doc = await self.call("POST", "/api/v1/download/integrity/verify", json={"data": {
            "type": "integrityVerificationRequest",
            "attributes": {"productId": product_id, "installedVersionId": installed_version}}})
        return dict(doc["data"])
