"""One install task from grant to commit: grant → signed manifest → plan → staging → download
with per-file verification (``StagedBuild``) → atomic renames into an empty or new folder →
installed record."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from engine import codecache
from engine.core.errors import EngineError, ErrorCode
from engine.core.lifecycle import TaskState
from engine.core.sources import SourcePool, prefer_source
from engine.io.backend_client import TaskGrant
from engine.io.fsops import fsync_dir, safe_join, translate_os_error
from engine.io.staging import STAGING_DIR, Staging, remove_task_staging, sweep_staging
from engine.io.state import InstalledGame, TaskRecord
from engine.jobs.build import StagedBuild, remember_sources
from engine.jobs.context import (
    EarlyManifest,
    EngineContext,
    cache_early_manifest,
    cache_manifest_again,
    early_for,
    early_manifest,
    load_manifest,
    manifest_key,
    obtain_grant,
    wants_early_manifest,
)

if TYPE_CHECKING:
    from engine.core.planner import InstallPlan
    from patcher.manifest import Manifest

    # what a run prepared, kept in ``EngineContext.prepared`` while its task is paused or queued
    # the grant, its sources, the manifest, the full plan and the write of the engine's copy
    # of a manifest taken from the backend (awaited before commit, by a resumed run too)
    PreparedInstall = tuple[TaskGrant, SourcePool, Manifest, InstallPlan,
                            asyncio.Task[None] | None]

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a run needs once its grant is in: the manifest's signature check and decode, the
# planner, the block pipeline. 30-50 ms of imports (zstandard, BLAKE3, the manifest's and the
# planner's classes; the signature check's libcrypto, not ``cryptography``'s 9-32 ms) that a
# fresh process would otherwise do before asking for the grant: ``import_pipeline`` does them
# on the loop, one module at a time, while the grant's round trip (and the backend's own work)
# is under way, so they leave the way to the first byte (issue 13). On the loop rather than a
# thread: a thread importing holds the GIL for 5 ms stretches, which the grant's answer and
# every step after it would wait through.
PIPELINE = (
    "zstandard", "blake3", "patcher.chunking", "patcher.sigcheck", "patcher.manifest",
    "patcher.manifestbin", "patcher.signing", "engine.core.planner", "engine.io.rangeclient",
    "engine.io.blockio", "engine.io.download", "engine.io.journal", "engine.io.verify",
)


def cap_malloc_arenas() -> None:
    """glibc gives every thread that allocates its own malloc arena (up to 8 per core), and the
    block workers each touch a few MiB of them: ~11 MB of RSS for nothing at 4 GiB. Two arenas
    are enough: the big block buffers are mmap'ed, the rest is small and short. Set before the
    block workers start; ctypes (3-5 ms) is imported beside the grant, not before it."""
    global _arenas_capped
    if _arenas_capped or not sys.platform.startswith("linux"):
        return
    _arenas_capped = True
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): keep its default
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX


_arenas_capped = False


async def import_pipeline() -> None:
    for name in PIPELINE:
        if name not in sys.modules:
            collecting = gc.isenabled()
            gc.disable()  # a module's classes live as long as the process: nothing to collect
            try:
                importlib.import_module(name)
            finally:
                if collecting:
                    gc.enable()
            await asyncio.sleep(0)  # the loop's I/O (the grant's answer) between two modules
    # each step a loop pass of its own, as the imports: the grant's answer may be waiting
    cap_malloc_arenas()
    await asyncio.sleep(0)
    from patcher.sigcheck import openssl_ready

    openssl_ready()
    await asyncio.sleep(0)
    # the methods of the pipeline's dataclasses, compiled by a first run, kept now (a run
    # killed before its exit would otherwise keep none of them)
    codecache.save()
    # not frozen out of later collections (as the start-up's objects are): a freeze here would
    # also keep whatever else is alive then from ever being collected in a cycle, for a
    # daemon's whole life; the daemon imports these at its start, before its own freeze


def awaited_later(coro: Coroutine[object, object, T], name: str) -> asyncio.Task[T]:
    """A task beside the run whose failure is raised where the run awaits it; one the run never
    awaits (it ended first) drops its outcome instead of asyncio logging it as never
    retrieved."""
    job = asyncio.create_task(coro, name=name)
    job.add_done_callback(lambda t: t.cancelled() or t.exception())
    return job


def pipeline_imported() -> asyncio.Task[None] | None:
    """``import_pipeline`` started beside the caller, or None when it is imported already (a
    daemon's second run). Its errors are raised where it is awaited; unawaited (the grant
    failed first), the same import raises again where the module is used."""
    if all(name in sys.modules for name in PIPELINE):
        cap_malloc_arenas()
        return None
    return awaited_later(import_pipeline(), "import-pipeline")


class InstallRun:
    """Runs (or resumes) one install task; cancellation leaves a consistent journal."""

    def __init__(self, ctx: EngineContext, task: TaskRecord) -> None:
        self.ctx, self.task, self.build = ctx, task, StagedBuild.for_task(ctx, task)
        self.progress = self.build.progress
        self.on_started: Callable[[TaskRecord], None] | None = None  # after the backend grant
        self._marks: list[tuple[str, float]] = []
        self._caching: asyncio.Task[None] | None = None  # a manifest from the backend, kept

    @property
    def install_dir(self) -> Path:
        return self.build.install_dir

    async def run(self) -> InstalledGame:
        ctx = self.ctx
        cpu0 = time.process_time()
        self._marks = [("start", time.monotonic())]  # -v: where the time before the first byte went
        prepared: PreparedInstall | None = ctx.prepared.get(self.task.id)
        if prepared is not None:
            # resumed in this process: the grant (its tokens refresh themselves), the parsed
            # manifest and the full plan are still good; only the journal is read again
            grant, pool, manifest, full, self._caching = prepared
            failed = self._caching
            if failed is not None and failed.done() and not failed.cancelled() \
                    and failed.exception() is not None:
                # the copy's write failed before the pause: tried afresh (the condition that
                # failed it may be gone), not raised stale
                self._caching = awaited_later(cache_manifest_again(ctx, pool, grant),
                                              "manifest-cache")
            if self.on_started is not None:
                self.on_started(ctx.state.task(self.task.id))
        # the manifest key (asked of the backend once per backend, then pinned) is fetched
        # beside the grant rather than after it: one round trip less before the first byte
        key: asyncio.Task[str] | None = None
        imports: asyncio.Task[None] | None = None
        early: asyncio.Task[EarlyManifest | None] | None = None
        taken: EarlyManifest | None = None
        try:
            if prepared is None:
                imports = pipeline_imported()
                # unawaited when the grant failed first or the game is installed already
                key = awaited_later(manifest_key(ctx), "manifest-key")
                if wants_early_manifest(ctx, self.task.product_id, self.task.version_id):
                    # the manifest asked of the backend, checked and decoded beside the grant
                    early = asyncio.create_task(early_manifest(
                        ctx, self.task.product_id, self.task.version_id, key, imports),
                        name="early-manifest")
                    if imports is None:
                        # its request first (the lighter one, answered sooner: the decode starts
                        # earlier); not while the pipeline imports on the loop, which would
                        # take the turn and hold the grant's request back
                        await asyncio.sleep(0)
                grant = await obtain_grant(ctx, self.task)
                self._marks.append(("grant", time.monotonic()))
                if self.on_started is not None:
                    self.on_started(ctx.state.task(self.task.id))
                await asyncio.to_thread(sweep_staging, self.install_dir,
                                        ctx.state.resumable_task_ids())
            current = ctx.state.installed_game(self.task.product_id)
            if current is not None and current.version_id == grant.version_id \
                    and not current.dirty and Path(current.path) == self.install_dir:
                # already installed (or killed after the record was written): only clean up
                await asyncio.to_thread(remove_task_staging, self.install_dir, self.task.id)
                ctx.state.clear_journal(self.task.id)
                return current
            if key is not None:
                remember_sources(ctx, grant)
                pool = SourcePool(prefer_source(grant.sources, ctx.settings.preferred_cdn))
                await key  # pinned: load_manifest reads it from the state; its errors are raised here
                if imports is not None:
                    await imports
                taken = early_for(None if early is None else await early, grant)
                early = None  # done: its blob is held by ``taken`` alone
                manifest = taken.manifest if taken else await load_manifest(ctx, pool, grant)
                self._marks.append(("manifest", time.monotonic()))
        finally:
            # still running only when the grant failed or the run was stopped: cancelled, and
            # waited for (a task left pending when an in-process command's loop closes is
            # reported destroyed), their own outcome dropped
            helpers = [t for t in (key, imports, early) if t is not None and not t.done()]
            for t in helpers:
                t.cancel()
            if helpers:
                await asyncio.gather(*helpers, return_exceptions=True)
        from engine.core.planner import plan_install, remaining_plan

        done_blocks = ctx.state.done_blocks(self.task.id)
        if prepared is None and not done_blocks and not ctx.state.done_files(self.task.id):
            check_install_target(self.install_dir)  # a fresh start: nothing of ours there yet
        if prepared is None:
            full = plan_install(manifest, max_range=ctx.settings.max_range_bytes,
                                max_gap=ctx.settings.max_gap_bytes)
        # a resumed task's plan is the full one less what the journal holds (one plan, never
        # two: a fresh install is the full plan itself)
        plan = remaining_plan(full, done_blocks)
        self._marks.append(("plan", time.monotonic()))
        self.progress.download_total = full.download_bytes
        self.progress.downloaded = full.download_bytes - plan.download_bytes
        self.progress.install_total = manifest.total_size
        self.progress.written = full.write_bytes - plan.write_bytes
        ctx.state.update_task(self.task.id, total_bytes=manifest.total_size,
                              download_bytes=full.download_bytes,
                              downloaded_bytes=self.progress.downloaded)
        staging = Staging(self.install_dir, self.task.id, manifest,
                          direct_writes=ctx.settings.direct_writes)
        if taken is not None:
            # kept on a thread beside staging and the download, not before the first byte
            # awaited before commit; a task cancelled before that drops it (the copy is
            # fetched again by whatever needs it)
            self._caching = awaited_later(cache_early_manifest(ctx, taken), "manifest-cache")
            taken = None  # its blob is the write's alone now
        try:
            return await self._install(ctx, grant, pool, manifest, plan, staging,
                                       keep=(grant, pool, manifest, full, self._caching),
                                       staged=prepared is not None, cpu0=cpu0)
        finally:
            staging.close()
            if self._caching is not None and not self._caching.done():
                # a thread cannot be stopped: its write ends before the run does (a failure
                # stays in the task, raised by whichever run commits: this one, or the one
                # that resumes from ``ctx.prepared``)
                await asyncio.wait({self._caching})

    async def _install(self, ctx: EngineContext, grant: TaskGrant, pool: SourcePool,
                       manifest: Manifest, plan: InstallPlan, staging: Staging, *,
                       keep: PreparedInstall, staged: bool, cpu0: float) -> InstalledGame:
        verified = ctx.state.done_files(self.task.id)
        to_stage = [i for i in range(len(manifest.files)) if i not in verified]
        # resumed in this process: this run created and preallocated the files already (a
        # staging folder gone meanwhile is prepared again)
        if not (staged and await asyncio.to_thread(staging.open_root, False)):
            await self.build.prepare_staging(staging, manifest, to_stage, lazy=True)
        else:  # a pause may have come before every file was created
            await asyncio.to_thread(staging.prepare_lazily, to_stage)
        ctx.prepared[self.task.id] = keep  # staged: a pause from here on resumes without re-plan
        self._marks.append(("staging", time.monotonic()))
        log.info("task %s: fetching after %.4f CPU-s of preparation (%s; %s)", self.task.id[:8],
                 time.process_time() - cpu0, "plan reused" if staged else "planned",
                 " ".join(f"{name} {(at - self._marks[i][1]) * 1000:.0f} ms"
                          for i, (name, at) in enumerate(self._marks[1:])))
        if self._caching is not None and self._caching.done():
            self._caching.result()  # a failed write of the manifest's copy: before the download
        await self.build.download_and_verify(ctx, grant, pool, manifest, plan, staging, set(to_stage))
        if self._caching is not None:
            # the engine's copy of the manifest is kept before the game is recorded installed
            # (a pause here leaves the write running, waited for by ``run``)
            await asyncio.shield(self._caching)
        return await self._commit(manifest, staging)

    async def _commit(self, manifest: Manifest, staging: Staging) -> InstalledGame:
        from engine.io.verify import remember_verified

        ctx = self.ctx
        self.build.enter(TaskState.VERIFYING)
        staging.close()

        def commit() -> None:
            touched_dirs = staging.commit_all(ctx.settings.qa_switch_delay_s)
            for d in manifest.dirs:
                safe_join(self.install_dir, d).mkdir(parents=True, exist_ok=True)
            # renames durable before the record says installed; side by side, the folders' fsyncs
            # share journal commits (37 folders of the 1 GiB demo: 0.05-0.16 s -> 0.03 s)
            with ThreadPoolExecutor(max_workers=min(8, len(touched_dirs))) as pool:
                list(pool.map(fsync_dir, touched_dirs))
            remember_verified(ctx.settings.data_dir, self.install_dir, manifest)

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
