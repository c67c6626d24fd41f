"""Engine-side update benchmark: what the real engine downloads, writes and spends per demo
version step, beside per-file ``xdelta3``, ``zstd --patch-from``, ``bsdiff`` and HDiffPatch on the same
builds, plus verify throughput beside ``cat`` of the same files.

    .venv/bin/python bench/update.py [--size MB] [--json] [--work DIR] [--fresh] [--keep]

What it runs (everything real, as subprocesses on 127.0.0.1):

1. ``launcher-backend serve --data WORK/backend --port 0 --demo --demo-size SIZE``: generates the
   demo catalog (one star-courier version weighs about SIZE MB) under WORK/backend/builds and
   publishes it; later runs with the same --size and --work reuse it (``--fresh`` starts over).
2. A counting reverse proxy (``testing.faultproxy.FaultProxy``, no faults armed) in front of the
   backend; ``DATA/cdn-edges.json`` makes it the only CDN edge, so every manifest, delta index,
   patch and pack byte the engine fetches passes through it and is counted (response bodies, not
   HTTP headers). API calls (login, grants, token refresh) go to the backend directly.
3. ``launcher-engine --data WORK/engine-* --json``: ``login demo``, ``install star-courier
   --version 1.0.0``, then ``update star-courier --version V`` for every later version.

Per step:

* ``ours_bytes``: bytes on the wire through the proxy during the update (manifest, signature,
  delta index, patches, pack ranges). Beside it ``plan_download_bytes`` (the engine's
  ``updatePlan`` event: blocks + patches it planned) and ``engine_downloaded_bytes`` (the
  engine's own counter in its final task record).
* peers, per file of the new build against the old build (2 tool runs in parallel): unchanged
  files cost 0; a file with a same-path predecessor of other content costs
  ``xdelta3 -e -9 -s old new``, ``zstd -19 --long=31 --patch-from=old new`` or
  ``bsdiff old new patch``; a file with no same-path predecessor costs ``zstd -19`` of the file
  alone for every peer (``peer_rename_bytes`` says how much of that is content the old build
  holds at another path, which our engine moves locally for free).
* ``full_bytes``: the ``updatePlan``'s ``fullDownloadBytes`` (stored bytes of every block of the
  new version: a fresh install's download).
* ``written_per_downloaded``: bytes the engine process wrote (``/proc/<pid>/io`` write_bytes,
  read exactly at exit through ``wait4``'s ``ru_oublock`` x 512: page-cache pages it dirtied,
  i.e. staged files plus its small state database and manifest cache) / wire bytes. The plan's
  ``writeBytes`` is reported beside it.
* ``seconds``: wall time of the ``launcher-engine update`` process (Python start-up included).

Verify (on the final version): ``launcher-engine verify star-courier`` reports bytesChecked and
seconds (its own timer around the scan); ``cat`` of the same files to /dev/null is timed as a
process. Warm page cache: each run twice, the second counts. Cold: ``--cold-runs`` rounds
(default 5) of one verify and one cat, their order swapped every round, the page cache of the
install emptied before each run (``--cold-method``: ``sync`` and ``posix_fadvise(DONTNEED)`` on
every file by default, which leaves other jobs' cache alone; or ``/proc/sys/vm/drop_caches``);
``fincore`` confirms what stays resident. ``verify_mb_s`` / ``cat_mb_s`` are the best cold
figures (min-of-N: a shared machine only ever slows a run); medians and each round's ratio are
reported beside them, and ``*_warm_mb_s`` too. ``--verify-only`` installs the last version
directly and measures only verify (no update steps, no peer tools).

Goals: download no larger than the best peer on every step; verify cold at 95% or more of
``cat`` (issue 13; warm is reported beside it). ``verify --quick`` right after the full verifies
(cache emptied first) is timed too: ``verify_quick_s`` (its own timer),
``verify_quick_unchanged_files`` (taken from the verified-metadata record, not re-hashed) and
``verify_quick_bytes_hashed``.

With ``--json`` the last printed line is one JSON object::

    {"steps": [{"from": ..., "to": ..., "ours_bytes": N, "xdelta3_bytes": N,
                "zstd_patch_from_bytes": N, "bsdiff_bytes": N, "full_bytes": N,
                "written_per_downloaded": X, "seconds": X, ...}, ...],
     "verify_mb_s": X, "cat_mb_s": X, ...}

Sizes are in MB = 10**6 bytes. Peer tools: ``apt-get install -y xdelta3 zstd bsdiff``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from update_size import HDIFF_PEER  # noqa: E402  (the same HDiffPatch peer as bench/update_size.py)

from backend.config import EdgeConfig, write_edges  # noqa: E402
from engine.core.updateplan import (  # noqa: E402
    chunk_build,
    chunk_sources_excluding,
    merge_wanted,
    plan_update,
)
from patcher.manifest import Manifest  # noqa: E402
from patcher.sizing import blocks_bytes, blocks_for, chunk_share  # noqa: E402
from patcher.store import Store  # noqa: E402
from patcher.updatedoc import as_delta_index  # noqa: E402
from testing.builds import build_files, cpu_model, dpkg_version, run_peer, sha256_file, tool_version  # noqa: E402
from testing.faultproxy import FaultProxy  # noqa: E402
from testing.processes import ServerProcess, subprocess_env  # noqa: E402

MB = 1_000_000
PRODUCT = "star-courier"
WORKERS = 2  # peer tool runs in parallel
GOAL_VERIFY_RATIO = 0.95  # issue 13: cold (warm is reported; per-byte hashing cannot)
PEERS = ("xdelta3", "zstd_patch_from", "bsdiff", "hdiffpatch")


def log(msg: str) -> None:
    print(f"[bench/update] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes


class Backend:
    """``launcher-backend serve --demo`` as a subprocess (``testing.processes.ServerProcess``),
    whose CDN edges this bench sets."""

    def __init__(self, data: Path, size_mb: float, timeout: float) -> None:
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "backend.cli", "serve", "--data", str(data), "--port", "0",
                "--demo", "--demo-size", str(size_mb)]
        try:
            self.server = ServerProcess(argv, data / "backend.log", timeout)
        # ValueError too: ServerProcess reads its closed log when the server does not start
        except (RuntimeError, ValueError):
            tail = (data / "backend.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"bench/update: backend did not start within {timeout:.0f} s:\n"
                             f"{tail}") from None
        self.url = self.server.url

    def set_edges(self, urls: list[str]) -> None:
        write_edges(self.data / "cdn-edges.json",
                    [EdgeConfig.parse(u, i) for i, u in enumerate(urls)])

    def stop(self) -> None:
        self.server.stop(15)


@dataclass(slots=True)
class EngineRun:
    code: int
    lines: list[dict[str, Any]]
    stderr: str
    seconds: float
    write_bytes: int  # ru_oublock * 512 at exit (= /proc/<pid>/io write_bytes)
    read_bytes: int  # ru_inblock * 512
    proc_io: dict[str, int]  # last /proc/<pid>/io sample before exit
    cpu_seconds: float


def _read_proc_io(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/io") as fh:
            return {k: int(v) for k, v in (ln.split(": ") for ln in fh.read().splitlines())}
    except (OSError, ValueError):
        return None


class Engine:
    """``launcher-engine --data D --backend URL --json ...`` as a subprocess per command."""

    def __init__(self, data: Path, backend_url: str, repo: Path = REPO) -> None:
        self.data = data
        self.backend_url = backend_url
        self.repo = repo  # the checkout whose engine runs (bench/update_ab.py: another one)

    def run(self, *args: str, timeout: float = 7200) -> EngineRun:
        argv = [sys.executable, "-m", "engine.cli", "--data", str(self.data), "--backend",
                self.backend_url, "--json", *args]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            # ``-m engine.cli`` imports from the working folder first
            env = subprocess_env() if self.repo == REPO else subprocess_env(
                {"PYTHONPATH": f"{self.repo}{os.pathsep}{REPO}"})
            proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    cwd=self.repo, env=env)
            last: dict[str, int] = {}
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    io = _read_proc_io(proc.pid)
                    if io:
                        last.update(io)
                    done.wait(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            deadline = time.monotonic() + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
            done.set()
            sampler.join()
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
        lines = [json.loads(s) for s in (ln.strip() for ln in stdout.splitlines()) if s.startswith("{")]
        return EngineRun(proc.returncode, lines, stderr, elapsed, usage.ru_oublock * 512,
                         usage.ru_inblock * 512, last, usage.ru_utime + usage.ru_stime)

    def ok(self, *args: str) -> EngineRun:
        r = self.run(*args)
        if r.code != 0:
            raise SystemExit(f"bench/update: launcher-engine {' '.join(args)} exited {r.code}:\n"
                             f"{r.lines[-3:]}\n{r.stderr[-3000:]}")
        return r


# ---------------------------------------------------------------------------------------------
# Peer tools


def check_tools() -> dict[str, str]:
    missing = [t for t in ("xdelta3", "zstd", "bsdiff", "cat") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"bench/update: missing {', '.join(missing)}; install with: "
                         "apt-get install -y xdelta3 zstd bsdiff")
    return {"xdelta3": tool_version(["xdelta3", "-V"]),
            "zstd": tool_version(["zstd", "--version"]),
            "bsdiff": f"bsdiff (Debian {dpkg_version('bsdiff')})",
            "hdiffpatch": f"hdiffpatch {dist_version('hdiffpatch')} (Python package)",
            "cat": tool_version(["cat", "--version"])}


@dataclass(frozen=True, slots=True)
class PeerJob:
    tool: str
    old: Path | None
    new: Path


@dataclass(slots=True)
class FileRow:
    path: str
    status: str  # changed | added | renamed (added, content at another old path)
    size: int
    peers: dict[str, int] = field(default_factory=dict)
    ours_method: str = ""
    ours_bytes: float = 0.0

    @property
    def best_peer(self) -> int:
        return min(self.peers.values())


def _run_peer(job: PeerJob, tmp: Path) -> tuple[int, float]:
    if job.tool == "hdiffpatch":  # run_peer appends OLD NEW OUT to a "bsdiff" command prefix
        return run_peer("bsdiff", job.old, job.new, tmp, HDIFF_PEER)
    return run_peer(job.tool, job.old, job.new, tmp)


def peer_step(old_build: Path, new_build: Path, tmp: Path) -> tuple[list[FileRow], dict[str, float]]:
    """Per changed/added file, each peer's bytes (2 tool runs in parallel)."""
    old_files, new_files = build_files(old_build), build_files(new_build)
    old_shas = {sha256_file(p) for p in old_files.values()}
    rows: list[FileRow] = []
    jobs: list[tuple[FileRow, PeerJob]] = []
    for rel, new in new_files.items():
        old = old_files.get(rel)
        if old is not None:
            if old.stat().st_size == new.stat().st_size and sha256_file(old) == sha256_file(new):
                continue
            row = FileRow(rel, "changed", new.stat().st_size)
            jobs += [(row, PeerJob(t, old, new)) for t in PEERS]
        else:
            row = FileRow(rel, "renamed" if sha256_file(new) in old_shas else "added",
                          new.stat().st_size)
            jobs.append((row, PeerJob("zstd19", None, new)))
        rows.append(row)
    seconds: dict[str, float] = defaultdict(float)
    jobs.sort(key=lambda rj: -rj[1].new.stat().st_size)  # biggest first: workers end together
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = pool.map(lambda rj: _run_peer(rj[1], tmp), jobs)
        for (row, job), (size, secs) in zip(jobs, results, strict=True):
            seconds[job.tool] += secs
            if job.tool == "zstd19":
                row.peers = {t: size for t in PEERS}
            else:
                row.peers[job.tool] = size
    return rows, dict(seconds)


# ---------------------------------------------------------------------------------------------
# Our per-file attribution (the engine's own planner over the published manifests)


def analyse_step(old: Manifest, new: Manifest, delta: Any, rows: list[FileRow],
                 requests: list[tuple[str, str | None]], cdn: Path,
                 failed: set[str]) -> dict[str, float]:
    """Split a step's download the way the engine spent it, and fill each row's ours_method /
    ours_bytes: its patch, or its fetched chunks' share of their blocks; a file whose patch
    failed (``failed``: DELTA_PATCH_APPLICATION_FAILED events) pays the patch and its chunks,
    as the engine's fallback does. ``requests``: (CDN relpath, Range header) seen by the proxy."""
    plan = plan_update(old, new, delta)
    fetch: dict[str, list[Any]] = {cid: list(ws) for cid, ws in plan.fetch.items()}
    sources = chunk_sources_excluding(old, set())
    by_path = {r.path: r for r in rows}
    for b in plan.builds:
        f = new.files[b.file_index]
        row = by_path.get(f.path)
        if row is None:
            row = by_path[f.path] = FileRow(f.path, "engine-only", f.size)
            rows.append(row)
        row.ours_method = str(b.method.value) + (f"/{b.patch.method}" if b.patch else "")
        if b.patch is not None:
            row.ours_bytes += b.patch.patch_size
            if f.path in failed:
                row.ours_method += " FAILED>chunks"
                _, wanted = chunk_build(new, b.file_index, sources)
                merge_wanted(fetch, wanted)
    sizes = {c.id: c.size for f in new.files for c in f.chunks}
    needed_share = 0.0
    for cid, writes in fetch.items():  # each chunk fetched once, charged to its first file
        share = chunk_share(new, cid, sizes[cid])
        needed_share += share
        by_path[new.files[writes[0].file_index].path].ours_bytes += share
    needed_blocks = blocks_bytes(new, blocks_for(new, fetch))
    failed_ids = {b.patch.patch_id for b in plan.builds
                  if b.patch is not None and new.files[b.file_index].path in failed}
    manifest_patch = getattr(delta, "manifest_patch", None)
    documents = {manifest_patch.patch_id} if manifest_patch is not None else set()
    kinds: dict[str, int] = defaultdict(int)
    for rel, rng in requests:
        if "/packs/" in rel and rng and rng.startswith("bytes="):
            lo, hi = rng.removeprefix("bytes=").split("-")
            n = int(hi) - int(lo) + 1
        else:
            n = (cdn / rel).stat().st_size if (cdn / rel).exists() else 0
        if "/packs/" in rel:
            kinds["packs"] += n
        elif "/patches/" in rel and Path(rel).stem in documents:
            kinds["documents"] += n  # the manifest patch stands for the manifest
        elif "/patches/" in rel:
            kinds["patches_failed" if Path(rel).stem in failed_ids else "patches"] += n
        else:
            kinds["documents"] += n  # manifest, delta index, signatures
    return {
        "documents_bytes": kinds["documents"],
        "patches_applied_bytes": kinds["patches"],
        "patches_failed_bytes": kinds["patches_failed"],
        "pack_range_bytes": kinds["packs"],
        "needed_chunk_bytes": round(needed_share),
        "block_waste_bytes": round(needed_blocks - needed_share),
        "range_gap_bytes": kinds["packs"] - needed_blocks,
        "plan_chunk_download_bytes": plan.chunk_download_bytes,
    }


# ---------------------------------------------------------------------------------------------
# Page cache and throughput


def failure_code(lines: list[dict[str, Any]]) -> str:
    """The error code of a failed engine command (an error line or the final task's)."""
    for ln in reversed(lines):
        if "error" in ln and isinstance(ln["error"], dict):
            return str(ln["error"].get("code", ""))
        if isinstance(ln.get("task"), dict) and ln["task"].get("errorCode"):
            return str(ln["task"]["errorCode"])
    return ""


def manifest_bytes(cdn: Path, version: str) -> int:
    rel = Store.manifest_rel(PRODUCT, version)
    return (cdn / rel).stat().st_size + (cdn / rel).with_suffix(".sig").stat().st_size


def preload_manifests(engine_data: Path, cdn: Path, versions: list[str]) -> None:
    """Put every version's signed manifest where the engine caches fetched ones
    (``State.manifest_files``: DATA/manifests/<product>/<version>.manifest|.sig)."""
    dest = engine_data / "manifests" / PRODUCT
    dest.mkdir(parents=True, exist_ok=True)
    for v in versions:
        src = cdn / Store.manifest_rel(PRODUCT, v)
        shutil.copyfile(src, dest / f"{v}.manifest")
        shutil.copyfile(src.with_suffix(".sig"), dest / f"{v}.sig")


def drop_caches(files: list[Path], method: str) -> str:
    """Empty the page cache of ``files``: ``drop_caches`` (the whole machine's cache, when
    permitted) or ``fadvise`` (``posix_fadvise(DONTNEED)`` per file, after a sync: only these
    files, so benchmarks running beside this one keep theirs; needs no root). ``auto`` takes
    drop_caches when it is permitted."""
    os.sync()
    if method in ("auto", "drop_caches"):
        try:
            with open("/proc/sys/vm/drop_caches", "w") as fh:
                fh.write("3\n")
            return "drop_caches"
        except OSError:
            if method == "drop_caches":
                raise
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise"


def resident_bytes(files: list[Path]) -> int | None:
    """Bytes of ``files`` in the page cache (util-linux ``fincore``), to show a cold run is
    cold; None without fincore."""
    if shutil.which("fincore") is None:
        return None
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", "--",
                        *map(str, files)], capture_output=True, text=True, check=False)
    return sum(int(x) for x in r.stdout.split() if x.isdigit())


def time_cat(files: list[Path]) -> float:
    argv = ["cat", "--", *map(str, files)]
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def run_verify(engine: Engine, *extra: str) -> tuple[dict[str, Any], float]:
    r = engine.run("verify", PRODUCT, *extra)
    report = next((ln["verify"] for ln in reversed(r.lines) if "verify" in ln), None)
    if r.code != 0 or report is None or not report["ok"]:
        raise SystemExit(f"bench/update: verify failed ({r.code}): {r.lines[-2:]}\n{r.stderr[-2000:]}")
    return report, r.seconds


def measure_verify(engine: Engine, files: list[Path], cold_runs: int,
                   cold_method: str = "fadvise") -> dict[str, Any]:
    """Cold: ``cold_runs`` rounds, each a verify and a cat with the cache emptied before each,
    the order swapped every round (a disk that slows down mid-run hits both alike). The headline
    figures are the best of each (min-of-N: the machine is shared, noise only ever slows a run);
    the medians and each round's ratio are reported beside them."""
    total = sum(p.stat().st_size for p in files)
    out: dict[str, Any] = {"verify_files": len(files), "verify_bytes": total}
    method = ""
    cold_v: list[float] = []
    cold_vwall: list[float] = []
    cold_c: list[float] = []
    resident: list[int] = []

    def make_cold() -> None:
        """Empty the cache for ``files`` and record how much of them is still resident."""
        nonlocal method
        method = drop_caches(files, cold_method)
        res = resident_bytes(files)
        if res is not None:
            resident.append(res)

    def cold_verify() -> None:
        make_cold()
        rep, wall = run_verify(engine)
        cold_v.append(rep["bytesChecked"] / MB / max(rep["seconds"], 1e-9))
        cold_vwall.append(rep["bytesChecked"] / MB / wall)

    def cold_cat() -> None:
        make_cold()
        cold_c.append(total / MB / time_cat(files))

    for i in range(cold_runs):
        for step in ((cold_verify, cold_cat) if i % 2 == 0 else (cold_cat, cold_verify)):
            step()
        log(f"  cold round {i + 1}/{cold_runs}: verify {cold_v[-1]:.1f} MB/s, cat {cold_c[-1]:.1f}"
            f" MB/s, ratio {cold_v[-1] / cold_c[-1]:.3f} (load {os.getloadavg()[0]:.1f})")
    run_verify(engine)
    rep, wall = run_verify(engine)
    warm_v = rep["bytesChecked"] / MB / max(rep["seconds"], 1e-9)
    warm_vwall = rep["bytesChecked"] / MB / wall
    time_cat(files)
    warm_c = total / MB / time_cat(files)
    if rep["bytesChecked"] != total:
        log(f"note: verify checked {rep['bytesChecked']} bytes, cat read {total}")
    ratios = [v / c for v, c in zip(cold_v, cold_c, strict=True)]
    out.update({
        "cache_drop_method": method,
        "cold_runs": cold_runs,
        "cold_resident_after_drop_max_bytes": max(resident) if resident else None,
        "verify_cold_mb_s": max(cold_v), "cat_cold_mb_s": max(cold_c),
        "verify_cold_median_mb_s": statistics.median(cold_v),
        "cat_cold_median_mb_s": statistics.median(cold_c),
        "cold_ratio_best": max(cold_v) / max(cold_c),
        "cold_ratio_median_of_medians": statistics.median(cold_v) / statistics.median(cold_c),
        "cold_ratio_per_round": ratios,
        "cold_ratio_per_round_median": statistics.median(ratios),
        "verify_warm_mb_s": warm_v, "cat_warm_mb_s": warm_c,
        "verify_cold_process_mb_s": max(cold_vwall), "verify_warm_process_mb_s": warm_vwall,
        "verify_cold_runs_mb_s": cold_v, "cat_cold_runs_mb_s": cold_c,
    })
    out["verify_mb_s"] = out["verify_cold_mb_s"]
    out["cat_mb_s"] = out["cat_cold_mb_s"]
    # verify --quick of the unchanged install: files whose size, mtime, ctime and inode match
    # the verified-metadata record the full verify just refreshed are not re-hashed
    drop_caches(files, cold_method)
    qrep, qwall = run_verify(engine, "--quick")
    out.update({"verify_quick_s": round(qrep["seconds"], 4), "verify_quick_process_s": round(qwall, 3),
                "verify_quick_unchanged_files": qrep.get("unchangedFiles"),
                "verify_quick_bytes_hashed": qrep["bytesChecked"]})
    return out


# ---------------------------------------------------------------------------------------------
# Main


def machine() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gb": round(mem / 1e9, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_start": os.getloadavg()[0]}


def fmt_mb(n: float) -> str:
    return f"{n / MB:9.2f}"


def print_table(result: dict[str, Any], per_file: dict[str, list[FileRow]]) -> None:
    print(f"\nstar-courier, --size {result['size_mb']:g} MB per version (sizes in MB = 1e6 bytes)")
    hdr = (f"{'step':17} {'ours wire':>9} {'ours plan':>9} {'xdelta3':>9} {'zstd-pf':>9} "
           f"{'bsdiff':>9} {'hdiff':>9} {'full':>9} {'ours/best':>9} {'written':>9} {'w/d':>6} "
           f"{'plan w/d':>8} {'seconds':>8}")
    print(hdr)
    print("-" * len(hdr))
    for s in result["steps"]:
        best = s["best_peer_bytes"]
        print(f"{s['from'] + ' > ' + s['to']:17} {fmt_mb(s['ours_bytes'])} "
              f"{fmt_mb(s['plan_download_bytes'])} {fmt_mb(s['xdelta3_bytes'])} "
              f"{fmt_mb(s['zstd_patch_from_bytes'])} {fmt_mb(s['bsdiff_bytes'])} "
              f"{fmt_mb(s['hdiffpatch_bytes'])} "
              f"{fmt_mb(s['full_bytes'])} {s['ours_bytes'] / max(best, 1):9.2f} "
              f"{fmt_mb(s['engine_write_bytes'])} {s['written_per_downloaded']:6.2f} "
              f"{s['plan_write_bytes'] / max(s['ours_bytes'], 1):8.2f} {s['seconds']:8.2f}")
    print("\nwhere our wire bytes went (MB): signed documents, patches applied, patches fetched "
          "but failed (then rebuilt from chunks), the needed chunks' share of their blocks, other "
          "chunks in those blocks, bridged gaps between ranges; 'other' = wire - these")
    hdr2 = (f"{'step':17} {'docs':>8} {'patches':>8} {'failed':>8} {'chunks':>8} {'blk waste':>9} "
            f"{'gaps':>8} {'other':>8}  fallbacks")
    print(hdr2)
    for s in result["steps"]:
        w = s["wire_split"]
        parts = ("documents_bytes", "patches_applied_bytes", "patches_failed_bytes",
                 "needed_chunk_bytes", "block_waste_bytes", "range_gap_bytes")
        other = s["ours_bytes"] - sum(w[k] for k in parts)
        print(f"{s['from'] + ' > ' + s['to']:17} " + " ".join(
            f"{w[k] / MB:{9 if k == 'block_waste_bytes' else 8}.3f}" for k in parts)
            + f" {other / MB:8.3f}  {', '.join(s['patch_fallbacks']) or '-'}")
    inst = result["install"]
    print(f"install {inst['version']}: {inst['wire_bytes'] / MB:.2f} MB on the wire "
          f"(plan {inst['plan_bytes'] / MB:.2f}), {inst['seconds']:.2f} s")
    v = result["verify"]
    print(f"\nverify of {v['verify_files']} files, {v['verify_bytes'] / MB:.1f} MB "
          f"(cache emptied with {v['cache_drop_method']}):")
    for temp in ("cold", "warm"):
        vv, cc = v[f"verify_{temp}_mb_s"], v[f"cat_{temp}_mb_s"]
        print(f"  {temp}: verify {vv:8.1f} MB/s (process wall {v[f'verify_{temp}_process_mb_s']:.1f})"
              f"   cat {cc:8.1f} MB/s   ratio {vv / cc:5.2f}  goal >= {GOAL_VERIFY_RATIO}"
              f"  {'PASS' if vv >= GOAL_VERIFY_RATIO * cc else 'FAIL'}")
        if temp == "cold":
            print(f"        median of {v['cold_runs']}: verify {v['verify_cold_median_mb_s']:.1f}"
                  f"   cat {v['cat_cold_median_mb_s']:.1f}   median per-round ratio "
                  f"{v['cold_ratio_per_round_median']:.3f}"
                  f"   (resident after each drop <= {v['cold_resident_after_drop_max_bytes']} B)")
    print(f"  verify --quick: {v['verify_quick_s']:.3f} s ({v['verify_quick_unchanged_files']} files "
          f"unchanged since their last check, not re-hashed; {v['verify_quick_bytes_hashed']} B hashed)")
    print("\nper file, where our bytes exceed the best peer's (ours = patch, or fetched chunks' "
          "share of their blocks):")
    for step, rows in per_file.items():
        worse = sorted((r for r in rows if r.peers and r.ours_bytes > r.best_peer),
                       key=lambda r: r.best_peer - r.ours_bytes)
        excess = sum(r.ours_bytes - r.best_peer for r in worse)
        print(f"  {step}: {len(worse)} file(s), {excess / MB:.3f} MB over the best peer "
              "(biggest first)")
        for r in worse[:10]:
            print(f"    {r.path:40} {r.status:8} {r.ours_method:26} ours {r.ours_bytes / MB:8.3f}"
                  f"  xd {r.peers['xdelta3'] / MB:8.3f}  zpf {r.peers['zstd_patch_from'] / MB:8.3f}"
                  f"  bsd {r.peers['bsdiff'] / MB:8.3f}  hdp {r.peers['hdiffpatch'] / MB:8.3f}")


def default_work(size_mb: float) -> Path:
    """Where the demo catalog of ``size_mb`` MB per version and its backend live."""
    return REPO / ".bench-data" / "update-engine" / f"size-{size_mb:g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=float, default=256, help="MB per demo version (default 256)")
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    ap.add_argument("--work", type=Path, default=None,
                    help="work folder (default .bench-data/update-engine/size-SIZE)")
    ap.add_argument("--fresh", action="store_true", help="regenerate the demo catalog")
    ap.add_argument("--keep", action="store_true", help="keep the engine's data and install")
    ap.add_argument("--cold-runs", type=int, default=5,
                    help="cold-cache rounds of verify and cat, alternating (best and median)")
    ap.add_argument("--cold-method", choices=("fadvise", "drop_caches", "auto"), default="fadvise",
                    help="how the cache is emptied before a cold run: posix_fadvise(DONTNEED) "
                         "on each file (default: leaves other jobs' cache alone), "
                         "/proc/sys/vm/drop_caches, or drop_caches when permitted")
    ap.add_argument("--verify-only", action="store_true",
                    help="install the last version directly and measure verify only (no "
                         "update steps, no peer tools)")
    ap.add_argument("--backend-timeout", type=float, default=7200)
    ap.add_argument("--preload-manifests", action="store_true",
                    help="put the signed manifests into the engine's cache first (done "
                         "automatically when the install fails on a manifest error); their "
                         "sizes are added to ours_bytes")
    args = ap.parse_args(argv)

    tools = check_tools()
    work = (args.work or default_work(args.size)).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    log(f"work folder {work}; starting the backend (first start generates and publishes the "
        f"demo catalog at {args.size:g} MB per version)")
    t0 = time.perf_counter()
    backend = Backend(work / "backend", args.size, args.backend_timeout)
    log(f"backend at {backend.url} after {time.perf_counter() - t0:.0f} s")
    proxy = FaultProxy(backend.url).start()
    engine_dir = work / f"engine-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="peers-", dir=work))
    store: Store | None = None
    try:
        backend.set_edges([proxy.url + "/cdn/"])
        time.sleep(1.1)  # the edge file is re-read on mtime change
        demo = json.loads((backend.data / "demo.json").read_text())
        versions = next(p["versions"] for p in demo["products"] if p["productId"] == PRODUCT)
        builds = backend.data / "builds" / PRODUCT
        store = Store(backend.data / "store")
        engine = Engine(engine_dir / "data", backend.url)
        target = engine_dir / "game"
        engine.ok("login", "demo", "--password", "demo")

        cdn = backend.data / "store" / "cdn"
        preloaded = args.preload_manifests
        if preloaded:
            preload_manifests(engine.data, cdn, versions)
        proxy.reset_counters()
        first = versions[-1] if args.verify_only else versions[0]
        r = engine.run("install", PRODUCT, "--version", first, "--target", str(target))
        code = failure_code(r.lines)
        if r.code != 0 and not preloaded and code.startswith("MANIFEST"):
            log(f"install failed with {code}; "
                "retrying with the signed manifests preloaded into the engine's manifest cache "
                "(their bytes are added to ours_bytes as if fetched)")
            preloaded = True
            preload_manifests(engine.data, cdn, versions)
            proxy.reset_counters()
            r = engine.run("install", PRODUCT, "--version", first, "--target", str(target))
        if r.code != 0:
            raise SystemExit(f"bench/update: install exited {r.code}:\n{r.lines[-3:]}\n"
                             f"{r.stderr[-3000:]}")
        task = r.lines[-1]["task"]
        install = {"version": first, "wire_bytes": proxy.bytes_sent,
                   "plan_bytes": task["downloadSizeBytes"], "seconds": r.seconds,
                   "engine_write_bytes": r.write_bytes}
        if proxy.requests == 0:
            raise SystemExit("bench/update: nothing went through the counting proxy")
        log(f"installed {first}: {proxy.bytes_sent / MB:.1f} MB in {r.seconds:.1f} s")

        steps: list[dict[str, Any]] = []
        per_file: dict[str, list[FileRow]] = {}
        for old_v, new_v in ([] if args.verify_only else itertools.pairwise(versions)):
            proxy.reset_counters()
            r = engine.ok("update", PRODUCT, "--version", new_v)
            wire, requests = proxy.bytes_sent, proxy.requests
            manifest_extra = manifest_bytes(cdn, new_v) if preloaded else 0
            wire += manifest_extra
            seen = [(h.path_qs.split("?", 1)[0].split("/cdn/", 1)[-1], h.range)
                    for h in proxy.history]
            failed = {ln["payload"]["itemId"] for ln in r.lines if ln.get("type") == "downloadError"
                      and ln["payload"].get("errorCode") == "DELTA_PATCH_APPLICATION_FAILED"}
            plan = next(ln["payload"] for ln in r.lines if ln.get("type") == "updatePlan")
            final = r.lines[-1]
            assert final.get("result") == "completed", final
            log(f"update {old_v} -> {new_v}: {wire / MB:.2f} MB on the wire in {r.seconds:.1f} s;"
                " running the peer tools")
            t1 = time.perf_counter()
            rows, peer_secs = peer_step(builds / old_v, builds / new_v, tmp)
            peer_wall = time.perf_counter() - t1
            old_m, new_m = store.read_manifest(PRODUCT, old_v), store.read_manifest(PRODUCT, new_v)
            delta: Any = store.read_delta(PRODUCT, old_v, new_v)
            doc = store.read_update_doc(PRODUCT, old_m, new_v)
            inline = 0
            if doc is not None and any(rel.endswith(".v3.delta") for rel, _ in seen):
                # format 3: the document carries the small patches; count them as patches
                delta = as_delta_index(doc[0], old_m, new_m)
                inline = sum(p.patch_size for p in doc[0].patches if p.data is not None)
            split = analyse_step(old_m, new_m, delta, rows, seen, cdn, failed)
            split["documents_bytes"] -= inline
            split["patches_applied_bytes"] += inline
            split["documents_bytes"] += manifest_extra
            per_file[f"{old_v} > {new_v}"] = rows
            peer_totals = {t: sum(row.peers[t] for row in rows if row.peers) for t in PEERS}
            rename = sum(row.peers["xdelta3"] for row in rows if row.status == "renamed")
            best = min(peer_totals.values())
            steps.append({
                "from": old_v, "to": new_v,
                "ours_bytes": wire,
                "xdelta3_bytes": peer_totals["xdelta3"],
                "zstd_patch_from_bytes": peer_totals["zstd_patch_from"],
                "bsdiff_bytes": peer_totals["bsdiff"],
                "hdiffpatch_bytes": peer_totals["hdiffpatch"],
                "full_bytes": plan["fullDownloadBytes"],
                "written_per_downloaded": r.write_bytes / max(wire, 1),
                "seconds": round(r.seconds, 3),
                "best_peer_bytes": best,
                "goal_download_pass": wire <= best,
                "plan_download_bytes": plan["downloadBytes"],
                "plan_patch_bytes": plan["patchBytes"],
                "plan_reused_bytes": plan["reusedBytes"],
                "plan_write_bytes": plan["writeBytes"],
                "engine_downloaded_bytes": final["task"]["downloadedBytes"],
                "engine_write_bytes": r.write_bytes,
                "engine_write_source": "wait4 ru_oublock*512 (= /proc/<pid>/io write_bytes at exit)",
                "engine_proc_io_last": r.proc_io,
                "engine_cpu_seconds": round(r.cpu_seconds, 3),
                "wire_requests": requests,
                "patch_fallbacks": sorted(failed),
                "manifest_preloaded_bytes": manifest_extra,
                "wire_split": split,
                "peer_rename_bytes": rename,
                "peer_seconds": {k: round(v, 2) for k, v in peer_secs.items()},
                "peer_wall_seconds": round(peer_wall, 2),
                "files": [{"path": row.path, "status": row.status, "size": row.size,
                           "ours_method": row.ours_method, "ours_bytes": round(row.ours_bytes),
                           **{f"{t}_bytes": row.peers.get(t) for t in PEERS}}
                          for row in rows],
            })
            log(f"  peers: xdelta3 {peer_totals['xdelta3'] / MB:.2f}, zstd-pf "
                f"{peer_totals['zstd_patch_from'] / MB:.2f}, bsdiff {peer_totals['bsdiff'] / MB:.2f}, "
                f"hdiff {peer_totals['hdiffpatch'] / MB:.2f}"
                f" MB ({peer_wall:.0f} s)")

        log("verify throughput (cold, warm) beside cat")
        final_m = store.read_manifest(PRODUCT, versions[-1])
        files = [target / f.path for f in final_m.files]
        verify = measure_verify(engine, files, args.cold_runs, args.cold_method)
    finally:
        if store is not None:
            store.close()
        proxy.stop()
        backend.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(engine_dir, ignore_errors=True)

    result: dict[str, Any] = {
        "steps": steps,
        "verify_mb_s": round(verify["verify_mb_s"], 1),
        "cat_mb_s": round(verify["cat_mb_s"], 1),
        "verify_quick_s": verify["verify_quick_s"],
        "verify_quick_unchanged_files": verify["verify_quick_unchanged_files"],
        "verify_cold_mb_s": round(verify["verify_cold_mb_s"], 1),
        "cat_cold_mb_s": round(verify["cat_cold_mb_s"], 1),
        "verify_warm_mb_s": round(verify["verify_warm_mb_s"], 1),
        "cat_warm_mb_s": round(verify["cat_warm_mb_s"], 1),
        "goal_download_pass": (None if args.verify_only
                               else all(s["goal_download_pass"] for s in steps)),
        "verify_cold_median_mb_s": round(verify["verify_cold_median_mb_s"], 1),
        "cat_cold_median_mb_s": round(verify["cat_cold_median_mb_s"], 1),
        "cold_ratio_per_round_median": round(verify["cold_ratio_per_round_median"], 3),
        "goal_verify_cold_pass": verify["verify_cold_mb_s"] >= GOAL_VERIFY_RATIO * verify["cat_cold_mb_s"],
        "goal_verify_warm_pass": verify["verify_warm_mb_s"] >= GOAL_VERIFY_RATIO * verify["cat_warm_mb_s"],
        "size_mb": args.size,
        "manifests_preloaded": preloaded,
        "install": install,
        "verify": verify,
        "tools": tools,
        "machine": {**info, "loadavg_end": os.getloadavg()[0],
                    "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
    }
    print_table(result, per_file)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
