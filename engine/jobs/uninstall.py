"""Uninstall: remove exactly what the engine put in an install folder, and nothing else.

The manifest says which files and folders are the game's; the staging folder is the engine's.
A regular file at a manifest path is removed; a link there is left (it is not what was
installed, and removing it is the player's call); folders are removed only when empty. The
install folder goes only when nothing is left in it; a linked install folder keeps its target.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.io.fsops import first_link, remove_empty_parents, translate_os_error
from engine.io.staging import sweep_staging
from engine.io.state import InstalledGame
from patcher.manifest import Manifest

MAX_LISTED = 20


@dataclass(frozen=True, slots=True)
class RemoveResult:
    removed_files: int
    left: tuple[str, ...]  # what stays in the folder (not the engine's), up to MAX_LISTED
    folder_removed: bool


@dataclass(frozen=True, slots=True)
class UninstallReport:
    game: InstalledGame
    result: RemoveResult

    def to_dict(self) -> dict[str, Any]:
        return {**self.game.to_dict(), "removedFiles": self.result.removed_files,
                "leftInFolder": list(self.result.left), "folderRemoved": self.result.folder_removed}


def remove_install(install_dir: Path, manifest: Manifest | None, keep_tasks: set[str]) -> RemoveResult:
    if not os.path.lexists(install_dir):
        return RemoveResult(0, (), True)
    if not install_dir.is_dir():
        return RemoveResult(0, (install_dir.name,), False)
    removed = 0
    try:
        sweep_staging(install_dir, keep_tasks)
        if manifest is not None:
            for f in manifest.files:
                if first_link(install_dir, f.path) is not None:
                    continue  # a link on the way: never followed, left for the player
                path = install_dir / f.path
                try:
                    if stat.S_ISREG(os.lstat(path).st_mode):
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
            for rel in sorted([*manifest.dirs, *(f.path for f in manifest.files)],
                              key=lambda p: -p.count("/")):
                if rel in manifest.dirs and first_link(install_dir, rel) is None:
                    with contextlib.suppress(OSError):
                        os.rmdir(install_dir / rel)
                remove_empty_parents(install_dir, rel)
    except OSError as exc:
        raise translate_os_error(exc, f"removing files from {install_dir}") from exc
    left = sorted(p.name for p in install_dir.iterdir())
    folder_removed = not left and not install_dir.is_symlink()
    if folder_removed:
        install_dir.rmdir()
    return RemoveResult(removed, tuple(left[:MAX_LISTED]), folder_removed)
