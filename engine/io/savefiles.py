"""Save files on this device: where a game's save locations are, which files they hold (by
the manifest's include/exclude globs), their hashes, local backups, and atomic replacement.

Nothing here follows a symbolic link or writes outside a save location; a file is replaced
only after its old content is in a backup set (``<data>/save-backups/<product>/<time>-<why>``),
of which the newest ``KEEP_BACKUPS`` per game are kept.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

import platformdirs

from engine.core.errors import EngineError, ErrorCode
from engine.core.savesync import LocalFile, prune_backups
from engine.io.fsops import atomic_write, translate_os_error

if TYPE_CHECKING:  # the manifest module loads with a game's manifest, not with the engine
    from patcher.manifest import SaveLocation, SaveRoot

KEEP_BACKUPS = 10
MAX_SAVE_FILES = 10_000
SLOT_SAFE = ":@ +,;=!$&'()*[]~"  # kept readable in slot names; "/" and "%" are encoded


def root_dir(root: SaveRoot, install_dir: Path) -> Path:
    """The folder a save location's root names, on this platform."""
    from patcher.manifest import SaveRoot

    if root is SaveRoot.INSTALL:
        return install_dir
    if root is SaveRoot.DATA_HOME:
        return Path(platformdirs.user_data_dir())
    if root is SaveRoot.CONFIG_HOME:
        return Path(platformdirs.user_config_dir())
    return Path(platformdirs.user_documents_dir())


@dataclass(frozen=True, slots=True)
class SaveFile:
    slot: str
    path: Path
    local: LocalFile


def slot_of(location: SaveLocation, relative: str) -> str:
    return quote(f"{location.root.value}:{location.path}/{relative}", safe=SLOT_SAFE)


def location_of(slot: str, locations: tuple[SaveLocation, ...], install_dir: Path,
                game_files: frozenset[str] = frozenset()) -> tuple[SaveLocation, Path] | None:
    """Where a cloud slot lives on this device (None: no location of this version has it, or
    the place is one of the game's own files, which a save never replaces)."""
    text = unquote(slot)
    for loc in locations:
        prefix = f"{loc.root.value}:{loc.path}/"
        if text.startswith(prefix):
            rel = PurePosixPath(text[len(prefix):])
            if rel.is_absolute() or not rel.parts or any(p in ("", ".", "..") for p in rel.parts):
                raise EngineError(ErrorCode.UNSAFE_PATH, f"cloud save slot {slot!r} leaves its "
                                  "save folder")
            if not matches(loc, str(rel)):
                return None
            path = root_dir(loc.root, install_dir) / loc.path / Path(*rel.parts)
            return None if is_game_file(path, install_dir, game_files) else (loc, path)
    return None


def is_game_file(path: Path, install_dir: Path, game_files: frozenset[str]) -> bool:
    try:
        return path.relative_to(install_dir).as_posix() in game_files
    except ValueError:
        return False


def matches(location: SaveLocation, relative: str) -> bool:
    def hit(patterns: tuple[str, ...]) -> bool:
        name = relative.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(name, p)
                   for p in patterns)

    return hit(location.include) and not hit(location.exclude)


def sha256_of(path: Path) -> LocalFile:
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return LocalFile(digest.hexdigest(), size)


def scan(locations: tuple[SaveLocation, ...], install_dir: Path,
         game_files: frozenset[str] = frozenset()) -> dict[str, SaveFile]:
    """Every save file of the game on this device, by slot (links are skipped, not followed).
    The game's own files (``game_files``, paths in the install folder) are never saves, even
    when a save location's patterns would match them."""
    out: dict[str, SaveFile] = {}
    for loc in locations:
        base = root_dir(loc.root, install_dir) / loc.path
        if base.is_symlink() or not base.is_dir():
            continue
        for folder, dirs, files in os.walk(base, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)))
            for name in sorted(files):
                path = Path(folder) / name
                try:
                    info = path.lstat()
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                rel = path.relative_to(base).as_posix()
                if not matches(loc, rel) or is_game_file(path, install_dir, game_files):
                    continue
                if len(out) >= MAX_SAVE_FILES:
                    raise EngineError(ErrorCode.SAVEGAME_FILE_TOO_LARGE,
                                      f"more than {MAX_SAVE_FILES} save files under {base}")
                try:
                    out[slot_of(loc, rel)] = SaveFile(slot_of(loc, rel), path, sha256_of(path))
                except FileNotFoundError:
                    continue  # the game deleted it meanwhile
                except OSError as exc:
                    raise translate_os_error(exc, f"reading save {path}") from exc
    return out


class Backups:
    """Local copies of save files, taken before anything replaces them and after each sync."""

    def __init__(self, data_dir: Path, keep: int = KEEP_BACKUPS) -> None:
        self.root = data_dir / "save-backups"
        self.keep = keep

    def sets(self, product_id: str) -> list[Path]:
        folder = self.root / product_id
        return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def take(self, product_id: str, files: dict[str, Path], why: str) -> Path | None:
        """Copy ``files`` (slot → path) into a new backup set; None when there is nothing."""
        present = {slot: p for slot, p in files.items() if p.is_file() and not p.is_symlink()}
        if not present:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:]
        target = self.root / product_id / f"{stamp}-{why}"
        try:
            target.mkdir(parents=True, exist_ok=False)
            for slot, path in present.items():
                shutil.copy2(path, target / slot, follow_symlinks=False)
        except OSError as exc:
            raise translate_os_error(exc, f"backing up saves into {target}") from exc
        for old in prune_backups([p.name for p in self.sets(product_id)], self.keep):
            shutil.rmtree(self.root / product_id / old, ignore_errors=True)
        return target

    def contents(self, backup: Path) -> dict[str, Path]:
        return {p.name: p for p in sorted(backup.iterdir()) if p.is_file()}


def replace_save(path: Path, data: bytes) -> None:
    """Write a save file whole, atomically (a reader sees the old or the new file)."""
    if path.is_symlink():
        raise EngineError(ErrorCode.UNSAFE_PATH, f"{path} is a link; a save is never written "
                          "through one")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    except OSError as exc:
        raise translate_os_error(exc, f"writing save {path}") from exc
