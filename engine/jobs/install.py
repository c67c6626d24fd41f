"""One install task from grant to commit: the async shell around the pure planner.

grant (backend) → signed manifest (CDN, verified with the pinned key) → plan → disk check →
preallocated staging files → parallel range download, per-chunk BLAKE3, pwrite → batched fsync
+ journal → per-file SHA-256 → atomic renames into the install folder → installed record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from engine.core.errors import EngineError, ErrorCode
from engine.core.events import item_event, status_event
from engine.core.fetchrules import Failure, FetchState, GiveUp, after_failure
from engine.core.lifecycle import TaskState
from engine.core.planner import BlockJob, ChunkWrite, InstallPlan, plan_install
from engine.core.progress import TaskProgress
from engine.core.retry import RetryPolicy
from engine.core.sources import CdnSource, FailureKind, SourcePool
from engine.io.backend_client import BackendClient, TaskGrant
from engine.io.blockio import process_block
from engine.io.bus import EventBus
from engine.io.config import Settings
from engine.io.download import DownloadContext, FetchFailed, download
from engine.io.fsops import atomic_write, fsync_dir, safe_join, translate_os_error
from engine.io.limiter import AsyncRateLimiter
from engine.io.staging import STAGING_DIR, Staging, remove_task_staging, sweep_staging
from engine.io.state import InstalledGame, State, TaskRecord
from patcher.errors import ManifestError
from patcher.manifest import Manifest
from patcher.signing import load_public_key, load_signed_manifest, verify_signature

log = logging.getLogger(__name__)

# A kill loses at most this much fetched data (plus the blocks in flight): measured cost of a
# flush (fdatasync of the touched files + one SQLite commit) is ~1-3 ms.
JOURNAL_FLUSH_BYTES = 4 * 1024 * 1024
JOURNAL_FLUSH_SECONDS = 0.25
MANIFEST_MAX_BYTES = 256 * 1024 * 1024


@dataclass(slots=True)
class EngineContext:
    settings: Settings
    state: State
    api: BackendClient
    bus: EventBus
    limiter: AsyncRateLimiter
    session: aiohttp.ClientSession
    executor: ThreadPoolExecutor


class Journal:
    """Batches block completions: fdatasync the touched staged files, then record the blocks."""

    def __init__(self, state: State, staging: Staging, task_id: str) -> None:
        self.state = state
        self.staging = staging
        self.task_id = task_id
        self.blocks: list[int] = []
        self.pending_bytes = 0
        self.files: set[int] = set()
        self.verified: list[int] = []
        self.last_flush = time.monotonic()

    def add_file(self, file_index: int) -> None:
        """A staged file whose SHA-256 matched (already fsynced by the verifier)."""
        self.verified.append(file_index)

    def add(self, block: int, files: list[int], nbytes: int) -> bool:
        self.blocks.append(block)
        self.files.update(files)
        self.pending_bytes += nbytes
        return (self.pending_bytes >= JOURNAL_FLUSH_BYTES
                or time.monotonic() - self.last_flush >= JOURNAL_FLUSH_SECONDS)

    def _take(self) -> tuple[list[int], set[int], list[int]]:
        blocks, files, verified = self.blocks, self.files, self.verified
        self.blocks, self.files, self.verified = [], set(), []
        self.pending_bytes = 0
        self.last_flush = time.monotonic()
        return blocks, files, verified

    def flush(self) -> None:
        """Synchronous flush (on the loop thread: SQLite objects stay on their thread)."""
        blocks, files, verified = self._take()
        if blocks:
            self.staging.sync(files)  # data durable before the journal says so
        if blocks or verified:
            self.state.record_progress(self.task_id, blocks, verified)

    async def flush_async(self, executor: ThreadPoolExecutor) -> None:
        """fdatasync in a worker thread, then record blocks and files in one commit."""
        blocks, files, verified = self._take()
        if blocks:
            await asyncio.get_running_loop().run_in_executor(executor, self.staging.sync, files)
        if blocks or verified:
            self.state.record_progress(self.task_id, blocks, verified)


def free_space(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk_space(settings: Settings, install_dir: Path, needed: int) -> None:
    free = free_space(install_dir)
    if needed + settings.keep_free_bytes > free:
        raise EngineError(
            ErrorCode.INSUFFICIENT_DISK_SPACE,
            f"needs {needed / 1e6:.1f} MB (+{settings.keep_free_bytes / 1e6:.0f} MB kept free), "
            f"{free / 1e6:.1f} MB free at {install_dir}",
        )


SourceRefresh = Callable[[], Awaitable[tuple[CdnSource, ...]]]


async def _get_small(ctx: EngineContext, source: CdnSource, rel: str, limit: int) -> bytes:
    timeout = aiohttp.ClientTimeout(total=60, sock_read=ctx.settings.stall_timeout_s)
    try:
        async with ctx.session.get(source.url(rel), timeout=timeout) as resp:
            if resp.status == 403:
                raise FetchFailed(FailureKind.FORBIDDEN, f"{source.id}: HTTP 403 for {rel}")
            if resp.status != 200:
                raise FetchFailed(FailureKind.HTTP_5XX, f"{source.id}: HTTP {resp.status} for {rel}",
                                  out_of_range=resp.status == 416)
            if (resp.content_length or 0) > limit:
                raise EngineError(ErrorCode.MANIFEST_TOO_LARGE, f"{rel}: {resp.content_length} bytes "
                                  f"(limit {limit})", item=rel)
            parts: list[bytes] = []
            size = 0
            while chunk := await resp.content.read(1 << 20):  # read() returns what arrived
                size += len(chunk)
                if size > limit:
                    raise EngineError(ErrorCode.MANIFEST_TOO_LARGE, f"{rel}: over {limit} bytes", item=rel)
                parts.append(chunk)
            return b"".join(parts)
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise FetchFailed(FailureKind.STALL, f"{source.id}: {rel} stalled") from exc
    except aiohttp.ClientError as exc:
        raise FetchFailed(FailureKind.RESET, f"{source.id}: {rel}: {exc!r}") from exc


async def fetch_small(ctx: EngineContext, pool: SourcePool, rel: str, limit: int, *,
                      check: Callable[[bytes], None] | None = None,
                      refresh: SourceRefresh | None = None) -> bytes:
    """GET a small document (manifest, signature, delta index, patch) from the best source.

    The same failure rules as pack ranges: every failure is recorded against its source, the
    next try prefers another source after a capped, jittered backoff, a 403 refreshes the signed
    tokens once per failure, and ``check`` (e.g. a hash or signature test) failing counts as
    corrupt bytes from that source — another source is tried before the document is called bad.
    """
    policy = RetryPolicy(max_attempts=ctx.settings.max_attempts)
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


async def load_manifest(ctx: EngineContext, pool: SourcePool, grant: TaskGrant) -> Manifest:
    """The signed manifest of a grant: from the local cache, else from the CDN. The signature is
    fetched first (64 bytes); the manifest bytes are checked against it as they arrive, so a
    flipped byte on one edge makes the engine fetch from another instead of failing."""
    blob_path, sig_path = ctx.state.manifest_files(grant.product_id, grant.version_id)
    key = load_public_key(await manifest_key(ctx))
    refresh = _refresher(ctx, grant)
    if blob_path.exists() and sig_path.exists():
        blob, sig = blob_path.read_bytes(), sig_path.read_bytes()
    else:
        sig = await fetch_small(ctx, pool, grant.signature_path, 1024, refresh=refresh)
        blob = await fetch_small(ctx, pool, grant.manifest_path, MANIFEST_MAX_BYTES,
                                 check=lambda data: verify_signature(data, sig, key),
                                 refresh=refresh)
    try:
        manifest = await asyncio.to_thread(load_signed_manifest, blob, sig, key)
    except ManifestError as exc:
        raise EngineError(ErrorCode.from_wire(exc.code, ErrorCode.MANIFEST_INVALID),
                          f"manifest of {grant.product_id} {grant.version_id}: "
                          f"{exc.message}", item=exc.field) from exc
    if (manifest.product_id, manifest.version_id) != (grant.product_id, grant.version_id):
        raise EngineError(ErrorCode.MANIFEST_INVALID, "manifest is for another product or version")
    if not blob_path.exists():
        blob_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(sig_path, sig)
        atomic_write(blob_path, blob)
    return manifest


def _refresher(ctx: EngineContext, grant: TaskGrant) -> SourceRefresh:
    return lambda: ctx.api.refresh_sources(grant.backend_task_id)


async def obtain_grant(ctx: EngineContext, task: TaskRecord) -> TaskGrant:
    grant = await ctx.api.create_task(task.product_id, task.version_id, task.target_path,
                                      task.priority)
    ctx.state.update_task(task.id, backend_task_id=grant.backend_task_id,
                          version_id=grant.version_id)
    return grant


class InstallRun:
    """Runs (or resumes) one install task; cancellation leaves a consistent journal."""

    def __init__(self, ctx: EngineContext, task: TaskRecord) -> None:
        self.ctx = ctx
        self.task = task
        self.progress = TaskProgress()
        self.install_dir = Path(task.target_path)
        self.on_started: Callable[[TaskRecord], None] | None = None  # after the backend grant

    def _enter(self, status: TaskState) -> None:
        """A lifecycle step of the running task: persisted (other clients read it from the
        state), then published."""
        self.ctx.state.set_status(self.task.id, status)
        self._emit_status(status)

    def _emit_status(self, status: str) -> None:
        p = self.progress
        self.ctx.bus.publish(status_event(
            self.task.id, status, downloaded=p.downloaded, total=p.download_total,
            speed_bps=p.speed.rate, eta_s=p.eta(), product_id=self.task.product_id,
            written=p.written, install_total=p.install_total))

    async def _reporter(self) -> None:
        last_saved = time.monotonic()
        while True:
            await asyncio.sleep(self.ctx.settings.progress_interval_s)
            now = time.monotonic()
            self.progress.speed.sample(self.progress.downloaded, now)
            self._emit_status(TaskState.DOWNLOADING)
            if now - last_saved >= 1.0:  # other processes (CLI, launcher) read it from state
                self.ctx.state.update_task(self.task.id, downloaded_bytes=self.progress.downloaded)
                last_saved = now

    async def run(self) -> InstalledGame:
        ctx = self.ctx
        grant = await obtain_grant(ctx, self.task)
        if self.on_started is not None:
            self.on_started(ctx.state.task(self.task.id))
        await asyncio.to_thread(sweep_staging, self.install_dir, ctx.state.resumable_task_ids())
        current = ctx.state.installed_game(self.task.product_id)
        if current is not None and current.version_id == grant.version_id and not current.dirty \
                and Path(current.path) == self.install_dir:
            # already installed (or killed after the record was written): only clean up
            await asyncio.to_thread(remove_task_staging, self.install_dir, self.task.id)
            ctx.state.clear_journal(self.task.id)
            return current
        pool = SourcePool(list(grant.sources))
        manifest = await load_manifest(ctx, pool, grant)
        done_blocks = ctx.state.done_blocks(self.task.id)
        if not done_blocks and not ctx.state.done_files(self.task.id):
            check_install_target(self.install_dir)  # a fresh start: nothing of ours there yet
        full = plan_install(manifest, max_range=ctx.settings.max_range_bytes,
                            max_gap=ctx.settings.max_gap_bytes)
        plan = full if not done_blocks else plan_install(
            manifest, done_blocks=done_blocks, max_range=ctx.settings.max_range_bytes,
            max_gap=ctx.settings.max_gap_bytes)
        self.progress.download_total = full.download_bytes
        self.progress.downloaded = full.download_bytes - plan.download_bytes
        self.progress.install_total = manifest.total_size
        self.progress.written = full.write_bytes - plan.write_bytes
        ctx.state.update_task(self.task.id, total_bytes=manifest.total_size,
                              download_bytes=full.download_bytes,
                              downloaded_bytes=self.progress.downloaded)
        staging = Staging(self.install_dir, self.task.id, manifest)
        try:
            return await self._install(ctx, grant, pool, manifest, plan, staging)
        finally:
            staging.close()

    async def _install(self, ctx: EngineContext, grant: TaskGrant, pool: SourcePool,
                       manifest: Manifest, plan: InstallPlan, staging: Staging) -> InstalledGame:
        verified = ctx.state.done_files(self.task.id)
        to_stage = [i for i in range(len(manifest.files)) if i not in verified]
        await self._prepare_staging(staging, manifest, to_stage)
        await self._download_and_verify(ctx, grant, pool, manifest, plan, staging, set(to_stage))
        return await self._commit(manifest, staging)

    async def _prepare_staging(self, staging: Staging, manifest: Manifest, files: list[int]) -> None:
        allocated = await asyncio.to_thread(staging.allocated_bytes)
        needed = sum(manifest.files[i].size for i in files) - allocated
        check_disk_space(self.ctx.settings, self.install_dir, max(0, needed))
        await asyncio.to_thread(staging.prepare, files)

    def _forget_file(self, manifest: Manifest, fi: int) -> None:
        """A staged file failed its SHA-256: forget the journaled blocks that write into it, so
        the next run fetches exactly those again (not the whole game)."""
        f = manifest.files[fi]
        wanted = {c.id: [ChunkWrite(fi, c.offset)] for c in f.chunks}
        redo = plan_install(manifest, wanted=wanted)
        self.ctx.state.forget_blocks(self.task.id, {j.index for r in redo.ranges for j in r.blocks},
                                     {fi})

    async def _download_and_verify(self, ctx: EngineContext, grant: TaskGrant, pool: SourcePool,
                                   manifest: Manifest, plan: InstallPlan, staging: Staging,
                                   files: set[int]) -> None:
        """Fetch the plan's blocks into staged files and SHA-256 every file in ``files`` as soon
        as its last chunk is written (hashing overlaps the download)."""
        self._enter(TaskState.DOWNLOADING)
        verified = ctx.state.done_files(self.task.id)
        pending = {fi: plan.pending_writes.get(fi, 0) for fi in files}
        journal = Journal(ctx.state, staging, self.task.id)
        verify_sem = asyncio.Semaphore(2)
        loop = asyncio.get_running_loop()

        async def verify(fi: int) -> None:
            async with verify_sem:  # staging.verify also fsyncs the file (per inode)
                ok = await loop.run_in_executor(ctx.executor, staging.verify, fi)
            f = manifest.files[fi]
            if not ok:
                journal.flush()
                self._forget_file(manifest, fi)
                raise EngineError(ErrorCode.FILE_HASH_MISMATCH,
                                  f"{f.path}: SHA-256 differs from the manifest", item=f.path)
            staging.close_file(fi)
            journal.add_file(fi)  # recorded with the next journal commit, not one commit each
            ctx.bus.publish(item_event(self.task.id, str(fi), f.path, "completed", f.size, f.size))

        try:
            async with asyncio.TaskGroup() as tg:
                reporter = tg.create_task(self._reporter())
                for fi, count in pending.items():
                    if count == 0 and fi not in verified:
                        tg.create_task(verify(fi))

                async def sink(job: BlockJob, data: bytes) -> None:
                    touched = await loop.run_in_executor(ctx.executor, process_block, job, data,
                                                         staging)
                    if journal.add(job.index, touched, job.stored_size):
                        await journal.flush_async(ctx.executor)
                    self.progress.written += sum(t.size * len(t.writes) for t in job.targets)
                    for t in job.targets:
                        for w in t.writes:
                            if w.file_index not in pending:
                                continue
                            pending[w.file_index] -= 1
                            if pending[w.file_index] == 0 and w.file_index not in verified:
                                tg.create_task(verify(w.file_index))

                def count_bytes(n: int) -> None:
                    self.progress.downloaded += n

                dctx = DownloadContext(
                    session=ctx.session, pool=pool, limiter=ctx.limiter,
                    retry=RetryPolicy(max_attempts=ctx.settings.max_attempts),
                    product_id=manifest.product_id, task_key=self.task.id,
                    refresh=_refresher(ctx, grant),
                    refresh_margin_s=ctx.settings.token_refresh_margin_s, on_bytes=count_bytes,
                    stall_window_s=ctx.settings.stall_timeout_s,
                )
                try:
                    await download(dctx, list(plan.ranges), sink, ctx.settings.connections)
                finally:
                    # what was written is durable and journaled, even when cancelled or failing
                    journal.flush()
                    ctx.state.update_task(self.task.id, downloaded_bytes=self.progress.downloaded)
                reporter.cancel()
        finally:
            # files verified after the download finished (the last ones) are journaled before
            # anything is committed: a kill during the commit must find them recorded
            journal.flush()

    async def _commit(self, manifest: Manifest, staging: Staging) -> InstalledGame:
        ctx = self.ctx
        self._enter(TaskState.VERIFYING)
        staging.close()

        def commit() -> None:
            touched_dirs = {self.install_dir}
            for fi in range(len(manifest.files)):
                staging.commit_file(fi)
                touched_dirs.add(safe_join(self.install_dir, manifest.files[fi].path).parent)
                if ctx.settings.qa_switch_delay_s:  # QA: widen the window for a kill
                    time.sleep(ctx.settings.qa_switch_delay_s)
            for d in manifest.dirs:
                safe_join(self.install_dir, d).mkdir(parents=True, exist_ok=True)
            for folder in touched_dirs:  # renames durable before the record says installed
                fsync_dir(folder)

        try:
            await asyncio.to_thread(commit)
        except OSError as exc:
            raise translate_os_error(exc, f"moving files into {self.install_dir}") from exc
        previous = ctx.state.installed_game(manifest.product_id)
        game = InstalledGame(
            product_id=manifest.product_id, version_id=manifest.version_id,
            path=str(self.install_dir), size=manifest.total_size, installed_at=time.time(),
            dirty=False,
            previous_version=previous.version_id if previous and
            previous.version_id != manifest.version_id else None,
        )
        ctx.state.set_installed(game)
        await asyncio.to_thread(staging.remove)
        ctx.state.clear_journal(self.task.id)
        return game


def check_install_target(target: Path) -> None:
    """A fresh install goes into a folder that does not exist or holds nothing but the engine's
    own staging: the player's files are never mixed with (or overwritten by) a game's."""
    if not os.path.lexists(target):
        return
    if not os.path.isdir(target):
        raise EngineError(ErrorCode.TARGET_NOT_EMPTY, f"{target} is a file, not a folder", item=str(target))
    others = sorted(p.name for p in target.iterdir() if p.name != STAGING_DIR)
    if others:
        shown = ", ".join(others[:5]) + (" …" if len(others) > 5 else "")
        raise EngineError(ErrorCode.TARGET_NOT_EMPTY, f"{target} already holds files ({shown}); install "
                          "into an empty or new folder — nothing was changed", item=str(target))
