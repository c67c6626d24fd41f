"""The journals: what survives a kill.

``Journal`` batches block completions of a running task: the touched staged files are
fdatasync'ed, then the blocks (and the files verified meanwhile) are recorded in one SQLite
commit, at most every ``JOURNAL_FLUSH_BYTES`` or ``JOURNAL_FLUSH_SECONDS``, in the background
(the download goes on while a batch is synced; a synchronous ``flush`` takes over a batch still
in flight, so nothing is recorded before its data is durable, nor recorded twice after a
``forget_blocks``). ``SwitchJournal`` is
the plan of an update's switch, written (atomically) before the first rename so a crash in the
middle is rolled forward.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from engine.io.staging import Staging
from engine.io.state import State
from engine.io.threads import run_to_end

# A kill loses at most this much fetched data (plus the blocks in flight). A flush fdatasyncs
# the touched files, which waits for their dirty pages: awaited by the connection that
# triggered it, every 4 MiB stalled one of them ~1 in 20 blocks; now it runs beside the
# download, at most one at a time.
JOURNAL_FLUSH_BYTES = 16 * 1024 * 1024
JOURNAL_FLUSH_SECONDS = 0.5

Batch = tuple[list[int], set[int], list[int]]  # blocks, files to sync, files verified


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
        self._inflight: Batch | None = None  # taken by flush_async, not recorded yet

    @property
    def flushing(self) -> bool:
        return self._inflight is not None

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
        """Synchronous flush (on the loop thread: SQLite objects stay on their thread), with the
        batch of a background flush not recorded yet (cancelled, or still syncing)."""
        blocks, files, verified = self._take()
        if self._inflight is not None:
            b, f, v = self._inflight
            self._inflight = None  # taken over: that flush records nothing when it wakes
            blocks, files, verified = b + blocks, f | files, v + verified
        if blocks:
            self.staging.sync(files)  # data durable before the journal says so
        if blocks or verified:
            self.state.record_progress(self.task_id, blocks, verified)

    async def flush_async(self, executor: ThreadPoolExecutor) -> None:
        """fdatasync in a worker thread, then record blocks and files in one commit. One at a
        time: a second one started while a batch is in flight leaves it alone (several can be
        scheduled before the first runs; one that took an empty batch used to replace the
        in-flight one, which then thought itself taken over and recorded nothing — blocks
        written but never journaled, and a kill during the commit broke the install)."""
        if self._inflight is not None:
            return  # the pending blocks wait for the next flush
        batch = self._take()
        blocks, files, verified = batch
        if not blocks and not verified:
            return
        self._inflight = batch
        if blocks:
            await run_to_end(executor, self.staging.sync, files)
        if self._inflight is not batch:
            return  # a synchronous flush took this batch over (and recorded it)
        self._inflight = None
        if blocks or verified:
            self.state.record_progress(self.task_id, blocks, verified)


@dataclass(frozen=True, slots=True)
class SwitchJournal:
    version_id: str
    replace: tuple[str, ...]  # paths whose new content is staged
    remove: tuple[str, ...]
    dirs: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"versionId": self.version_id, "replace": list(self.replace),
                           "remove": list(self.remove), "dirs": list(self.dirs)})

    @staticmethod
    def from_json(text: str) -> SwitchJournal:
        d = json.loads(text)
        return SwitchJournal(d["versionId"], tuple(d["replace"]), tuple(d["remove"]),
                             tuple(d["dirs"]))
