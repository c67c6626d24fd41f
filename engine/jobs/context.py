"""What every run shares: the engine context, the backend grant, the CDN path for small
documents (manifests, signatures, delta indexes, patches), the pinned manifest key, the
disk-space check.

(Moved from the install run so updates compose it instead of inheriting it.)

grant (backend) → signed manifest (CDN, verified with the pinned key) → plan → disk check →
preallocated staging files → parallel range download, per-chunk BLAKE3, pwrite → batched fsync
+ journal → per-file SHA-256 → atomic renames into the install folder → installed record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.core.errors import EngineError, ErrorCode
from engine.core.fetchrules import Failure, FetchState, GiveUp, after_failure
from engine.core.retry import RetryPolicy
from engine.core.sources import CdnSource, FailureKind, SourcePool
from engine.io.backend_client import BackendClient, TaskGrant
from engine.io.bus import EventBus
from engine.io.config import Settings
from engine.io.fsops import atomic_write, translate_os_error
from engine.io.httpclient import HttpClient, HttpError
from engine.io.limiter import AsyncRateLimiter
from engine.io.state import State, TaskRecord
from patcher.errors import ManifestError

if TYPE_CHECKING:
    import aiohttp

    from patcher.deltaindex import ManifestPatch
    from patcher.manifest import Manifest
    from patcher.sigcheck import PublicKey

# What runs only once a grant is in (the manifest's fetch, signature and decode; a manifest
# patch) is imported where it is used: an install imports it on the loop, between the I/O of
# its grant (``engine.jobs.install.import_pipeline``), off the way to the first byte.

log = logging.getLogger(__name__)

MANIFEST_MAX_BYTES = 256 * 1024 * 1024


@dataclass(slots=True)
class EngineContext:
    settings: Settings
    state: State
    api: BackendClient
    bus: EventBus
    limiter: AsyncRateLimiter
    # the general range client's aiohttp session, made (and aiohttp imported) when first used
    session_factory: Callable[[], aiohttp.ClientSession]
    http: HttpClient  # small documents (manifests, signatures, patches)
    executor: ThreadPoolExecutor
    # task id -> what a run prepared (grant, sources, manifest, full plan, the write of a
    # manifest's copy taken from the backend), kept by the engine
    # while the task is paused or queued, so a resumed run re-plans nothing
    prepared: dict[str, Any] = field(default_factory=dict)


def free_space(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    st = os.statvfs(probe)  # shutil.disk_usage's sum, without importing shutil at start
    return st.f_bavail * st.f_frsize


def check_disk_space(settings: Settings, install_dir: Path, needed: int) -> None:
    free = free_space(install_dir)
    if needed + settings.keep_free_bytes > free:
        raise EngineError(
            ErrorCode.INSUFFICIENT_DISK_SPACE,
            f"needs {needed / 1e6:.1f} MB (+{settings.keep_free_bytes / 1e6:.0f} MB kept free), "
            f"{free / 1e6:.1f} MB free at {install_dir}",
        )


SourceRefresh = Callable[[], Awaitable[tuple[CdnSource, ...]]]


SMALL_TOTAL_S = 60  # a whole small document, however it trickles


async def _get_small(ctx: EngineContext, source: CdnSource, rel: str, limit: int) -> bytes:
    """One GET of a small document (each read waits at most the stall timeout)."""
    from engine.io.rangeclient import FetchFailed  # not engine.io.download: that loads aiohttp

    try:
        async with asyncio.timeout(SMALL_TOTAL_S):
            resp = await ctx.http.request("GET", source.url(rel))
            try:
                if resp.status == 403:
                    raise FetchFailed(FailureKind.FORBIDDEN, f"{source.id}: HTTP 403 for {rel}")
                if resp.status != 200:
                    raise FetchFailed(FailureKind.HTTP_5XX,
                                      f"{source.id}: HTTP {resp.status} for {rel}",
                                      out_of_range=resp.status == 416)
                length = resp.content_length
                if (length or 0) > limit:
                    raise EngineError(ErrorCode.MANIFEST_TOO_LARGE,
                                      f"{rel}: {length} bytes (limit {limit})", item=rel)
                return await resp.read(limit, lambda n: EngineError(
                    ErrorCode.MANIFEST_TOO_LARGE, f"{rel}: over {n} bytes", item=rel))
            finally:
                resp.close()  # unread (refused): not reused
    except TimeoutError as exc:
        raise FetchFailed(FailureKind.STALL, f"{source.id}: {rel} stalled") from exc
    except HttpError as exc:
        raise FetchFailed(FailureKind.RESET, f"{source.id}: {rel}: {exc!r}") from exc


async def fetch_small(ctx: EngineContext, pool: SourcePool, rel: str, limit: int, *,
                      check: Callable[[bytes], None] | None = None,
                      refresh: SourceRefresh | None = None,
                      attempts: int | None = None) -> bytes:
    """GET a small document (manifest, signature, delta index, patch) from the best source.

    The same failure rules as pack ranges: every failure is recorded against its source, the
    next try prefers another source after a capped, jittered backoff, a 403 refreshes the signed
    tokens once per failure, and ``check`` (e.g. a hash or signature test) failing counts as
    corrupt bytes from that source — another source is tried before the document is called bad.
    ``attempts`` caps the tries for an optional document the caller can do without (a missing
    format-2 delta index, a manifest patch): no long backoff before the fallback.
    """
    from engine.io.rangeclient import FetchFailed

    policy = RetryPolicy(max_attempts=attempts or ctx.settings.max_attempts)
    state = FetchState()
    sources = frozenset(s.id for s in pool.sources)
    while True:
        source = pool.pick(time.time(), state.exclude)
        started = time.monotonic()
        try:
            data = await _get_small(ctx, source, rel, limit)
            if check is not None:
                check(data)
        except FetchFailed as exc:
            failure = exc.failure(source.id, rel)
        except (ManifestError, EngineError) as exc:  # arrived, but failed its check
            if isinstance(exc, EngineError) and exc.code == ErrorCode.MANIFEST_TOO_LARGE:
                raise
            code, message, item = (
                (ErrorCode.from_wire(exc.code, ErrorCode.MANIFEST_INVALID), exc.message, exc.field)
                if isinstance(exc, ManifestError) else (exc.code, exc.message, exc.item))
            failure = Failure(source.id, FailureKind.CORRUPT, message, code=code, item=item)
        else:
            pool.record_success(source.id, len(data), time.monotonic() - started, time.time())
            return data
        pool.record_failure(source.id, failure.kind, time.time())
        import random  # a failed fetch only: not an import on every start

        step = after_failure(state, failure, sources, policy, random.random(), rel)
        if isinstance(step, GiveUp):
            raise EngineError(step.code, step.message, item=step.item)
        log.warning("fetch %s: try %d failed: %s", rel, step.state.attempt, failure.detail)
        if step.refresh_tokens and refresh is not None:
            pool.replace_tokens(list(await refresh()))
        await asyncio.sleep(step.delay_s)
        state = step.state


async def manifest_key(ctx: EngineContext) -> str:
    """The backend's manifest key, pinned on first use per backend URL."""
    meta_key = f"manifest_key:{ctx.api.base_url}"
    pinned = ctx.state.get_meta(meta_key)
    if pinned is None:
        pinned = await ctx.api.manifest_key()
        ctx.state.set_meta(meta_key, pinned)
    return pinned


@dataclass(frozen=True, slots=True)
class ManifestBase:
    """The installed version's signed manifest bytes and the signed delta index's patch from
    them to the new manifest: lets an update fetch a small patch instead of the new manifest."""

    old_blob: bytes
    patch: ManifestPatch


@dataclass(frozen=True, slots=True)
class EarlyManifest:
    """A new task's manifest asked of the backend beside its grant (``early_manifest``), its
    signature checked with the pinned key and decoded while the grant was being made."""

    version_id: str
    blob: bytes
    signature: bytes
    manifest: Manifest


def wants_early_manifest(ctx: EngineContext, product_id: str, version_id: str | None) -> bool:
    """Whether an install should ask the backend for its manifest beside the grant: not when
    the engine holds that version's manifest (a task without a version asks: the grant names
    the version, after the time this saves)."""
    return version_id is None or ctx.state.cached_manifest_files(product_id, version_id) is None


async def early_manifest(ctx: EngineContext, product_id: str, version_id: str | None,
                         key: Awaitable[str], ready: Awaitable[None] | None) -> EarlyManifest | None:
    """The manifest of a new task from the backend, checked against the pinned key (``key``)
    and decoded (after ``ready``, the pipeline's imports), all while the grant is made: the
    grant's round trip and the CDN's two (signature, manifest) no longer come before the
    decode. None, logged, when the backend cannot give it (an older backend says 404) or it
    fails its check or decode: the install then fetches it from the CDN as ever, and the CDN's
    copy is the one whose failure is reported."""
    from patcher.manifest import decode_manifest
    from patcher.signing import load_public_key, verify_signature

    try:
        got = await ctx.api.signed_manifest(product_id, version_id, MANIFEST_MAX_BYTES)
        public = load_public_key(await key)
        if ready is not None:
            await ready

        def check_and_decode() -> Manifest:
            verify_signature(got.blob, got.signature, public)
            return decode_manifest(got.blob)

        # whose product and version it is, signed and said, is judged beside the grant's
        # (``early_for``), the one place that takes it
        manifest = await asyncio.to_thread(check_and_decode)
    except (EngineError, ManifestError) as exc:
        quiet = isinstance(exc, EngineError) and exc.http_status == 404
        (log.debug if quiet else log.warning)(
            "manifest of %s from the backend not taken (%s): fetching it from the CDN",
            product_id, exc.message)
        return None
    return EarlyManifest(got.version_id, got.blob, got.signature, manifest)


def early_for(early: EarlyManifest | None, grant: TaskGrant) -> EarlyManifest | None:
    """``early`` when it is the manifest the grant names, else None (logged: the version a
    task without one asked for changed between the two answers)."""
    if early is None:
        return None
    signed = (early.manifest.product_id, early.manifest.version_id)  # what the key vouched for
    if signed == (grant.product_id, grant.version_id) == (grant.product_id, early.version_id):
        return early
    log.info("manifest from the backend is of %s, the grant of %s: fetching the grant's",
             early.version_id, grant.version_id)
    return None


async def cache_early_manifest(ctx: EngineContext, early: EarlyManifest) -> None:
    """Keep a manifest taken from the backend as a fetched one is kept (the engine's own copy,
    read again by a resumed run, verify, repair, updates and uninstall): on a thread, beside
    the run's staging and download, not before its first byte. A copy already there is
    replaced unless it holds these very bytes: a task without a version asks the backend even
    when one is cached, and that one was not checked (it may be damaged)."""
    from patcher.manifest import is_binary_manifest

    blob_path, sig_path = ctx.state.manifest_files(early.manifest.product_id, early.version_id,
                                                   binary=is_binary_manifest(early.blob))

    def keep() -> None:
        with contextlib.suppress(OSError):
            if blob_path.stat().st_size == len(early.blob) \
                    and sig_path.read_bytes() == early.signature \
                    and blob_path.read_bytes() == early.blob:
                return
        try:
            _cache_manifest(blob_path, sig_path, early.blob, early.signature)
        except OSError as exc:
            raise translate_os_error(exc, f"keeping the manifest in {blob_path.parent}") from exc

    await asyncio.to_thread(keep)


async def cache_manifest_again(ctx: EngineContext, pool: SourcePool, grant: TaskGrant) -> None:
    """The engine's copy of a grant's manifest kept afresh (the CDN's, checked as ever), for a
    run resumed after the write of the backend's copy failed: its error now, not a stale one."""
    await load_manifest(ctx, pool, grant)


async def load_manifest(ctx: EngineContext, pool: SourcePool, grant: TaskGrant, *,
                        base: ManifestBase | None = None) -> Manifest:
    """The signed manifest of a grant: from the local cache, else from the CDN. The signature is
    fetched first (64 bytes); with a ``base``, the manifest is rebuilt from the installed one and
    a patch, and the new signature is checked over the rebuilt bytes; any failure there falls
    back to the full manifest, whose bytes are checked against the signature as they arrive, so
    a flipped byte on one edge makes the engine fetch from another instead of failing."""
    from patcher.manifest import decode_manifest
    from patcher.signing import load_public_key, verify_signature

    kept = ctx.state.cached_manifest_files(grant.product_id, grant.version_id)
    # a manifest fetched here is the CDN's JSON form (or rebuilt as it)
    blob_path, sig_path = kept or ctx.state.manifest_files(grant.product_id, grant.version_id)
    key = load_public_key(await manifest_key(ctx))
    refresh = refresher(ctx, grant)
    # every manifest is checked against its signature once before it is decoded: a cached one
    # here, a fetched one as its bytes arrive (or, rebuilt from a patch, before it is taken)
    if kept is not None:
        blob, sig = blob_path.read_bytes(), sig_path.read_bytes()
        try:
            await asyncio.to_thread(verify_signature, blob, sig, key)
        except ManifestError as exc:  # damaged, or another key's
            return await _load_again(ctx, pool, grant, base, kept, f"refused ({exc.message})")
    else:
        sig = await fetch_small(ctx, pool, grant.signature_path, 1024, refresh=refresh)
        rebuilt = None
        if base is not None:
            rebuilt = await _patched_manifest(ctx, pool, grant, base, sig, key)
        if rebuilt is not None:
            blob = rebuilt
        else:
            blob = await fetch_small(ctx, pool, grant.manifest_path, MANIFEST_MAX_BYTES,
                                     check=lambda data: verify_signature(data, sig, key),
                                     refresh=refresh)
    decode_started = time.monotonic()
    # the signed bytes are cached (durably: four fsyncs) on a thread while another decodes
    # them: the writes no longer wait on the loop thread before the plan and the first byte
    # (issue 13); a manifest that then fails to decode is not kept
    cached = None if blob_path.exists() else asyncio.ensure_future(
        asyncio.to_thread(_cache_manifest, blob_path, sig_path, blob, sig))
    try:
        try:
            manifest = await asyncio.to_thread(decode_manifest, blob)
        except ManifestError as exc:
            if kept is not None:  # signed, in a form this engine cannot read (a newer one's)
                return await _load_again(ctx, pool, grant, base, kept,
                                         f"not readable ({exc.message})")
            raise EngineError(ErrorCode.from_wire(exc.code, ErrorCode.MANIFEST_INVALID),
                              f"manifest of {grant.product_id} {grant.version_id}: "
                              f"{exc.message}", item=exc.field) from exc
        if (manifest.product_id, manifest.version_id) != (grant.product_id, grant.version_id):
            raise EngineError(ErrorCode.MANIFEST_INVALID,
                              "manifest is for another product or version")
    except asyncio.CancelledError:
        # a pause or shutdown during the decode: the bytes were checked against the signature
        # as they arrived, so the cache being written stays (the resumed run reads it instead
        # of fetching the whole manifest again)
        if cached is not None:
            await asyncio.gather(cached, return_exceptions=True)
        raise
    except BaseException:
        if cached is not None:
            await asyncio.gather(cached, return_exceptions=True)  # done before it is undone
            for path in (blob_path, sig_path):
                path.unlink(missing_ok=True)
        raise
    log.info("manifest of %s %s: %d bytes, checked and decoded in %.0f ms", grant.product_id,
             grant.version_id, len(blob), (time.monotonic() - decode_started) * 1000)
    if cached is not None:
        await cached
    return manifest


async def _load_again(ctx: EngineContext, pool: SourcePool, grant: TaskGrant,
                      base: ManifestBase | None, kept: tuple[Path, Path], why: str) -> Manifest:
    """The engine's own copy of a manifest is unusable (damaged, another key's, or in a form
    this engine cannot decode): dropped and the manifest loaded again (another copy the engine
    keeps, else the CDN's), rather than failing every install of this version until someone
    deletes it."""
    log.warning("cached manifest of %s %s %s: fetching it again", grant.product_id,
                grant.version_id, why)
    for path in kept:
        path.unlink(missing_ok=True)
    return await load_manifest(ctx, pool, grant, base=base)


_cache_lock = threading.Lock()  # two runs caching one manifest share its temporary file names


def _cache_manifest(blob_path: Path, sig_path: Path, blob: bytes, sig: bytes) -> None:
    with _cache_lock:
        blob_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(sig_path, sig)
        atomic_write(blob_path, blob)


async def _patched_manifest(ctx: EngineContext, pool: SourcePool, grant: TaskGrant,
                            base: ManifestBase, sig: bytes, key: PublicKey) -> bytes | None:
    """The new manifest's signed bytes rebuilt from ``base``, or None (logged) when the patch
    is missing, wrong or rebuilds other bytes than the signed ones: the caller fetches the full
    manifest then."""
    import blake3

    from patcher.deltaindex import rebuild_manifest_blob
    from patcher.signing import verify_signature

    mp = base.patch

    def check(data: bytes) -> None:
        if blake3.blake3(data).hexdigest() != mp.patch_id:
            raise EngineError(ErrorCode.MANIFEST_INVALID, "manifest patch: bytes do not match its id")

    try:
        patch = await fetch_small(ctx, pool, f"{grant.product_id}/patches/{mp.patch_id}.patch",
                                  mp.patch_size, check=check, refresh=refresher(ctx, grant),
                                  attempts=max(2, len(pool.sources)))
        blob = await asyncio.to_thread(rebuild_manifest_blob, base.old_blob, patch, mp)
        verify_signature(blob, sig, key)  # the result is what the publisher signed, or nothing
    except (EngineError, ManifestError, OSError) as exc:
        log.warning("MANIFEST_PATCH_FAILED: %s %s: %s; fetching the full manifest",
                    grant.product_id, grant.version_id, exc)
        return None
    return blob


def refresher(ctx: EngineContext, grant: TaskGrant) -> SourceRefresh:
    return lambda: ctx.api.refresh_sources(grant.backend_task_id)


def remote_binding(state: State, task_id: str) -> str | None:
    """The backend task a remote download bound to local ``task_id`` (None: a local task)."""
    return state.get_meta(f"remote_task:{task_id}")


def bind_remote(state: State, task_id: str, backend_task_id: str) -> None:
    state.update_task(task_id, backend_task_id=backend_task_id)
    state.set_meta(f"remote_task:{task_id}", backend_task_id)


async def existing_grant(ctx: EngineContext, task: TaskRecord) -> TaskGrant | None:
    """The grant of the backend task a local task is bound to (a remote download bound here,
    or a task run again after a restart: one backend task per local task), or None when it has
    none — or, for a local task, when that one is gone or finished (a new one is asked for
    then). A remote download whose backend task is gone or finished fails: it was cancelled
    elsewhere."""
    current = ctx.state.task(task.id).backend_task_id
    if current is None:
        return None
    try:
        grant = await ctx.api.task_grant(current)
    except EngineError as exc:
        if remote_binding(ctx.state, task.id) is not None or exc.http_status not in (404, 409):
            raise
        log.info("backend task %s of %s is gone (%s): asking for a new one", current[:8],
                 task.id[:8], exc.message)
        return None
    if grant.product_id != task.product_id:
        raise EngineError(ErrorCode.BACKEND_ERROR, f"backend task {current} is for "
                          f"{grant.product_id}, not {task.product_id}")
    ctx.state.update_task(task.id, version_id=grant.version_id)
    return grant


async def obtain_grant(ctx: EngineContext, task: TaskRecord) -> TaskGrant:
    """The backend grant of an install: its bound backend task's (``existing_grant``), else
    a new backend task's."""
    grant = await existing_grant(ctx, task)
    if grant is not None:
        return grant
    grant = await ctx.api.create_task(task.product_id, task.version_id, task.target_path,
                                      task.priority)
    ctx.state.update_task(task.id, backend_task_id=grant.backend_task_id,
                          version_id=grant.version_id)
    return grant
