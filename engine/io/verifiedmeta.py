"""The verified-metadata record behind ``verify --quick``.

Per installed game, for every file last proven whole — each chunk hashed by a full verify, or
built from BLAKE3-checked chunks by an install — the file's size, mtime, ctime, inode and device
at that moment, beside the manifest's SHA-256 of the content it was proven against. A quick
verify re-hashes only files whose metadata no longer matches: any write through the file system
moves mtime or ctime (ctime cannot be set back from user space, so ``touch -d`` does not hide a
change), and a replaced file has another inode. What the record cannot see is damage below the
file system (bit rot, a disk written behind its back): that is what the full verify is for, and
the report says how many files a quick verify took from the record.

Stored as ``<data dir>/verified/<productId>.json`` (written atomically). A record that is
missing, unreadable, or made for another install folder counts as empty: files are then hashed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from engine.io.fsops import atomic_write

log = logging.getLogger(__name__)

RECORD_DIR = "verified"
FORMAT = 1

Stamp = tuple[int, int, int, int, int]  # size, mtime_ns, ctime_ns, inode, device


def stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class VerifiedRecord:
    """Path → (SHA-256 proven, stamp at that moment) for one game in one install folder."""

    def __init__(self, path: Path, install_dir: Path,
                 entries: dict[str, tuple[str, Stamp]] | None = None) -> None:
        self.path = path
        self.install_dir = install_dir
        self.entries: dict[str, tuple[str, Stamp]] = dict(entries or {})
        # wall time of the last full verify that refreshed this record (None: never): a repair
        # right after one (``verify --repair``) need not hash again what it just proved
        self.full_verify_at: float | None = None

    @classmethod
    def load(cls, data_dir: Path, product_id: str, install_dir: Path) -> VerifiedRecord:
        path = data_dir / RECORD_DIR / f"{product_id}.json"
        record = cls(path, install_dir)
        try:
            doc = json.loads(path.read_bytes())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("format") != FORMAT or doc.get("installDir") != str(install_dir):
                return record
            at = doc.get("fullVerifyAt")
            record.full_verify_at = float(at) if at is not None else None
            files = doc["files"]
            if not isinstance(files, dict):
                raise ValueError("files is not an object")
            for rel, (sha, st) in files.items():
                record.entries[str(rel)] = (str(sha), (int(st[0]), int(st[1]), int(st[2]),
                                                       int(st[3]), int(st[4])))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
            # a damaged record only costs hashing: every file is checked as if none existed
            log.warning("verified-metadata record %s unreadable (%s); ignoring it", path, exc)
            record.entries.clear()
            record.full_verify_at = None
        return record

    def fresh_full_verify(self, now: float, within_s: float) -> bool:
        """A full verify refreshed the record less than ``within_s`` ago."""
        return self.full_verify_at is not None and 0 <= now - self.full_verify_at <= within_s

    def matches(self, rel: str, sha256: str, st: os.stat_result) -> bool:
        entry = self.entries.get(rel)
        return entry is not None and entry[0] == sha256 and entry[1] == stamp_of(st)

    def set(self, rel: str, sha256: str, st: os.stat_result) -> None:
        self.entries[rel] = (sha256, stamp_of(st))

    def drop(self, rel: str) -> None:
        self.entries.pop(rel, None)

    def save(self) -> None:
        doc = {"format": FORMAT, "installDir": str(self.install_dir),
               "fullVerifyAt": self.full_verify_at,
               "files": {rel: [sha, list(st)] for rel, (sha, st) in sorted(self.entries.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # not fsynced: a record lost or damaged by a crash costs a re-hash (``load`` drops a
        # damaged one; an entry is trusted only while a file's size, mtime, inode and ctime
        # match), and its two fsyncs were 8-40 ms of every install's commit (issue 13)
        atomic_write(self.path, json.dumps(doc, separators=(",", ":")).encode(), durable=False)

    def forget(self) -> None:
        """Remove the record (the game is gone or moved)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
