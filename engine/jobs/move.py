"""Move an installed game to another folder, resumably and without ever losing a copy.

Same filesystem: one rename. Otherwise: copy into ``<dest>.launcher-move``, verify every chunk
against the manifest, rename into place, record the new path, then delete the old copy. An
intent record in the state lets a rerun after a crash finish the job from where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from engine.core.errors import EngineError, ErrorCode
from engine.io.staging import translate_os_error
from engine.io.state import InstalledGame, State
from engine.io.verify import scan_install
from patcher.manifest import Manifest


def _same_fs(a: Path, b: Path) -> bool:
    probe = b
    while not probe.exists():
        probe = probe.parent
    return os.stat(a).st_dev == os.stat(probe).st_dev


async def move_game(state: State, game: InstalledGame, dest: Path, manifest: Manifest) -> InstalledGame:
    src = Path(game.path)
    intent_key = f"move:{game.product_id}"
    if dest.exists() and any(dest.iterdir()) and state.get_meta(intent_key) is None:
        raise EngineError(ErrorCode.API_MISUSE, f"{dest} exists and is not empty")
    state.set_meta(intent_key, json.dumps({"from": str(src), "to": str(dest)}))
    try:
        if src.exists():
            if _same_fs(src, dest.parent):
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    dest.rmdir()
                os.replace(src, dest)
            else:
                tmp = dest.with_name(dest.name + ".launcher-move")
                # links are copied as links: never followed out of the install folder
                await asyncio.to_thread(shutil.copytree, src, tmp, symlinks=True, dirs_exist_ok=True)
                report = await asyncio.to_thread(scan_install, tmp, manifest, False)
                if not report.ok:
                    raise EngineError(ErrorCode.FILE_HASH_MISMATCH,
                                      f"copy in {tmp} does not verify: {sorted(report.damaged_paths())[:3]}")
                os.replace(tmp, dest)
        moved = replace(game, path=str(dest))
        state.set_installed(moved)
        if src.exists():
            await asyncio.to_thread(shutil.rmtree, src)
        state.db.execute("DELETE FROM meta WHERE key = ?", [intent_key])
        return moved
    except OSError as exc:
        raise translate_os_error(exc, f"moving {game.product_id} to {dest}") from exc
