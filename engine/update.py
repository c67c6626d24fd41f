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
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import blake3

from engine.backend_client import TaskGrant
from engine.errors import EngineError
from engine.events import status_event
from engine.installer import (
    EngineContext,
    InstallRun,
    fetch_small,
    load_manifest,
    manifest_key,
)
from engine.localcopy import copy_chunks, copy_or_clone
from engine.planner import ChunkWrite, plan_install
from engine.sources import SourcePool
from engine.staging import STAGING_DIR, Staging, fsync_dir, safe_join
from engine.state import InstalledGame
from engine.updateplan import (
    BuildMethod,
    FileBuild,
    LocalCopy,
    UpdatePlan,
    chunk_build,
    chunk_sources_excluding,
    merge_wanted,
    plan_repair,
    plan_update,
)
from engine.verify import scan_install
from patcher.deltaindex import DeltaIndex, decode_delta_index
from patcher.errors import DeltaError, ManifestError
from patcher.manifest import Manifest
from patcher.signing import load_public_key, load_signed_manifest, verify_signature

log = logging.getLogger(__name__)

MAX_DELTA_INDEX = 64 * 1024 * 1024
UPDATE_MAX_GAP = 16 * 1024  # measured: 128 kB of bridged gaps for 7.7 kB of chunks at 256 KiB


def cached_manifest(ctx: EngineContext, product_id: str, version_id: str, key_hex: str) -> Manifest:
    blob_path, sig_path = ctx.state.manifest_files(product_id, version_id)
    if not blob_path.exists():
        raise EngineError("VERSION_NOT_FOUND", f"no local manifest for {product_id} {version_id}")
    try:
        return load_signed_manifest(blob_path.read_bytes(), sig_path.read_bytes(),
                                    load_public_key(key_hex))
    except ManifestError as exc:
        raise EngineError(exc.code, f"cached manifest of {product_id} {version_id}: {exc.message}",
                          item=exc.field) from exc


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


def switch_files(install_dir: Path, staging: Staging, journal: SwitchJournal,
                 step_delay: float | None = None) -> None:
    """Idempotent: each step checks what is already done, so a rerun after a crash completes it.
    ``step_delay`` (QA only) widens the window in which a kill lands mid-switch."""
    backup = staging.root.with_name(staging.root.name + ".old")
    for rel in journal.replace + journal.remove:
        live = safe_join(install_dir, rel)
        if live.exists() or live.is_symlink():
            if rel in journal.replace and not staging.path_of(rel).exists():
                continue  # already switched: the live file is the new one
            aside = safe_join(backup, rel)
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(live, aside)
    for rel in journal.replace:
        staged = staging.path_of(rel)
        if staged.exists():
            dest = safe_join(install_dir, rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            entry = staging.manifest.file(rel)
            if entry is not None:
                os.chmod(staged, entry.mode)
            os.replace(staged, dest)
            if step_delay:
                time.sleep(step_delay)
    for d in journal.dirs:
        safe_join(install_dir, d).mkdir(parents=True, exist_ok=True)
    for rel in journal.remove:  # drop folders that only held removed files
        parent = safe_join(install_dir, rel).parent
        while parent != install_dir.resolve() and parent.exists() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    fsync_dir(install_dir)


class UpdateRun(InstallRun):
    """kind = update (to the latest or a given version), rollback (to the previous version,
    same machinery) or repair (same version, only damaged files rebuilt)."""

    async def run(self) -> InstalledGame:
        ctx = self.ctx
        installed = ctx.state.installed_game(self.task.product_id)
        if installed is None:
            raise EngineError("NOT_INSTALLED", f"{self.task.product_id} is not installed")
        self.install_dir = Path(installed.path)
        key_hex = await manifest_key(ctx)
        old = cached_manifest(ctx, installed.product_id, installed.version_id, key_hex)
        grant = await self._grant(installed)
        if self.on_started is not None:
            self.on_started(ctx.state.task(self.task.id))
        pool = SourcePool(list(grant.sources))
        new = await load_manifest(ctx, pool, grant)
        staging = Staging(self.install_dir, self.task.id, new)
        journal_path = staging.root / "switch.json"
        if journal_path.exists():  # crashed mid-switch: roll forward
            return await self._switch(installed, new, staging,
                                      SwitchJournal.from_json(journal_path.read_text()))
        if self.task.kind == "repair":
            damaged, unusable = await self._find_damaged(new)
            plan = plan_repair(new, damaged, unusable)
        else:
            delta = await self._load_delta(pool, grant, key_hex)
            plan = plan_update(old, new, delta)
        self.ctx.bus.publish({"type": "updatePlan", "payload": {
            "taskId": self.task.id, "productId": new.product_id, "fromVersion": old.version_id,
            "toVersion": new.version_id, **plan.summary()}})
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
        tmp = journal_path.with_suffix(".tmp")
        tmp.write_text(journal.to_json())
        os.replace(tmp, journal_path)
        fsync_dir(staging.root)
        return await self._switch(installed, new, staging, journal)

    async def _grant(self, installed: InstalledGame) -> TaskGrant:
        api = self.ctx.api
        if self.task.kind == "update":
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
        if not grant.delta_path or not grant.delta_signature_path:
            return None
        try:
            blob = await fetch_small(self.ctx, pool, grant.delta_path, MAX_DELTA_INDEX)
            sig = await fetch_small(self.ctx, pool, grant.delta_signature_path, 1024)
            verify_signature(blob, sig, load_public_key(key_hex))
            return decode_delta_index(blob)
        except (EngineError, ManifestError) as exc:
            # patches only save bytes; without them the update still works from chunks
            log.warning("delta index unavailable, updating from chunks: %s", exc)
            return None

    async def _find_damaged(self, manifest: Manifest) -> tuple[set[int], set[str]]:
        """Files to rebuild, and paths that cannot serve as chunk sources (missing, wrong size);
        a damaged file still lends its good chunks."""
        report = await asyncio.to_thread(scan_install, self.install_dir, manifest, False)
        bad = report.damaged_paths()
        return ({i for i, f in enumerate(manifest.files) if f.path in bad},
                set(report.missing) | set(report.wrong_size))

    async def _build(self, grant: TaskGrant, pool: SourcePool, old: Manifest, new: Manifest,
                     plan: UpdatePlan, staging: Staging) -> None:
        ctx = self.ctx
        verified = ctx.state.done_files(self.task.id)
        todo = [b for b in plan.builds if b.file_index not in verified]
        await self._prepare_staging(staging, new, [b.file_index for b in todo])
        fetch: dict[str, list[ChunkWrite]] = {
            cid: [w for w in writes if w.file_index not in verified]
            for cid, writes in plan.fetch.items()}
        loop = asyncio.get_running_loop()
        sources = chunk_sources_excluding(old, set())
        # moves and patches first: each is all-or-nothing, with chunks as the fallback
        for b in todo:
            if b.method is BuildMethod.MOVE:
                await self._move(b, new, staging)
            elif b.method is BuildMethod.PATCH and not await self._patch(b, pool, staging):
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
        await self._download_and_verify(ctx, grant, pool, new, dl, staging, files)

    async def _move(self, b: FileBuild, new: Manifest, staging: Staging) -> None:
        assert b.move_source is not None
        src = safe_join(self.install_dir, b.move_source)
        dest = staging.path(b.file_index)
        staging.close_file(b.file_index)
        written = await asyncio.to_thread(copy_or_clone, src, dest)
        self.progress.written += written

    async def _patch(self, b: FileBuild, pool: SourcePool, staging: Staging) -> bool:
        """Fetch, check and apply one patch; False (logged, not fatal) means use chunks."""
        from patcher.delta import PatchMethod, apply_patch

        p = b.patch
        assert p is not None
        try:
            data = await fetch_small(self.ctx, pool, f"{self.task.product_id}/patches/{p.patch_id}.patch",
                                     p.patch_size)
            self.progress.downloaded += len(data)
            if blake3.blake3(data).hexdigest() != p.patch_id:
                raise DeltaError(f"patch for {p.path}: bytes do not match its id")
            source = safe_join(self.install_dir, p.source_path)
            old_bytes = await asyncio.to_thread(source.read_bytes)
            out = await asyncio.to_thread(apply_patch, PatchMethod(p.method), old_bytes, data,
                                          old_sha256=p.from_sha256, new_sha256=p.to_sha256,
                                          new_size=p.to_size)
            await asyncio.to_thread(_write_at, staging, b.file_index, out)
            self.progress.written += len(out)
            return True
        except (DeltaError, EngineError, OSError) as exc:
            log.warning("DELTA_PATCH_APPLICATION_FAILED: %s: %s; falling back to chunks", p.path, exc)
            self.ctx.bus.publish({"type": "downloadError", "payload": {
                "taskId": self.task.id, "itemId": p.path, "errorCode": "DELTA_PATCH_APPLICATION_FAILED",
                "errorMessage": f"{exc}; falling back to chunks", "fatal": False}})
            return False

    async def _switch(self, installed: InstalledGame, new: Manifest, staging: Staging,
                      journal: SwitchJournal) -> InstalledGame:
        ctx = self.ctx
        ctx.bus.publish(status_event(self.task.id, "verifying", product_id=new.product_id))
        ctx.state.set_installed(InstalledGame(
            installed.product_id, installed.version_id, installed.path, installed.size,
            installed.installed_at, True, installed.previous_version))  # dirty: not launchable
        await asyncio.to_thread(switch_files, self.install_dir, staging, journal,
                                ctx.settings.qa_switch_delay_s)
        changed_version = installed.version_id != new.version_id
        game = InstalledGame(
            product_id=new.product_id, version_id=new.version_id, path=installed.path,
            size=new.total_size, installed_at=time.time(), dirty=False,
            previous_version=installed.version_id if changed_version else installed.previous_version,
        )
        ctx.state.set_installed(game)
        ctx.state.clear_journal(self.task.id)
        await asyncio.to_thread(_remove_staging, staging)
        return game


def _with_copies(plan: UpdatePlan, extra: list[LocalCopy]) -> UpdatePlan:
    return dataclasses.replace(plan, copies=plan.copies + tuple(extra))


def _write_at(staging: Staging, file_index: int, data: bytes) -> None:
    fd = staging.fd(file_index)
    os.ftruncate(fd, len(data))
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)
    staging.close_file(file_index)


def _remove_staging(staging: Staging) -> None:
    staging.remove()
    shutil.rmtree(staging.root.with_name(staging.root.name + ".old"), ignore_errors=True)
    parent = staging.root.parent
    if parent.name == STAGING_DIR and parent.exists() and not any(parent.iterdir()):
        parent.rmdir()
