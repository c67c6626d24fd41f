"""The steps every run that builds files shares (composition, not inheritance): lifecycle
steps persisted and announced, progress reporting, staging prepared with a disk-space check,
blocks fetched into staged files with per-file SHA-256 as soon as a file is complete, the
batched journal, and files built locally (moves, patches) verified and journaled at once.
``InstallRun`` and ``UpdateRun`` each hold one."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine.core.errors import EngineError, ErrorCode
from engine.core.events import item_event, retry_event, status_event
from engine.core.fetchrules import FetchState
from engine.core.lifecycle import TaskState
from engine.core.progress import TaskProgress
from engine.core.retry import RetryPolicy
from engine.core.sources import SourcePool
from engine.io.backend_client import TaskGrant
from engine.io.state import TaskRecord
from engine.jobs.context import EngineContext, check_disk_space, refresher

if TYPE_CHECKING:
    from engine.core.planner import BlockJob, FetchRange, InstallPlan
    from engine.io.blockio import BlockWritten
    from engine.io.staging import Staging
    from patcher.manifest import Manifest

# The block pipeline (planner, block I/O, download, journal) is imported where it is used: a run
# has it imported beside its grant (``engine.jobs.install.import_pipeline``), and a process that
# only queues, lists or pauses never loads it.

# per-file progress while files download: at most this often per task, only files written since
ITEM_INTERVAL_S = 0.5


class StagedBuild:
    def __init__(self, ctx: EngineContext, task: TaskRecord, install_dir: Path,
                 progress: TaskProgress) -> None:
        self.ctx = ctx
        self.task = task
        self.install_dir = install_dir
        self.progress = progress

    @classmethod
    def for_task(cls, ctx: EngineContext, task: TaskRecord) -> StagedBuild:
        return cls(ctx, task, Path(task.target_path), TaskProgress())

    async def record_verified(self, staging: Staging, file_index: int) -> None:
        """A file built locally (moved or patched) and verified: durable, then journaled (on the
        loop thread: SQLite objects stay on theirs), so a resumed run never builds it again."""
        await asyncio.to_thread(staging.sync_file, file_index)
        self.ctx.state.record_progress(self.task.id, [], [file_index])

    def enter(self, status: TaskState) -> None:
        """A lifecycle step of the running task: persisted (other clients read it from the
        state), then published."""
        self.ctx.state.set_status(self.task.id, status)
        self.emit_status(status)

    def emit_status(self, status: str) -> None:
        p = self.progress
        self.ctx.bus.publish(status_event(
            self.task.id, status, downloaded=p.downloaded, total=p.download_total,
            speed_bps=p.speed.rate, eta_s=p.eta(), product_id=self.task.product_id,
            written=p.written, install_total=p.install_total))

    async def reporter(self) -> None:
        last_saved = time.monotonic()
        while True:
            await asyncio.sleep(self.ctx.settings.progress_interval_s)
            now = time.monotonic()
            self.progress.speed.sample(self.progress.downloaded, now)
            self.emit_status(TaskState.DOWNLOADING)
            if now - last_saved >= 1.0:  # other processes (CLI, launcher) read it from state
                self.ctx.state.update_task(self.task.id, downloaded_bytes=self.progress.downloaded)
                last_saved = now

    async def prepare_staging(self, staging: Staging, manifest: Manifest, files: list[int],
                              lazy: bool = False) -> None:
        """Check the free space, then create the staged files — ``lazy``: as the download
        first touches them, the rest beside it (see ``Staging.prepare_lazily``)."""
        allocated = await asyncio.to_thread(staging.allocated_bytes)
        needed = sum(manifest.files[i].size for i in files) - allocated
        check_disk_space(self.ctx.settings, self.install_dir, max(0, needed))
        if lazy:
            await asyncio.to_thread(staging.prepare_lazily, files)
        else:
            await asyncio.to_thread(staging.prepare, files)

    def publish_retry(self, manifest: Manifest, state: FetchState, source_id: str,
                      r: FetchRange) -> None:
        """``downloadRetry`` for a range fetched again (naming the file when it is only one)."""
        files = {w.file_index for job in r.blocks for t in job.targets for w in t.writes}
        path = manifest.files[files.pop()].path if len(files) == 1 else None
        event = retry_event(self.task.id, state, source_id,
                            f"pack {r.pack[:12]} bytes {r.start}-{r.end - 1}", path)
        if event is not None:
            self.ctx.bus.publish(event)

    async def item_reporter(self, manifest: Manifest, left: dict[int, int], moving: set[int],
                            pending: dict[int, int]) -> None:
        """``downloadItemProgressUpdate`` "downloading" for the files written since the last
        tick (a completed file gets its own "completed" event)."""
        while True:
            await asyncio.sleep(max(ITEM_INTERVAL_S, self.ctx.settings.progress_interval_s))
            for fi in sorted(moving):
                if pending.get(fi, 0) > 0:
                    f = manifest.files[fi]
                    self.ctx.bus.publish(item_event(self.task.id, str(fi), f.path, "downloading",
                                                    f.size - left[fi], f.size))
            moving.clear()

    def forget_file(self, manifest: Manifest, fi: int) -> None:
        """A staged file failed its SHA-256: forget the journaled blocks that write into it, so
        the next run fetches exactly those again (not the whole game)."""
        from engine.core.planner import ChunkWrite, plan_install

        f = manifest.files[fi]
        wanted = {c.id: [ChunkWrite(fi, c.offset)] for c in f.chunks}
        redo = plan_install(manifest, wanted=wanted)
        self.ctx.state.forget_blocks(self.task.id, {j.index for r in redo.ranges for j in r.blocks},
                                     {fi})

    async def download_and_verify(self, ctx: EngineContext, grant: TaskGrant, pool: SourcePool,
                                   manifest: Manifest, plan: InstallPlan, staging: Staging,
                                   files: set[int]) -> None:
        """Fetch the plan's blocks into staged files and SHA-256 every file in ``files`` as soon
        as its last chunk is written (hashing overlaps the download)."""
        from engine.io.blockio import process_block
        from engine.io.download import BlockSink, DownloadContext, download
        from engine.io.journal import Journal
        from engine.io.threads import run_to_end

        self.enter(TaskState.DOWNLOADING)
        verified = ctx.state.done_files(self.task.id)
        pending = {fi: plan.pending_writes.get(fi, 0) for fi in files}
        left = {fi: plan.pending_bytes.get(fi, 0) for fi in files}  # bytes still to write
        moving: set[int] = set()  # files written since the last item event
        # every byte of these files arrives in this run as BLAKE3-checked chunks of a signed
        # manifest whose chunks tile each file: reading them back for SHA-256 proves nothing
        # more (it cost a second pass over the game, ~0.7 CPU-s per GiB). Files resumed from an
        # earlier run, patched or copied locally keep their SHA-256 check.
        by_chunks = {fi for fi, n in pending.items() if n and n == len(manifest.files[fi].chunks)}
        journal = Journal(ctx.state, staging, self.task.id)
        verify_sem = asyncio.Semaphore(2)
        stop_preparing = threading.Event()

        async def verify(fi: int) -> None:
            async with verify_sem:  # staging.verify also fsyncs the file (per inode)
                if fi in by_chunks:
                    await run_to_end(ctx.executor, staging.sync_file, fi)
                    ok = True
                else:
                    ok = await run_to_end(ctx.executor, staging.verify, fi)
            f = manifest.files[fi]
            if not ok:
                journal.flush()
                self.forget_file(manifest, fi)
                raise EngineError(ErrorCode.FILE_HASH_MISMATCH,
                                  f"{f.path}: SHA-256 differs from the manifest", item=f.path)
            if fi not in by_chunks:  # sync_file closed it already (on the worker thread: here
                # the loop thread waited for the staging's lock, which the range threads hold
                # for every block, 0.2 ms a file on average)
                staging.close_file(fi)
            journal.add_file(fi)  # recorded with the next journal commit, not one commit each
            ctx.bus.publish(item_event(self.task.id, str(fi), f.path, "completed", f.size, f.size))

        try:
            async with asyncio.TaskGroup() as tg:
                if staging.unprepared:  # lazily staged files: the rest created beside the download
                    tg.create_task(run_to_end(None, staging.prepare_rest, stop_preparing,
                                              stop=stop_preparing))
                reporter = tg.create_task(self.reporter())
                items = tg.create_task(self.item_reporter(manifest, left, moving, pending))
                for fi, count in pending.items():
                    if count == 0 and fi not in verified:
                        tg.create_task(verify(fi))

                def process(job: BlockJob, data: bytes | memoryview) -> BlockWritten:
                    return process_block(job, data, staging)  # on a worker thread

                def record(job: BlockJob, result: BlockWritten) -> None:
                    touched = list(result.per_file)
                    if journal.add(job.index, touched, job.stored_size) and not journal.flushing:
                        tg.create_task(journal.flush_async(ctx.executor))  # beside the download
                    self.progress.written += result.written
                    for fi, (writes, nbytes) in result.per_file.items():
                        if fi not in pending:
                            continue
                        left[fi] -= nbytes
                        moving.add(fi)
                        pending[fi] -= writes
                        if pending[fi] == 0 and fi not in verified:
                            tg.create_task(verify(fi))

                def count_bytes(n: int) -> None:
                    self.progress.downloaded += n

                dctx = DownloadContext(
                    session_factory=ctx.session_factory, pool=pool, limiter=ctx.limiter,
                    retry=RetryPolicy(max_attempts=ctx.settings.max_attempts),
                    product_id=manifest.product_id, task_key=self.task.id,
                    refresh=refresher(ctx, grant),
                    refresh_margin_s=ctx.settings.token_refresh_margin_s, on_bytes=count_bytes,
                    stall_window_s=ctx.settings.stall_timeout_s,
                    executor=ctx.executor, connect_timeout_s=ctx.settings.connect_timeout_s,
                    on_retry=lambda state, source_id, r: self.publish_retry(manifest, state,
                                                                            source_id, r),
                )
                fetched = False
                try:
                    await download(dctx, list(plan.ranges), BlockSink(process, record),
                                   ctx.settings.connections)
                    fetched = True
                finally:
                    if not fetched:
                        # what was written is durable and journaled, even when cancelled or
                        # failing. Once every block is in, the flush below waits for the last
                        # files' verifiers instead: they fdatasync and close their files, which
                        # the flush then need not sync again (it synced up to ~150 files here,
                        # 16 ms of the 1 GiB demo's last 40, while the verifiers synced them too)
                        journal.flush()
                    ctx.state.update_task(self.task.id, downloaded_bytes=self.progress.downloaded)
                reporter.cancel()
                items.cancel()
        finally:
            # files verified after the download finished (the last ones) are journaled before
            # anything is committed: a kill during the commit must find them recorded
            journal.flush()
        # the commit that follows moves files out of staging: a file it moves that the journal
        # does not hold as verified would be rebuilt by a resumed run into a folder it left
        unjournaled = files - ctx.state.done_files(self.task.id)
        if unjournaled:
            first = manifest.files[min(unjournaled)].path
            raise EngineError(ErrorCode.INTERNAL_ERROR,
                              f"{len(unjournaled)} staged file(s) not journaled as verified "
                              f"(first: {first}); nothing was moved into the game folder",
                              item=first)



CDN_SOURCES_META = "cdn_sources"


def remember_sources(ctx: EngineContext, grant: TaskGrant) -> None:
    """The edge ids of the latest grant, so Settings can offer them as download servers."""
    ctx.state.set_meta(CDN_SOURCES_META, ",".join(sorted(s.id for s in grant.sources)))
