"""Cloud saves behind presigned-style URLs on the backend's own storage.

Flow: ``POST /savegames/upload-url`` (checks entitlement, size limit → 413, quota → 422 and the
slot's version → 409) returns a one-time ``PUT /savegames/blobs/{token}`` target; the client
uploads the bytes there (no bearer token: the URL is the credential, as with S3); then
``POST /savegames/confirm-upload`` checks size and SHA-256 of what arrived and creates the next
version of the slot. ``GET /savegames?product_id=`` lists slots with their versions, each with a
short-lived signed download URL (``GET /savegames/blobs/{token}``); ``POST
/savegames/{id}/restore`` makes an old version the slot's newest again (no transfer).

Requests accept our field names and the seed's (``save_slot_name``, ``file_size_bytes``,
``file_hash_sha256``, ``s3_path``); responses carry both. A confirmed upload (and a failed one)
is pushed to the user's WebSocket connections as ``savegame.sync.status``.

Storage is local disk under DATA/saves (``LocalSaveStorage``, the embedded default, with the
backend's own blob URLs) or S3-compatible object storage (``backend.objectstore.S3SaveStorage``):
then upload-url answers a presigned PUT straight to storage, download URLs are presigned GETs,
and confirm reads the object back to check size and SHA-256; the backend never carries the
bytes between client and storage.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend import events
from backend.cdn import file_response
from backend.context import Context, CtxDep, UserDep, ctx_of
from backend.db import Savegame, SavegameUpload, utcnow
from backend.errors import (
    ApiError,
    Conflict,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ValidationFailed,
)
from backend.library import require_entitlement
from backend.objectstore import LocalSaveStorage, SaveStorage
from backend.schemas import (
    ConfirmRequest,
    Data,
    PresignedUploadResource,
    RestoreRequest,
    SavegameResource,
    SavegameSlotResource,
    UploadReceiptResource,
    UploadUrlRequest,
    error_responses,
)
from backend.signing import TokenRejected, sign_blob_token, verify_blob_token

router = APIRouter(prefix="/api/v1/library/savegames", tags=["savegames"])

DOWNLOAD_PURPOSE = "save-dl"


class TooLarge(PayloadTooLarge):
    code = "SAVEGAME_FILE_TOO_LARGE"


class VersionConflict(Conflict):
    code = "SAVEGAME_VERSION_CONFLICT"
    product = ""
    slot: str | None = None


class HashMismatch(ApiError):
    status = 422
    code = "FILE_HASH_MISMATCH"
    title = "Uploaded file does not match"

    def __init__(self, detail: str, *, product: str, slot: str) -> None:
        super().__init__(detail)
        self.product, self.slot = product, slot


class QuotaExceeded(ApiError):
    status = 422
    code = "USER_QUOTA_EXCEEDED"
    title = "Save-game quota exceeded"


def storage(ctx: Context) -> SaveStorage:
    return ctx.save_storage


# -- pure rules ----------------------------------------------------------------------------------


def check_base_version(latest: int | None, base: int | None) -> None:
    """A client may write slot version N+1 only if it last synced version N (base 0: the slot
    must be new; base None: the client did not say, so last writer wins as in the seed)."""
    if base is None or (latest or 0) == base:
        return
    have = "no version" if latest is None else f"version {latest}"
    raise VersionConflict(
        f"slot has {have} but the upload is based on "
        f"{'no version' if base == 0 else f'version {base}'}; download and merge first",
        pointer="/data/attributes/base_version")


def storage_key(user_id: str, product: str, save_id: str) -> str:
    """The seed's layout (4.2.3): ``<user_id>/<product_id>/<savegame_id>``."""
    return f"{user_id}/{product}/{save_id}"


# -- helpers -------------------------------------------------------------------------------------


def latest_version(s: Session, user_id: str, product: str, slot: str) -> int | None:
    v = s.scalar(select(func.max(Savegame.version)).where(
        Savegame.user_id == user_id, Savegame.product_id == product, Savegame.slot == slot))
    return int(v) if v is not None else None


def used_bytes(s: Session, user_id: str) -> int:
    return int(s.scalar(select(func.coalesce(func.sum(Savegame.size_bytes), 0))
                        .where(Savegame.user_id == user_id)) or 0)


def download_url(ctx: Context, base: str, save: Savegame) -> tuple[str, datetime]:
    expires = int(time.time()) + ctx.settings.save_url_ttl
    store = storage(ctx)
    if store.presigned:
        return (store.download_url(save.storage_key, ctx.settings.save_url_ttl),
                datetime.fromtimestamp(expires, UTC))
    token = sign_blob_token(ctx.secrets.jwt_key, DOWNLOAD_PURPOSE, save.id, save.user_id, expires)
    return f"{base}/api/v1/library/savegames/blobs/{token}", datetime.fromtimestamp(expires, UTC)


def save_resource(ctx: Context, base: str, save: Savegame) -> dict[str, Any]:
    url, expires = download_url(ctx, base, save)
    return {"type": "savegame", "id": save.id, "attributes": {
        "product_id": save.product_id, "slot": save.slot, "version": save.version,
        "size_bytes": save.size_bytes, "sha256": save.sha256,
        "client_timestamp": save.client_timestamp, "server_timestamp": save.server_timestamp,
        "created_at": save.server_timestamp, "comment": save.comment,
        "download_url": url, "download_url_expires_at": expires,
        "slot_name": save.slot, "s3_path": save.storage_key,
        "file_size_bytes": save.size_bytes, "file_hash_sha256": save.sha256}}


def sync_event(product: str, status: str, *, save: Savegame | None = None,
               slot: str | None = None, error: str | None = None) -> dict[str, Any]:
    """The seed's ``savegame.sync.status`` message; ours adds which slot version it is about."""
    return events.message(events.SAVEGAME_SYNC_STATUS, {
        "product_id": product, "status": status,
        "last_synced_at": save.server_timestamp if save is not None else None,
        "error_message": error,
        "slot": save.slot if save is not None else slot,
        "version": save.version if save is not None else None,
        "savegame_id": save.id if save is not None else None,
        "sha256": save.sha256 if save is not None else None})


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- routes --------------------------------------------------------------------------------------


@router.post("/upload-url", response_model=Data[PresignedUploadResource],
             responses=error_responses(401, 403, 409, 413, 422))
def upload_url(body: Data[UploadUrlRequest], request: Request, ctx: CtxDep,
               user: UserDep) -> dict[str, Any]:
    a = body.data.attributes
    slot, size, sha = a.slot, a.size_bytes, a.sha256
    assert slot is not None and size is not None and sha is not None  # the model's validator
    size_pointer = "/data/attributes/" + ("size_bytes" if a.size_bytes is not None and
                                          a.file_size_bytes is None else "file_size_bytes")
    if size > ctx.settings.save_max_bytes:
        raise TooLarge(f"save is {size} bytes; the limit is {ctx.settings.save_max_bytes}",
                       pointer=size_pointer)
    base = a.base()
    with ctx.db.session() as s:
        require_entitlement(s, user.id, a.product_id, "/data/attributes/product_id")
        latest = latest_version(s, user.id, a.product_id, slot)
        check_base_version(latest, base)
        used = used_bytes(s, user.id)
        if used + size > ctx.settings.save_quota_bytes:
            raise QuotaExceeded(
                f"{used} of {ctx.settings.save_quota_bytes} bytes used; {size} more "
                "do not fit", pointer=size_pointer)
        token = secrets.token_urlsafe(32)
        now = utcnow()
        ttl = ctx.settings.save_url_ttl
        up = SavegameUpload(user_id=user.id, product_id=a.product_id, slot=slot,
                            size_bytes=size, sha256=sha, base_version=base,
                            client_timestamp=a.client_timestamp, comment=a.comment,
                            token_hash=_hash_token(token), status="pending",
                            expires_at=now + timedelta(seconds=ttl), created_at=now)
        s.add(up)
        s.flush()
        key = storage_key(user.id, a.product_id, up.id)
        store = storage(ctx)
        if store.presigned:  # straight to object storage, exactly ``size`` bytes
            target, headers = store.upload_target(key, size, ttl)
        else:
            target = f"{ctx.public_url(request)}/api/v1/library/savegames/blobs/{token}"
            headers = {"Content-Type": "application/octet-stream"}
        doc = {"data": {"type": "presignedUploadUrl", "id": up.id, "attributes": {
            "upload_url": target, "method": "PUT", "headers": headers,
            "expires_in_seconds": ttl, "expires_at": up.expires_at, "internal_save_id": up.id,
            "s3_path": key, "product_id": a.product_id,
            "slot": slot, "base_version": base, "latest_version": latest}}}
    ctx.events.publish(user.id, sync_event(a.product_id, "sync_started", slot=slot))
    return doc


BlobToken = Annotated[str, PathParam(max_length=512)]


@router.put("/blobs/{token}", response_model=Data[UploadReceiptResource],
            responses=error_responses(403, 409, 413))
async def put_blob(token: BlobToken, request: Request) -> dict[str, Any]:
    """Presigned-style upload target: the token in the URL is the credential."""
    ctx = ctx_of(request)
    local = storage(ctx)
    if not isinstance(local, LocalSaveStorage):  # object storage takes the bytes itself
        raise PermissionDenied("uploads go to object storage", code="SAVEGAME_UPLOAD_URL_INVALID")

    def lookup() -> SavegameUpload:
        with ctx.db.session() as s:
            up = s.scalar(select(SavegameUpload).where(
                SavegameUpload.token_hash == _hash_token(token)))
            if up is None or up.expires_at < utcnow():
                raise PermissionDenied("upload URL is invalid or expired",
                                       code="SAVEGAME_UPLOAD_URL_INVALID")
            if up.status == "confirmed":
                raise Conflict("this upload is already confirmed",
                               code="SAVEGAME_UPLOAD_CONFIRMED")
            return up

    up = await anyio.to_thread.run_sync(lookup)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > up.size_bytes:
        raise TooLarge(f"upload is {declared} bytes but {up.size_bytes} were announced")
    path = local.incoming_path(up.id)
    digest = hashlib.sha256()
    size = 0
    fh = await anyio.open_file(path, "wb")
    try:
        async for part in request.stream():
            size += len(part)
            if size > up.size_bytes:
                raise TooLarge(f"upload exceeds the announced {up.size_bytes} bytes")
            digest.update(part)
            await fh.write(part)
    except BaseException:
        await fh.aclose()
        path.unlink(missing_ok=True)
        raise
    await fh.aclose()
    sha = digest.hexdigest()

    def mark() -> None:
        with ctx.db.session() as s:
            row = s.get(SavegameUpload, up.id)
            assert row is not None
            row.uploaded_size, row.uploaded_sha256, row.status = size, sha, "uploaded"

    await anyio.to_thread.run_sync(mark)
    return {"data": {"type": "savegameUploadReceipt", "id": up.id, "attributes": {
        "internal_save_id": up.id, "size_bytes": size, "sha256": sha}}}


@router.post("/confirm-upload", response_model=Data[SavegameResource],
             responses=error_responses(401, 404, 409, 422))
def confirm_upload(body: Data[ConfirmRequest], request: Request, ctx: CtxDep,
                   user: UserDep) -> dict[str, Any]:
    upload_id = body.data.attributes.internal_save_id
    store = storage(ctx)
    try:
        with ctx.db.session() as s:
            save, fresh = _confirm(s, store, ctx, user.id, upload_id,
                                   body.data.attributes.s3_path)
            doc = {"data": save_resource(ctx, ctx.public_url(request), save)}
    except (HashMismatch, VersionConflict) as exc:
        ctx.events.publish(user.id, sync_event(exc.product, "sync_failed", slot=exc.slot,
                                               error=f"{exc.code}: {exc.detail}"))
        raise
    if fresh:  # a retried confirm changes nothing and tells nobody again
        ctx.events.publish(user.id, sync_event(save.product_id, "sync_completed", save=save))
    return doc


def _confirm(s: Session, store: SaveStorage, ctx: Context, user_id: str, upload_id: str,
             s3_path: str | None) -> tuple[Savegame, bool]:
    up = s.scalar(select(SavegameUpload).where(SavegameUpload.id == upload_id,
                                               SavegameUpload.user_id == user_id))
    if up is None:
        raise NotFound(f"upload {upload_id!r} not found", code="SAVEGAME_UPLOAD_NOT_FOUND",
                       pointer="/data/attributes/internal_save_id")
    if s3_path is not None and s3_path != storage_key(user_id, up.product_id, up.id):
        raise ValidationFailed(f"s3_path {s3_path!r} is not this upload's object",
                               pointer="/data/attributes/s3_path")
    if up.status == "confirmed" and up.savegame_id:
        existing = s.get(Savegame, up.savegame_id)
        if existing is not None:
            return existing, False
    key = storage_key(user_id, up.product_id, up.id)
    if store.presigned:  # what storage holds now, read back (the PUT never reached us)
        got = store.uploaded(key)
        if got is not None:
            up.uploaded_size, up.uploaded_sha256, up.status = got[0], got[1], "uploaded"
    if up.status != "uploaded":
        raise Conflict("nothing was uploaded to this URL yet", code="SAVEGAME_NOT_UPLOADED")
    if up.uploaded_size != up.size_bytes or up.uploaded_sha256 != up.sha256:
        store.discard(up.id, key)
        up.status = "pending"
        s.commit()
        raise HashMismatch(
            f"uploaded {up.uploaded_size} bytes with SHA-256 {up.uploaded_sha256}, expected "
            f"{up.size_bytes} bytes with {up.sha256}; upload again",
            product=up.product_id, slot=up.slot)
    latest = latest_version(s, user_id, up.product_id, up.slot)
    try:
        check_base_version(latest, up.base_version)
    except VersionConflict as exc:
        exc.product, exc.slot = up.product_id, up.slot
        raise
    save = Savegame(id=up.id, user_id=user_id, product_id=up.product_id, slot=up.slot,
                    version=(latest or 0) + 1, size_bytes=up.size_bytes, sha256=up.sha256,
                    storage_key=key,
                    client_timestamp=up.client_timestamp, server_timestamp=utcnow(),
                    comment=up.comment)
    s.add(save)
    s.flush()
    store.commit(up.id, save.storage_key)
    up.status, up.savegame_id = "confirmed", save.id
    _prune(s, store, user_id, up.product_id, up.slot, ctx.settings.save_keep_versions)
    return save, True


def _prune(s: Session, store: SaveStorage, user_id: str, product: str, slot: str,
           keep: int) -> None:
    versions = s.scalars(select(Savegame).where(
        Savegame.user_id == user_id, Savegame.product_id == product, Savegame.slot == slot)
        .order_by(Savegame.version.desc())).all()
    for old in versions[keep:]:
        store.delete(old.storage_key)
        s.delete(old)


@router.get("", response_model=Data[list[SavegameSlotResource]],
            responses=error_responses(401, 422))
def list_saves(
    request: Request, ctx: CtxDep, user: UserDep,
    product_id: Annotated[str | None, Query(max_length=128)] = None,
    slot: Annotated[str | None, Query(max_length=255)] = None,
) -> dict[str, Any]:
    with ctx.db.session() as s:
        q = select(Savegame).where(Savegame.user_id == user.id)
        if product_id:
            q = q.where(Savegame.product_id == product_id)
        if slot:
            q = q.where(Savegame.slot == slot)
        rows = s.scalars(q.order_by(Savegame.product_id, Savegame.slot,
                                    Savegame.version.desc())).all()
    base = ctx.public_url(request)
    slots: dict[tuple[str, str], list[Savegame]] = {}
    for r in rows:
        slots.setdefault((r.product_id, r.slot), []).append(r)
    return {"data": [
        {"type": "savegameSlot", "id": f"{p}/{sl}", "attributes": {
            "product_id": p, "slot": sl, "latest_version": versions[0].version,
            "latest_savegame_id": versions[0].id, "latest_sha256": versions[0].sha256,
            "latest_size_bytes": versions[0].size_bytes,
            "latest_created_at": versions[0].server_timestamp, "version_count": len(versions),
            "versions": [save_resource(ctx, base, v) for v in versions]}}
        for (p, sl), versions in slots.items()
    ]}


@router.get("/{savegame_id}", response_model=Data[SavegameResource],
            responses=error_responses(401, 404, 422))
def get_save(savegame_id: Annotated[str, PathParam(max_length=64)], request: Request,
             ctx: CtxDep, user: UserDep) -> dict[str, Any]:
    with ctx.db.session() as s:
        save = s.scalar(select(Savegame).where(Savegame.id == savegame_id,
                                               Savegame.user_id == user.id))
        if save is None:
            raise NotFound(f"save {savegame_id!r} not found", code="SAVEGAME_SLOT_NOT_FOUND",
                           parameter="savegame_id")
    return {"data": save_resource(ctx, ctx.public_url(request), save)}


@router.post("/{savegame_id}/restore", response_model=Data[SavegameResource],
             responses=error_responses(401, 404, 409, 422))
def restore_save(savegame_id: Annotated[str, PathParam(max_length=64)],
                 body: Data[RestoreRequest], request: Request, ctx: CtxDep,
                 user: UserDep) -> dict[str, Any]:
    """Make an old version the slot's newest again: a new version with the same bytes (copied on
    the server), so the versions in between stay recoverable too."""
    store = storage(ctx)
    with ctx.db.session() as s:
        old = s.scalar(select(Savegame).where(Savegame.id == savegame_id,
                                              Savegame.user_id == user.id))
        if old is None:
            raise NotFound(f"save {savegame_id!r} not found", code="SAVEGAME_SLOT_NOT_FOUND",
                           parameter="savegame_id")
        attrs = body.data.attributes
        base = (attrs.base_version or 0) if "base_version" in attrs.model_fields_set else None
        latest = latest_version(s, user.id, old.product_id, old.slot)
        check_base_version(latest, base)
        used = used_bytes(s, user.id)
        if used + old.size_bytes > ctx.settings.save_quota_bytes:
            raise QuotaExceeded(f"{used} of {ctx.settings.save_quota_bytes} bytes used; "
                                f"{old.size_bytes} more do not fit")
        save = Savegame(user_id=user.id, product_id=old.product_id, slot=old.slot,
                        version=(latest or 0) + 1, size_bytes=old.size_bytes, sha256=old.sha256,
                        storage_key="", client_timestamp=old.client_timestamp,
                        server_timestamp=utcnow(), comment=f"restored from version {old.version}")
        s.add(save)
        s.flush()
        save.storage_key = storage_key(user.id, old.product_id, save.id)
        store.copy(old.storage_key, save.storage_key)
        _prune(s, store, user.id, old.product_id, old.slot, ctx.settings.save_keep_versions)
        doc = {"data": save_resource(ctx, ctx.public_url(request), save)}
    ctx.events.publish(user.id, sync_event(save.product_id, "sync_completed", save=save))
    return doc


@router.get("/blobs/{token}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}},
                       **error_responses(403, 404)})
def get_blob(token: BlobToken, request: Request) -> Response:
    """Presigned-style download of one save version (token from ``download_url``)."""
    ctx = ctx_of(request)
    try:
        save_id, user_id = verify_blob_token(ctx.secrets.jwt_key, token, DOWNLOAD_PURPOSE,
                                             time.time())
    except TokenRejected as exc:
        raise PermissionDenied(str(exc), code="SAVEGAME_DOWNLOAD_URL_INVALID") from exc
    with ctx.db.session() as s:
        save = s.scalar(select(Savegame).where(Savegame.id == save_id,
                                               Savegame.user_id == user_id))
    if save is None:
        raise NotFound("save no longer exists", code="SAVEGAME_SLOT_NOT_FOUND")
    local = storage(ctx)
    if not isinstance(local, LocalSaveStorage):
        raise PermissionDenied("downloads come from object storage",
                               code="SAVEGAME_DOWNLOAD_URL_INVALID")
    path = local.open_path(save.storage_key)
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise NotFound("save blob missing", code="SAVEGAME_SLOT_NOT_FOUND") from exc
    return file_response(request, path, st)
