"""Build folders as a publish sees them, for tests and benchmarks: the files it ships, their
SHA-256 (cached per path), and the per-file peer delta tools (``xdelta3``, ``zstd
--patch-from``, ``bsdiff``, plain ``zstd -19``) the benchmarks compare our format with."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from patcher.publish import BUILD_METADATA


def build_files(build: Path) -> dict[str, Path]:
    """The files a publish ships, by relative path, sorted (``launcher-build.json`` at the root
    is read, not shipped; symlinks are not files of a build)."""
    out: dict[str, Path] = {}
    for root, dirnames, filenames in os.walk(build):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(root) / name
            rel = p.relative_to(build).as_posix()
            if rel != BUILD_METADATA and p.is_file() and not p.is_symlink():
                out[rel] = p
    return out


_SHA256: dict[Path, str] = {}


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, hex; computed once per path (build files do not change)."""
    if path not in _SHA256:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while block := fh.read(4 << 20):
                h.update(block)
        _SHA256[path] = h.hexdigest()
    return _SHA256[path]


def peer_command(tool: str, old: Path | None, new: Path, out: Path,
                 bsdiff: tuple[str, ...] = ("bsdiff",)) -> list[str]:
    """The command line of one peer tool writing ``out`` for the file ``new``: ``xdelta3``,
    ``zstd_patch_from`` or ``bsdiff`` against ``old``, or ``zstd19`` (the file alone).
    ``bsdiff``: the command prefix the call appends OLD NEW PATCH to."""
    if tool == "zstd19":
        return ["zstd", "-19", "-q", "-f", str(new), "-o", str(out)]
    assert old is not None
    if tool == "xdelta3":
        return ["xdelta3", "-e", "-9", "-f", "-s", str(old), str(new), str(out)]
    if tool == "zstd_patch_from":
        return ["zstd", "-19", "--long=31", "-q", "-f", f"--patch-from={old}", str(new), "-o",
                str(out)]
    if tool == "bsdiff":
        return [*bsdiff, str(old), str(new), str(out)]
    raise ValueError(tool)


def run_peer(tool: str, old: Path | None, new: Path, tmp: Path,
             bsdiff: tuple[str, ...] = ("bsdiff",)) -> tuple[int, float]:
    """Run one peer tool (see ``peer_command``) into a scratch file in ``tmp``: the size of its
    output and the seconds it took; RuntimeError when it fails."""
    out = tmp / f"{uuid.uuid4().hex}.out"
    cmd = peer_command(tool, old, new, out, bsdiff)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0 or not out.exists():
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): "
                           f"{res.stderr.decode(errors='replace').strip()}")
    size = out.stat().st_size
    out.unlink()
    return size, elapsed


def tool_version(cmd: list[str]) -> str:
    """The first line a tool prints for ``cmd`` (e.g. ``["zstd", "--version"]``), or "?"."""
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else "?"


def dpkg_version(pkg: str) -> str:
    """The installed version of a Debian package, or "?" (not installed, or no dpkg)."""
    if not shutil.which("dpkg-query"):
        return "?"
    res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                         text=True, check=False)
    return res.stdout.strip() or "?"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (benchmarks report it beside their figures), or
    "?"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"
