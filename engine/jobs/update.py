"""Updates, repairs and rollbacks of an installed game, with an atomic, journaled switch.

New files are built in the staging area next to the install (moves cloned or copied, patches
applied, verified local chunks copied, the rest downloaded), every one SHA-256-verified, then
the switch runs from a journal (``switch.json``): old files are moved aside, new ones renamed in,
removed ones dropped, and the installed version recorded. A crash during the switch is rolled
forward on the next run; a failure before it leaves the old version untouched and playable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import shutil
import stat
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

import blake3

from engine.core.errors import EngineError, ErrorCode
from engine.core.events import error_event
from engine.core.lifecycle import TaskKind, TaskState
from engine.core.messages import UpdatePlanned
from engine.core.planner import ChunkWrite, plan_install
from engine.core.sources import CdnSource, SourcePool
from engine.core.updateplan import (
    BuildMethod,
    FileBuild,
    LocalCopy,
    UpdatePlan,
    chunk_build,
    chunk_sources_excluding,
    local_build_memory,
    may_start_local_build,
    merge_wanted,
    plan_repair,
    plan_update,
    with_rebuilds,
)
from engine.io.backend_client import TaskGrant
from engine.io.fsops import (
    atomic_write,
    fsync_dir,
    install_mode,
    remove_empty_parents,
    safe_join,
)
from engine.io.journal import SwitchJournal
from engine.io.localcopy import copy_chunks, copy_or_clone
from engine.io.staging import Staging, remove_task_staging, sweep_staging
from engine.io.state import InstalledGame, TaskRecord
from engine.io.threads import run_to_end
from engine.io.verifiedmeta import VerifiedRecord
from engine.io.verify import VerifyReport, quick_check, remember_verified, scan_install
from engine.jobs.build import StagedBuild
from engine.jobs.context import (
    EngineContext,
    ManifestBase,
    existing_grant,
    fetch_small,
    load_manifest,
    manifest_key,
)
from patcher.chunking import chunk_buffer
from patcher.delta import PatchMethod, apply_patch, apply_patch_to_proven
from patcher.deltaindex import DeltaIndex, decode_delta_index
from patcher.errors import DeltaError, ManifestError
from patcher.manifest import (
    FileEntry,
    Manifest,
    compress_manifest_json,
    is_binary_manifest,
    manifest_to_json,
)
from patcher.sigcheck import PublicKey
from patcher.signing import load_public_key, load_signed_manifest, verify_signature
from patcher.updatedoc import (
    MAX_DOC_BYTES,
    UpdateDoc,
    apply_manifest_delta,
    as_delta_index,
    check_doc_work,
    decode_update_doc,
    derived_entry,
    predicted_json,
)

log = logging.getLogger(__name__)

MAX_DELTA_INDEX = 64 * 1024 * 1024
# Local builds (moves, patches) at once: one per core (each is a worker thread's CPU), and the
# memory their buffers hold together (a patch holds its source, itself and its output whole):
# above it they wait, and a build bigger than it all runs alone
LOCAL_BUILDS = max(1, min(4, os.cpu_count() or 1))
LOCAL_BUILD_MEMORY = 512 * 1024 * 1024
UPDATE_MAX_GAP = 16 * 1024  # measured: 128 kB of bridged gaps for 7.7 kB of chunks at 256 KiB


def cached_manifest(ctx: EngineContext, product_id: str, version_id: str, key_hex: str) -> Manifest:
    kept = ctx.state.cached_manifest_files(product_id, version_id)
    if kept is None:
        raise EngineError(ErrorCode.VERSION_NOT_FOUND, f"no local manifest for {product_id} {version_id}")
    blob_path, sig_path = kept
    try:
        return load_signed_manifest(blob_path.read_bytes(), sig_path.read_bytes(),
                                    load_public_key(key_hex))
    except ManifestError as exc:
        raise EngineError(ErrorCode.from_wire(exc.code, ErrorCode.MANIFEST_INVALID),
                          f"cached manifest of {product_id} {version_id}: {exc.message}",
                          item=exc.field) from exc


async def installed_manifest(ctx: EngineContext, game: InstalledGame) -> Manifest:
    """The signed manifest of the installed version, from the local cache (checked with the
    pinned key): what verify, move and play work from, offline too."""
    return cached_manifest(ctx, game.product_id, game.version_id, await manifest_key(ctx))


def _kind(path: Path) -> str:
    """'none' | 'link' | 'file' | 'dir' | 'other' without following links."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "none"
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else "other"


def switch_conflicts(install_dir: Path, old: Manifest, new: Manifest, rebuilt: list[str],
                     removed: tuple[str, ...]) -> list[str]:
    """Paths the switch would have to replace that the launcher did not put there: a folder
    with content, or a file that is not part of the installed version. Links are damage and are
    replaced (removing a link deletes no data). The update refuses these before it starts."""
    ours = {f.path for f in old.files} | {f.path for f in new.files}
    ours_dirs = set(old.dirs) | {"/".join(p.split("/")[:n]) for p in ours
                                 for n in range(1, p.count("/") + 1)}
    bad: list[str] = []
    for rel in rebuilt + list(removed):
        parts = rel.split("/")
        for n in range(1, len(parts) + 1):
            sub = "/".join(parts[:n])
            kind = _kind(install_dir / sub)
            if kind in ("none", "link"):
                break
            final = n == len(parts)
            if kind == "file" and (not final and sub not in ours):
                bad.append(sub)
                break
            if kind == "dir" and final and sub not in ours_dirs and any((install_dir / sub).iterdir()):
                bad.append(sub)
            if kind == "file" and final and sub not in ours:
                bad.append(sub)
            if kind == "other":
                bad.append(sub)
                break
    return sorted(set(bad))


def _aside(install_dir: Path, rel: str, backup: Path) -> None:
    """Move what stands at ``install_dir/rel`` (a file, a link — never followed — or a folder
    the manifest owns) into the switch backup; deleted only once the switch is recorded."""
    aside = backup / rel
    aside.parent.mkdir(parents=True, exist_ok=True)
    if _kind(aside) == "dir":
        shutil.rmtree(aside)
    os.replace(install_dir / rel, aside)


def _clear_parents(install_dir: Path, rel: str, backup: Path) -> None:
    """Links (or files) standing where ``rel`` needs folders are moved aside."""
    parts = rel.split("/")[:-1]
    for n in range(1, len(parts) + 1):
        sub = "/".join(parts[:n])
        kind = _kind(install_dir / sub)
        if kind == "none":
            return
        if kind != "dir":
            _aside(install_dir, sub, backup)
            return


def switch_files(install_dir: Path, staging: Staging, journal: SwitchJournal,
                 step_delay: float | None = None) -> None:
    """Idempotent: each step checks what is already done, so a rerun after a crash completes it.
    ``step_delay`` (QA only) widens the window in which a kill lands mid-switch."""
    backup = staging.backup
    replace = set(journal.replace)
    for rel in journal.replace + journal.remove:
        _clear_parents(install_dir, rel, backup)
        kind = _kind(install_dir / rel)
        if kind == "none":
            continue
        if rel in replace and _kind(staging.path_of(rel)) == "none":
            continue  # already switched: the live file is the new one
        if rel not in replace and kind == "dir":
            continue  # a folder now stands where a removed file was: not ours to move
        _aside(install_dir, rel, backup)
    touched = {install_dir}
    for rel in journal.replace:
        staged = staging.path_of(rel)
        if _kind(staged) == "file":
            dest = safe_join(install_dir, rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            entry = staging.manifest.file(rel)
            if entry is not None:
                os.chmod(staged, install_mode(entry.mode))
            os.replace(staged, dest)
            touched.add(dest.parent)
            if step_delay:
                time.sleep(step_delay)
    for d in journal.dirs:
        _clear_parents(install_dir, d + "/x", backup)
        if _kind(install_dir / d) not in ("dir", "none"):
            _aside(install_dir, d, backup)
        safe_join(install_dir, d).mkdir(parents=True, exist_ok=True)
    for rel in journal.remove:  # drop folders that only held removed files
        remove_empty_parents(install_dir, rel)
    for folder in touched:
        if _kind(folder) == "dir":
            fsync_dir(folder)


# a repair this soon after a full verify takes the files that verify proved (and nothing has
# touched since: size, mtime, ctime, inode) as whole instead of hashing the game a second time
REPAIR_TRUSTS_VERIFY_S = 600.0


class UpdateRun:
    """kind = update (to the latest or a given version), rollback (to the previous version,
    same machinery) or repair (same version, only damaged files rebuilt). Built files come from
    the shared ``StagedBuild`` (composition)."""

    def __init__(self, ctx: EngineContext, task: TaskRecord) -> None:
        self.ctx, self.task, self.build = ctx, task, StagedBuild.for_task(ctx, task)
        self.progress = self.build.progress
        self.on_started: Callable[[TaskRecord], None] | None = None  # after the backend grant
        # patch id -> what the update document brought: inline bytes, or an external patch
        # fetched to derive the manifest, kept on disk (_spill_dir) rather than in memory
        self._patch_data: dict[str, bytes | Path] = {}
        self._proven: VerifiedRecord | None = None  # the installed files' record, read once

    async def _record(self) -> VerifiedRecord:
        """The verified-metadata record of the installed version: a patch's source whose
        metadata still matches it was proven whole (by the install, an update or a verify) and
        is not hashed again. The patched outputs are checked all the same (their SHA-256, or
        the derived manifest's signature), so a record that vouched wrongly costs a fallback
        to chunks, never a wrong file."""
        if self._proven is None:
            self._proven = await asyncio.to_thread(
                VerifiedRecord.load, self.ctx.settings.data_dir, self.task.product_id,
                self.install_dir)
        return self._proven

    @property
    def install_dir(self) -> Path:
        return self.build.install_dir

    @property
    def _spill_dir(self) -> Path:
        """Where the external patches fetched to derive a manifest wait for the build (one
        folder per product: emptied before each derivation and after each switch)."""
        return self.ctx.settings.data_dir / "update-patches" / self.task.product_id

    async def run(self) -> InstalledGame:
        ctx = self.ctx
        installed = ctx.state.installed_game(self.task.product_id)
        if installed is None:
            raise EngineError(ErrorCode.NOT_INSTALLED, f"{self.task.product_id} is not installed")
        self.build.install_dir = Path(installed.path)
        await asyncio.to_thread(sweep_staging, self.install_dir, ctx.state.resumable_task_ids())
        key_hex = await manifest_key(ctx)
        old = cached_manifest(ctx, installed.product_id, installed.version_id, key_hex)
        switch_pending = (self.install_dir / ".launcher-staging" / self.task.id / "switch.json")
        if self.task.kind.changes_version and not installed.dirty \
                and self.task.version_id == installed.version_id and not switch_pending.exists():
            # asked for the version it has, or killed after the switch was recorded
            return await self._already_there(installed)
        try:
            grant = await self._grant(installed)
        except EngineError as exc:
            if exc.code == ErrorCode.ALREADY_UP_TO_DATE and not installed.dirty:
                return await self._already_there(installed)
            raise
        if self.on_started is not None:
            self.on_started(ctx.state.task(self.task.id))
        pool = SourcePool(list(grant.sources))
        delta: DeltaIndex | None = None
        base: ManifestBase | None = None
        if self.task.kind is not TaskKind.REPAIR:
            # the update document first: with it, the new manifest is derived and checked
            # against its signature; without it, the signed delta index names the manifest patch
            delta = await self._load_update_doc(pool, grant, key_hex, old)
        if self.task.kind is not TaskKind.REPAIR and delta is None:
            delta = await self._load_delta(pool, grant, key_hex)
            if delta is not None and delta.manifest_patch is not None \
                    and delta.from_version == installed.version_id:
                kept = ctx.state.cached_manifest_files(installed.product_id, installed.version_id)
                if kept is not None:
                    base = ManifestBase(await asyncio.to_thread(_json_blob, kept[0], old),
                                        delta.manifest_patch)
        new = await load_manifest(ctx, pool, grant, base=base)
        staging = Staging(self.install_dir, self.task.id, new,
                          direct_writes=ctx.settings.direct_writes)
        journal_path = staging.root / "switch.json"
        if journal_path.exists():  # crashed mid-switch: roll forward
            return await self._switch(installed, new, staging,
                                      SwitchJournal.from_json(journal_path.read_text()))
        if self.task.kind is TaskKind.REPAIR:
            damaged, unusable = await self._find_damaged(new)
            plan = plan_repair(new, damaged, unusable)
        else:
            plan = plan_update(old, new, delta)
            # unchanged files that went missing, changed size or became links are rebuilt too:
            # an update leaves a whole tree, not just the changed files
            rebuilt = {b.file_index for b in plan.builds}
            keep = [f.path for i, f in enumerate(new.files) if i not in rebuilt]
            bad = set(await asyncio.to_thread(quick_check, self.install_dir, new, keep))
            if bad:
                log.warning("%d unchanged file(s) missing or damaged (first: %s); rebuilding them",
                            len(bad), sorted(bad)[0])
                sources = chunk_sources_excluding(old, bad)
                plan = with_rebuilds(plan, new, {i for i, f in enumerate(new.files)
                                                 if f.path in bad}, sources)
        conflicts = switch_conflicts(self.install_dir, old, new,
                                     [new.files[b.file_index].path for b in plan.builds],
                                     plan.remove)
        if conflicts:
            raise EngineError(ErrorCode.PATH_CONFLICT, f"{len(conflicts)} path(s) in {self.install_dir} "
                              f"hold files the launcher did not put there and the new version "
                              f"needs: {', '.join(conflicts[:5])}; move them away and retry — "
                              "nothing was changed", item=conflicts[0])
        self.ctx.bus.publish(UpdatePlanned(
            self.task.id, new.product_id, old.version_id, new.version_id, **plan.summary()))
        try:
            await self._build(grant, pool, old, new, plan, staging)
        finally:
            staging.close()
        journal = SwitchJournal(
            new.version_id,
            tuple(new.files[b.file_index].path for b in plan.builds),
            tuple(p for p in plan.remove),
            new.dirs,
        )
        await asyncio.to_thread(atomic_write, journal_path, journal.to_json().encode())
        return await self._switch(installed, new, staging, journal)

    async def _refresh(self) -> tuple[CdnSource, ...]:
        backend_task_id = self.ctx.state.task(self.task.id).backend_task_id
        assert backend_task_id is not None
        return await self.ctx.api.refresh_sources(backend_task_id)

    async def _already_there(self, installed: InstalledGame) -> InstalledGame:
        """Nothing to change: clean up what a killed run left, report the version it has."""
        await asyncio.to_thread(remove_task_staging, self.install_dir, self.task.id)
        self.ctx.state.clear_journal(self.task.id)
        self.ctx.state.update_task(self.task.id, version_id=installed.version_id)
        log.info("%s is already at %s", installed.product_id, installed.version_id)
        return installed

    async def _grant(self, installed: InstalledGame) -> TaskGrant:
        # a remote download bound here, or this task run again: its own backend task's grant
        bound = await existing_grant(self.ctx, self.task)
        if bound is not None:
            return bound
        api = self.ctx.api
        if self.task.kind is TaskKind.UPDATE:
            grant = await api.initiate_update(self.task.product_id, installed.version_id,
                                              self.task.version_id)
        else:
            grant = await api.create_task(self.task.product_id,
                                          self.task.version_id or installed.version_id,
                                          str(installed.path), self.task.priority)
        self.ctx.state.update_task(self.task.id, backend_task_id=grant.backend_task_id,
                                   version_id=grant.version_id)
        return grant

    async def _load_delta(self, pool: SourcePool, grant: TaskGrant, key_hex: str) -> DeltaIndex | None:
        """The signed delta index: format 2 (every patch kind, the manifest patch) beside the
        format-1 index the grant names, else format 1 (a store published before format 2)."""
        if not grant.delta_path or not grant.delta_signature_path:
            return None
        key = load_public_key(key_hex)
        v2 = v2_delta_paths(grant.delta_path, grant.delta_signature_path)
        for (path, sig_path), optional in ((v2, True),
                                           ((grant.delta_path, grant.delta_signature_path), False)):
            if path is None or sig_path is None:
                continue
            try:
                attempts = max(2, len(pool.sources)) if optional else None
                sig = await fetch_small(self.ctx, pool, sig_path, 1024, refresh=self._refresh,
                                        attempts=attempts)
                blob = await fetch_small(self.ctx, pool, path, MAX_DELTA_INDEX,
                                         check=_signed_by(sig, key), refresh=self._refresh,
                                         attempts=attempts)
                delta = decode_delta_index(blob)
                self.progress.downloaded += len(sig) + len(blob)
                return delta
            except (EngineError, ManifestError) as exc:
                # patches only save bytes; without them the update still works from chunks
                log.warning("delta index %s unavailable: %s", path, exc)
        log.warning("no delta index: updating from chunks")
        return None

    async def _load_update_doc(self, pool: SourcePool, grant: TaskGrant, key_hex: str,
                               old: Manifest) -> DeltaIndex | None:
        """The format-3 update document of this step (``patcher.updatedoc``): its patches are
        applied to the installed files, the outputs chunked and hashed, the new manifest rebuilt
        from them and its delta, and **checked against the new manifest's signature** before it
        is cached; the patches then build the files as any patch does. None (logged) on any
        failure: the caller falls back to the signed delta index and the full manifest.

        The document is unsigned, so what it may cost is checked before anything is fetched,
        read or built (``check_doc_work``: the prediction within the manifest loader's limits,
        outputs + sources + external patches within a budget of the installed size). The path
        is optional, so *any* failure of it (a refused budget, but also MemoryError on a huge
        source, RecursionError, a bug) is logged with its type and falls back; only
        cancellation (BaseException) goes through."""
        ctx = self.ctx
        rel = v3_doc_path(grant.delta_path) if grant.delta_path else None
        if rel is None or old.version_id == grant.version_id:
            return None
        # a derived manifest is kept in the JSON form it is derived as
        blob_path, sig_path = ctx.state.manifest_files(grant.product_id, grant.version_id)
        attempts = max(2, len(pool.sources))  # optional: a short try before the fallback
        try:
            doc_blob = await fetch_small(ctx, pool, rel, MAX_DOC_BYTES, refresh=self._refresh,
                                         attempts=attempts)
            doc = await asyncio.to_thread(decode_update_doc, doc_blob, old)
            fetched = len(doc_blob)
            work = await asyncio.to_thread(check_doc_work, doc, old)
            log.debug("update document %s: %d file(s), >= %d row(s), %d byte(s) of work",
                      rel, work.files, work.rows, work.total_bytes)
            data: dict[str, bytes | Path] = {
                p.patch_id: p.data for p in doc.patches if p.data is not None}
            cached = ctx.state.cached_manifest_files(grant.product_id, grant.version_id) is not None
            if not cached:  # derive the manifest: every patch is needed now
                # external patches go to disk as they arrive: only one is in memory at a time
                spill = self._spill_dir
                await asyncio.to_thread(shutil.rmtree, spill, True)
                await asyncio.to_thread(lambda: spill.mkdir(mode=0o700, parents=True))
                for p in doc.patches:
                    if p.patch_id not in data:
                        patch = await fetch_small(
                            ctx, pool, f"{grant.product_id}/patches/{p.patch_id}.patch",
                            p.patch_size, check=_blake3_is(p.patch_id, p.path),
                            refresh=self._refresh, attempts=attempts)
                        fetched += len(patch)
                        kept = spill / p.patch_id
                        await asyncio.to_thread(kept.write_bytes, patch)
                        data[p.patch_id] = kept
                        del patch
                sig = await fetch_small(ctx, pool, grant.signature_path, 1024,
                                        refresh=self._refresh)
                fetched += len(sig)
                blob = await asyncio.to_thread(derive_manifest_blob, self.install_dir, old, doc,
                                               data, grant.version_id, await self._record())
                key = load_public_key(key_hex)
                new = await asyncio.to_thread(load_signed_manifest, blob, sig, key)
                if (new.product_id, new.version_id) != (grant.product_id, grant.version_id):
                    raise ManifestError("MANIFEST_INVALID", "manifest",
                                        "derived for another product or version")
                blob_path.parent.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(atomic_write, sig_path, sig)
                await asyncio.to_thread(atomic_write, blob_path, blob)
            else:
                new = await asyncio.to_thread(cached_manifest, ctx, grant.product_id,
                                              grant.version_id, key_hex)
        except Exception as exc:  # optional path: every failure falls back (see above)
            log.warning("MANIFEST_PATCH_FAILED: update document %s unusable (%s: %s); using "
                        "the signed delta index", rel, type(exc).__name__, exc)
            return None
        self.progress.downloaded += fetched
        self._patch_data = data
        log.info("update document %s: %d patch(es), manifest %s", rel, len(doc.patches),
                 "from the cache" if cached else "derived and its signature checked")
        return as_delta_index(doc, old, new)

    async def _find_damaged(self, manifest: Manifest) -> tuple[set[int], set[str]]:
        """Files to rebuild, and paths that cannot serve as chunk sources (missing, wrong size);
        a damaged file still lends its good chunks."""
        ctx = self.ctx

        def scan() -> VerifyReport:
            # right after a full verify (``verify --repair``) the files it proved and nothing has
            # touched since are not hashed again: only the damaged and the changed ones are;
            # otherwise the repair hashes everything, as a full verify would
            record = VerifiedRecord.load(ctx.settings.data_dir, manifest.product_id,
                                         self.install_dir)
            trust = record.fresh_full_verify(time.time(), REPAIR_TRUSTS_VERIFY_S)
            report = scan_install(self.install_dir, manifest, trust, record=record)
            if trust:
                log.info("repair of %s: %d file(s) proven by the verify %.0f s ago, not re-hashed",
                         manifest.product_id, report.unchanged_files,
                         time.time() - (record.full_verify_at or 0))
            else:
                record.full_verify_at = time.time()
            record.save()
            return report

        report = await asyncio.to_thread(scan)
        bad = report.damaged_paths()
        return ({i for i, f in enumerate(manifest.files) if f.path in bad},
                set(report.missing) | set(report.wrong_size) | set(report.links))

    async def _build(self, grant: TaskGrant, pool: SourcePool, old: Manifest, new: Manifest,
                     plan: UpdatePlan, staging: Staging) -> None:
        ctx = self.ctx
        verified = ctx.state.done_files(self.task.id)
        todo = [b for b in plan.builds if b.file_index not in verified]
        await self.build.prepare_staging(staging, new, [b.file_index for b in todo])
        fetch: dict[str, list[ChunkWrite]] = {
            cid: [w for w in writes if w.file_index not in verified]
            for cid, writes in plan.fetch.items()}
        loop = asyncio.get_running_loop()
        sources = chunk_sources_excluding(old, set())
        # moves and patches first: each is all-or-nothing, with chunks as the fallback
        local_builds = [b for b in todo if b.method is not BuildMethod.CHUNKS]
        built = await self._build_locally(local_builds, pool, old, new, staging)
        for b in local_builds:
            if b.file_index in built:
                continue
            await asyncio.to_thread(staging.prepare, [b.file_index])  # back to full size
            local, wanted = chunk_build(new, b.file_index, sources)
            plan = _with_copies(plan, local)
            merge_wanted(fetch, wanted)
        copies = [c for c in plan.copies
                  if any(w.file_index not in verified for w in c.writes)]
        failed, written = await loop.run_in_executor(ctx.executor, copy_chunks, self.install_dir,
                                                     staging, copies)
        self.progress.written += written
        if failed:  # damaged or missing local bytes: fetch them instead
            log.warning("%d local chunk(s) failed their check (first in %s); fetching them",
                        len(failed), failed[0].source_path)
        for c in failed:
            merge_wanted(fetch, {c.chunk_id: list(c.writes)})
        done_blocks = ctx.state.done_blocks(self.task.id)
        # updates fetch scattered blocks: bridging big gaps would pay for bytes nobody needs
        gap = min(ctx.settings.max_gap_bytes, UPDATE_MAX_GAP)
        dl = plan_install(new, done_blocks=done_blocks, wanted=fetch,
                          max_range=ctx.settings.max_range_bytes, max_gap=gap)
        full = plan_install(new, wanted=plan.fetch, max_range=ctx.settings.max_range_bytes,
                            max_gap=gap)
        self.progress.download_total = max(full.download_bytes, dl.download_bytes) + plan.patch_bytes
        self.progress.install_total = plan.write_bytes
        ctx.state.update_task(self.task.id, total_bytes=new.total_size,
                              download_bytes=self.progress.download_total)
        files = {b.file_index for b in todo}
        await self.build.download_and_verify(ctx, grant, pool, new, dl, staging, files)

    async def _build_locally(self, builds: list[FileBuild], pool: SourcePool, old: Manifest,
                             new: Manifest, staging: Staging) -> set[int]:
        """Moves and patches, several at once (each is a worker thread's CPU: decompressing,
        applying, hashing; one at a time an update used one of the cores), started in plan
        order within LOCAL_BUILDS and LOCAL_BUILD_MEMORY. The file indexes built and verified,
        each journaled as soon as it is, so a resumed run never builds it again."""
        built: set[int] = set()
        gate = _LocalBuildGate(LOCAL_BUILDS, LOCAL_BUILD_MEMORY)
        if any(b.method is BuildMethod.PATCH for b in builds):
            await self._record()  # read here, once: the patches below would each read it at once

        async def build(b: FileBuild) -> None:
            cost = local_build_memory(b, old)
            await gate.enter(cost)
            try:
                ok = (await self._move(b, new, staging) if b.method is BuildMethod.MOVE
                      else await self._patch(b, pool, old, staging))
                if ok:
                    await self.build.record_verified(staging, b.file_index)
                    built.add(b.file_index)
            finally:
                gate.leave(cost)

        try:
            async with asyncio.TaskGroup() as tg:
                for b in builds:
                    tg.create_task(build(b))
        except BaseExceptionGroup as group:
            # what one build raised (the others were cancelled by it), as when they ran one
            # after another: callers see the error itself, not a group around it
            first = group.exceptions[0]
            for other in group.exceptions[1:]:
                log.debug("local build also failed: %r", other)
            raise first from None
        return built

    async def _move(self, b: FileBuild, new: Manifest, staging: Staging) -> bool:
        """Clone or copy a renamed file and check it; False (logged, naming the file) means the
        local source is missing or damaged: build it from chunks instead."""
        assert b.move_source is not None
        staging.close_file(b.file_index)
        try:
            src = safe_join(self.install_dir, b.move_source)
            dest = staging.path(b.file_index)
            # waited for when cancelled (engine/io/threads.py): a copy still running after a
            # pause or cancel would write into a staging area that is being closed or removed
            written = await run_to_end(None, copy_or_clone, src, dest)
            ok = await run_to_end(None, staging.verify, b.file_index)
        except (OSError, EngineError) as exc:
            ok, written, reason = False, 0, str(exc)
        else:
            reason = "its content differs from the manifest"
        if not ok:
            log.warning("local copy %s -> %s unusable (%s); building it from chunks",
                        b.move_source, new.files[b.file_index].path, reason)
            return False
        self.progress.written += written
        return True

    async def _patch(self, b: FileBuild, pool: SourcePool, old: Manifest, staging: Staging) -> bool:
        """Fetch, check and apply one patch; False (logged, not fatal) means use chunks: for any
        failure (a source grown past its installed size is refused by its size, not read; an
        out-of-memory patch is one file built from chunks, not a failed update)."""
        p = b.patch
        assert p is not None
        try:
            def check(data: bytes) -> None:
                if blake3.blake3(data).hexdigest() != p.patch_id:
                    raise EngineError(ErrorCode.DELTA_PATCH_APPLICATION_FAILED,
                                      f"patch for {p.path}: bytes do not match its id", item=p.path)

            # a patch is optional (its file's chunks are the fallback): one try per edge, not
            # the full backoff a corrupt patch used to cost (2.5 minutes before the fallback)
            held = self._patch_data.get(p.patch_id)  # carried by the update document
            data: bytes | None = held if isinstance(held, bytes) else None
            if isinstance(held, Path):
                try:
                    data = await asyncio.to_thread(held.read_bytes)
                except OSError as exc:  # gone meanwhile: fetched again below
                    log.warning("patch %s kept for the build is unreadable (%s)", held, exc)
            if data is None:
                data = await fetch_small(self.ctx, pool,
                                         f"{self.task.product_id}/patches/{p.patch_id}.patch",
                                         p.patch_size, check=check, refresh=self._refresh,
                                         attempts=max(2, len(pool.sources)))
                self.progress.downloaded += len(data)
            else:
                check(data)
            if p.source_path is None:  # no source: a whole-file frame of a new file
                out = await asyncio.to_thread(apply_patch, PatchMethod(p.method), b"", data,
                                              old_sha256=p.from_sha256, new_sha256=p.to_sha256,
                                              new_size=p.to_size)
            else:
                src = old.file(p.source_path)
                if src is None or src.hash_sha256 != p.from_sha256:
                    raise DeltaError(f"{p.source_path} is not the installed file the patch is for")
                old_bytes = await asyncio.to_thread(_read_source, self.install_dir, src,
                                                    await self._record())
                out = await asyncio.to_thread(apply_patch_to_proven, PatchMethod(p.method),
                                              old_bytes, data, new_sha256=p.to_sha256,
                                              new_size=p.to_size)
                del old_bytes
            staging.close_file(b.file_index)
            await run_to_end(None, _write_at, staging, b.file_index, out)
            self.progress.written += len(out)
            return True
        except Exception as exc:  # optional: every failure falls back to chunks (see above)
            log.warning("DELTA_PATCH_APPLICATION_FAILED: %s: %s: %s; falling back to chunks",
                        p.path, type(exc).__name__, exc)
            self.ctx.bus.publish(error_event(
                self.task.id, ErrorCode.DELTA_PATCH_APPLICATION_FAILED,
                f"{exc}; falling back to chunks", p.path, fatal=False))
            return False

    async def _switch(self, installed: InstalledGame, new: Manifest, staging: Staging,
                      journal: SwitchJournal) -> InstalledGame:
        ctx = self.ctx
        self.build.enter(TaskState.VERIFYING)
        ctx.state.set_installed(InstalledGame(
            installed.product_id, installed.version_id, installed.path, installed.size,
            installed.installed_at, True, installed.previous_version))  # dirty: not launchable
        await asyncio.to_thread(switch_files, self.install_dir, staging, journal,
                                ctx.settings.qa_switch_delay_s)
        # the switched-in files were proven whole in staging; unchanged ones keep their entry
        await asyncio.to_thread(remember_verified, ctx.settings.data_dir, self.install_dir, new,
                                list(journal.replace))
        changed_version = installed.version_id != new.version_id
        game = InstalledGame(
            product_id=new.product_id, version_id=new.version_id, path=installed.path,
            size=new.total_size, installed_at=time.time(), dirty=False,
            previous_version=installed.version_id if changed_version else installed.previous_version,
        )
        ctx.state.set_installed(game)
        await asyncio.to_thread(staging.remove)
        await asyncio.to_thread(shutil.rmtree, self._spill_dir, True)
        ctx.state.clear_journal(self.task.id)
        return game


class _LocalBuildGate:
    """Admits local builds in the order they ask (``may_start_local_build`` decides when): a
    big patch waiting to run alone is never passed over by the smaller ones behind it."""

    def __init__(self, max_running: int, memory_limit: int) -> None:
        self.max_running = max_running
        self.memory_limit = memory_limit
        self.running = 0
        self.in_use = 0
        self.waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def enter(self, cost: int) -> None:
        if not self.waiting and self._fits(cost):
            self._admit(cost)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((cost, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave(cost)  # admitted as it was cancelled: its place goes on
            else:
                # cancelled while waiting (a whole task group at once, say): out of the line,
                # unless a wake-up already dropped it
                if (cost, turn) in self.waiting:
                    self.waiting.remove((cost, turn))
                self._wake()
            raise

    def leave(self, cost: int) -> None:
        self.running -= 1
        self.in_use -= cost
        self._wake()

    def _fits(self, cost: int) -> bool:
        return may_start_local_build(self.running, self.in_use, cost, self.max_running,
                                     self.memory_limit)

    def _admit(self, cost: int) -> None:
        self.running += 1
        self.in_use += cost

    def _wake(self) -> None:
        while self.waiting:
            cost, turn = self.waiting[0]
            if turn.done():  # cancelled while waiting: its build is leaving on its own
                self.waiting.popleft()
                continue
            if not self._fits(cost):
                return
            self.waiting.popleft()
            self._admit(cost)
            turn.set_result(None)


def _blake3_is(patch_id: str, path: str) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        if blake3.blake3(data).hexdigest() != patch_id:
            raise EngineError(ErrorCode.DELTA_PATCH_APPLICATION_FAILED,
                              f"patch for {path}: bytes do not match its id", item=path)
    return check


def _json_blob(path: Path, manifest: Manifest) -> bytes:
    """The installed manifest's JSON form, signed bytes, which a manifest patch applies to: the
    kept file, or from a binary copy the JSON written again from ``manifest`` (its decode):
    the publisher's bytes when the same zstd compresses them, and the patched result is checked
    against the new signature either way (other bytes only cost the full manifest)."""
    blob = path.read_bytes()
    if is_binary_manifest(blob):
        return compress_manifest_json(manifest_to_json(manifest))
    return blob


def derive_manifest_blob(install_dir: Path, old: Manifest, doc: UpdateDoc,
                         data: Mapping[str, bytes | Path], to_version: str,
                         record: VerifiedRecord | None = None) -> bytes:
    """The new manifest's bytes as the publisher signed them, if the document is right: each
    patch applied to its installed source (whose SHA-256 the installed manifest gives), the
    output chunked and hashed as the publisher does, the prediction from those rows patched
    with the document's manifest delta. Nothing here is trusted until the caller has checked
    the new signature over the result; outputs are dropped (the build applies them again,
    checked against the signed hashes).

    Its cost is checked first (``check_doc_work``, raising before any source is read); each
    installed source is read once and hashed once, however many patches name it (patches are
    taken source by source, one source in memory at a time), and never past the size the
    installed manifest gives it; not hashed where ``record`` vouches for it (``_read_source``)."""
    check_doc_work(doc, old)
    rows: list[FileEntry | None] = [None] * len(doc.patches)
    order = sorted(range(len(doc.patches)), key=lambda i: doc.patches[i].source_path or "")
    current: tuple[str | None, bytes] = (None, b"")
    for i in order:
        p = doc.patches[i]
        if p.source_path is not None and p.source_path != current[0]:
            current = (None, b"")  # the previous source is dropped before the next is read
            src = old.file(p.source_path)
            if src is None:
                raise DeltaError(f"{p.path}: {p.source_path} is not in the installed version")
            current = (p.source_path, _read_source(install_dir, src, record))
        old_bytes = current[1] if p.source_path is not None else b""
        held = data[p.patch_id]  # an external patch is read from disk when its turn comes
        patch = held if isinstance(held, bytes) else held.read_bytes()
        out = apply_patch_to_proven(PatchMethod(p.method), old_bytes, patch,
                                    new_sha256=None, new_size=p.to_size)
        del patch
        del old_bytes
        cf = chunk_buffer(out)
        del out
        rows[i] = derived_entry(p.path, cf.size, cf.sha256,
                                [(c.offset, c.size, c.id) for c in cf.chunks], old,
                                p.source_path)
    current = (None, b"")  # the last source is not held while the manifest is rebuilt
    derived = [r for r in rows if r is not None]
    new_json = apply_manifest_delta(
        predicted_json(old, to_version, derived, doc.blocks, doc.layout), doc.manifest_delta)
    return compress_manifest_json(new_json)


def _read_source(install_dir: Path, entry: FileEntry,
                 record: VerifiedRecord | None = None) -> bytes:
    """An installed file as the installed manifest describes it, or DeltaError: never more than
    its manifest size is read (a file grown on disk is refused by its size, not read whole),
    and its SHA-256 is checked once here rather than by every patch that names it — or not at
    all where the verified-metadata ``record`` proves it: its size, mtime, ctime, inode and
    device, taken before the read, are those of a file proven to have this SHA-256 (the
    trust of ``verify --quick``; an update of the 256 MB demo hashed 0.34 CPU-s of sources)."""
    with safe_join(install_dir, entry.path).open("rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_size != entry.size:
            raise DeltaError(f"{entry.path}: {st.st_size} bytes on disk, the installed manifest "
                             f"says {entry.size}")
        data = fh.read(entry.size + 1)
    proven = record is not None and record.matches(entry.path, entry.hash_sha256, st)
    if len(data) != entry.size or (
            not proven and hashlib.sha256(data).hexdigest() != entry.hash_sha256):
        raise DeltaError(f"{entry.path}: no longer the installed version's file (size or "
                         f"SHA-256 differs)")
    return data


def v3_doc_path(delta_path: str) -> str | None:
    """Where the format-3 update document sits beside the format-1 index the backend names
    (``a--b.delta`` -> ``a--b.v3.delta``)."""
    if not delta_path.endswith(".delta"):
        return None
    return delta_path[: -len(".delta")] + ".v3.delta"


def _signed_by(sig: bytes, key: PublicKey) -> Callable[[bytes], None]:
    return lambda data: verify_signature(data, sig, key)


def v2_delta_paths(delta_path: str, signature_path: str) -> tuple[str | None, str | None]:
    """Where the format-2 delta index sits beside the format-1 one the backend names
    (``a--b.delta`` / ``a--b.sig`` -> ``a--b.v2.delta`` / ``a--b.v2.sig``)."""
    if not delta_path.endswith(".delta") or not signature_path.endswith(".sig"):
        return None, None
    return delta_path[: -len(".delta")] + ".v2.delta", signature_path[: -len(".sig")] + ".v2.sig"


def _with_copies(plan: UpdatePlan, extra: list[LocalCopy]) -> UpdatePlan:
    return dataclasses.replace(plan, copies=plan.copies + tuple(extra))


def _write_at(staging: Staging, file_index: int, data: bytes) -> None:
    # a worker thread: through the held fd (a cancel may close staging while it writes)
    staging.write_whole(file_index, data)
