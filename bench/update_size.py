"""Content-format benchmark: update download size, install size and publish speed of our format
beside per-file ``xdelta3``, ``zstd --patch-from`` and ``bsdiff`` on the same builds.

    .venv/bin/python bench/update_size.py [--json] [--size MB] [--work DIR] [OLD_DIR NEW_DIR]

Without build folders it generates the demo catalog (``backend.democatalog.generate``, one
star-courier version weighs about ``--size`` MiB, default 64) and publishes every version of
star-courier (1.0.0 → 1.1.0 → 1.2.0 → 2.0.0) and tiny-tactics (1.0.0 → 1.0.1) into a fresh store;
with ``OLD_DIR NEW_DIR`` it publishes those two builds as one product instead.

Measured per version step:

* ours: ``patcher.sizing.update_cost(old, new, delta).download_bytes``: the stored blocks holding
  the new chunks plus the per-file patches the client picks from the signed delta index;
* the same step per file with each peer tool (2 files in parallel): ``xdelta3 -e -9 -s old new``,
  ``zstd -19 --long=31 --patch-from=old new`` and ``bsdiff old new patch`` (the Debian binary, or
  the ``bsdiff4`` Python package when the binary is missing). Files whose content is already in
  the old build (same path, or renamed: same SHA-256 at another path) cost 0 for every tool; a new
  file with no same-path predecessor costs its ``zstd -19`` size for every peer;
* patch building: ``PublishReport.patch_seconds`` (each version is published with
  ``patch_previous=1``, so it covers exactly this step) and the peak RSS summed over the publish
  process and its patch workers while patches were built (sampled from /proc every 0.1 s;
  each publish runs in its own subprocess, whose ``ru_maxrss`` from ``wait4`` is reported too).

And for the main product: the full-install download (``patcher.sizing.install_bytes`` of the
latest manifest) beside per-file ``zstd -19`` of that whole build, and publish throughput: input
bytes / ``PublishReport.publish_seconds`` (scan, chunk, hash, compress, pack, sign; no patches),
over all its versions. Sizes are in MB = 10**6 bytes.

With ``--json`` the last printed line is one JSON object::

    {"steps": [{"product": ..., "from": ..., "to": ..., "ours_bytes": N, "xdelta3_bytes": N,
                "zstd_patch_from_bytes": N, "bsdiff_bytes": N, "full_bytes": N,
                "patch_build_s": X, "patch_peak_rss_bytes": N}, ...],
     "install_bytes": N, "zstd19_install_bytes": N, "publish_mb_s": X, ...}

``--publish-only`` publishes without patches and measures only publish speed and fresh
installs; ``--repeat N`` publishes everything N times (fresh stores, fastest run per version);
``--patcher-repo DIR`` publishes with another checkout's ``patcher``; ``--against DIR`` (with
``--publish-only``) publishes every round with this checkout and with DIR's, alternating which
goes first, and reports both side by side (an A/B in one run; ``"against"`` in the JSON).

The work folder (``--work``, default ``.bench-data/update-size/``, gitignored) keeps the
generated builds and ``peer-sizes.json``: peer results keyed by tool version and input SHA-256,
so a second run over the same builds re-measures only our side (delete it to re-run the peers).
The store is rebuilt on every run. The peer tools are Debian packages:
``apt-get install -y xdelta3 bsdiff zstd``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from patcher.deltaindex import DeltaIndex  # noqa: E402
from patcher.diff import diff_manifests  # noqa: E402
from patcher.manifest import Manifest, check_id  # noqa: E402
from patcher.sizing import UpdateCost, choose_patches, chunk_share, install_bytes, update_cost  # noqa: E402
from patcher.store import Store  # noqa: E402
from patcher.updatedoc import as_delta_index  # noqa: E402
from testing.builds import build_files, cpu_model, dpkg_version, run_peer, sha256_file, tool_version  # noqa: E402

MB = 1_000_000
GIB = 1024**3
WORKERS = 2  # the target machine has 2 cores
PATCH_START = "PATCH-START"

# Goals (on 2 cores).
GOAL_INSTALL_RATIO = 1.02
GOAL_PUBLISH_MB_S = 300.0
GOAL_PATCH_S = 60.0
GOAL_PATCH_RSS = 2 * GIB

TOOLS = ("xdelta3", "zstd_patch_from", "bsdiff", "hdiffpatch")
TOOL_LABELS = {"xdelta3": "xdelta3", "zstd_patch_from": "zstd-pf", "bsdiff": "bsdiff",
               "hdiffpatch": "hdiff"}
SIGNATURE = 64

# The HDiffPatch peer (the C++ library through the ``hdiffpatch`` package, run as its own
# process like the other tools): one match search, then the smallest of its strongest coders,
# as a user of ``hdiffz -c-lzma2-9 / -c-zstd-22 / -c-bzip2-9`` would pick per file.
HDIFF_PEER = (sys.executable, "-c", """
import sys, hdiffpatch
old, new = (open(p, 'rb').read() for p in sys.argv[1:3])
plain = hdiffpatch.diff(old, new, 'none', validate=False)
best = min((plain, *(hdiffpatch.recompress(plain, c) for c in (
    hdiffpatch.Lzma2Config(level=9, window=26), hdiffpatch.ZStdConfig(level=22, window=27),
    hdiffpatch.BZip2Config(level=9)))), key=len)
assert hdiffpatch.apply(old, best) == new
open(sys.argv[3], 'wb').write(best)
""")


def log(msg: str) -> None:
    print(f"[update_size] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Peer tools


@dataclass(frozen=True, slots=True)
class Peers:
    bsdiff_cmd: tuple[str, ...]  # prefix; the call appends OLD NEW PATCH
    bsdiff_impl: str
    versions: dict[str, str]


def find_peers() -> Peers:
    missing = [(t, pkg) for t, pkg in (("xdelta3", "xdelta3"), ("zstd", "zstd")) if not shutil.which(t)]
    bsdiff_bin = shutil.which("bsdiff")
    if bsdiff_bin:
        bsdiff_cmd: tuple[str, ...] = (bsdiff_bin,)
        impl = f"bsdiff binary ({bsdiff_bin}, Debian package bsdiff {dpkg_version('bsdiff')})"
    else:
        try:
            import bsdiff4

            bsdiff_cmd = (sys.executable, "-c",
                          "import sys, bsdiff4; bsdiff4.file_diff(*sys.argv[1:4])")
            impl = f"bsdiff4 {getattr(bsdiff4, '__version__', '?')} (Python; no bsdiff binary)"
        except ImportError:
            missing.append(("bsdiff", "bsdiff"))
            bsdiff_cmd, impl = (), ""
    if missing:
        names = ", ".join(f"'{t}' (Debian package {pkg})" for t, pkg in missing)
        pkgs = " ".join(pkg for _, pkg in missing)
        raise SystemExit(f"update_size: missing peer tool(s): {names}; install with: "
                         f"apt-get install -y {pkgs}")
    try:
        from importlib.metadata import version as dist_version

        hdiff = f"hdiffpatch {dist_version('hdiffpatch')} (HDiffPatch library, Python package)"
    except ImportError:
        raise SystemExit("update_size: the hdiffpatch package is missing: run scripts/bootstrap.sh") \
            from None
    versions = {
        "xdelta3": tool_version(["xdelta3", "-V"]),
        "zstd": tool_version(["zstd", "--version"]),
        "bsdiff": impl,
        "hdiffpatch": hdiff,
    }
    return Peers(bsdiff_cmd, impl, versions)


@dataclass(frozen=True, slots=True)
class PeerJob:
    tool: str  # xdelta3, zstd_patch_from, bsdiff or zstd19
    old: Path | None
    new: Path
    key: tuple[str, ...]  # cache key: tool and content hashes


class PeerRunner:
    """Runs peer tools over files with WORKERS in parallel.

    Results are cached by tool version and the SHA-256 of the inputs, in memory and in
    ``cache_file`` (so a second run over the same builds only re-measures our side; delete the
    file to re-measure the peers)."""

    def __init__(self, peers: Peers, tmp: Path, cache_file: Path | None = None) -> None:
        self.peers = peers
        self.tmp = tmp
        self.sizes: dict[tuple[str, ...], int] = {}
        self.seconds: dict[tuple[str, ...], float] = {}
        self.cache_file = cache_file
        self._disk: dict[str, list[float]] = {}
        if cache_file is not None and cache_file.exists():
            try:
                self._disk = json.loads(cache_file.read_text())
            except ValueError:
                self._disk = {}

    def _disk_key(self, key: tuple[str, ...]) -> str:
        tool = "zstd" if key[0].startswith("zstd") else key[0]
        return "|".join((self.peers.versions.get(tool, tool), *key))

    def _save(self) -> None:
        if self.cache_file is not None:
            tmp = self.cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._disk))
            os.replace(tmp, self.cache_file)

    def _run(self, job: PeerJob) -> tuple[int, float]:
        if job.tool == "hdiffpatch":  # run_peer appends OLD NEW OUT to a "bsdiff" command prefix
            return run_peer("bsdiff", job.old, job.new, self.tmp, HDIFF_PEER)
        return run_peer(job.tool, job.old, job.new, self.tmp, self.peers.bsdiff_cmd)

    def run(self, jobs: Iterable[PeerJob]) -> None:
        todo: dict[tuple[str, ...], PeerJob] = {}
        for j in jobs:
            cached = self._disk.get(self._disk_key(j.key))
            if cached is not None:
                self.sizes[j.key], self.seconds[j.key] = int(cached[0]), cached[1]
            elif j.key not in self.sizes:
                todo.setdefault(j.key, j)
        # biggest first, so the two workers finish together
        order = sorted(todo.values(), key=lambda j: -j.new.stat().st_size)
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for j, (size, secs) in zip(order, pool.map(self._run, order), strict=True):
                self.sizes[j.key] = size
                self.seconds[j.key] = secs
                self._disk[self._disk_key(j.key)] = [size, secs]
                self._save()


# ---------------------------------------------------------------------------------------------
# Publishing (each version in a subprocess)


@dataclass(slots=True)
class PublishRun:
    product: str
    version: str
    report: dict[str, Any]
    wall_s: float
    maxrss_bytes: int  # ru_maxrss of the publish subprocess and its waited-for workers
    patch_peak_rss_bytes: int  # summed over the process tree, sampled while patches were built
    loadavg: float  # 1-minute load average before the publish (other work on the machine)


def _tree_rss(root: int, page: int) -> int:
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    total = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * page
        except OSError:
            pass
        stack.extend(parents.get(pid, ()))
    return total


class RssSampler(threading.Thread):
    def __init__(self, root: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak = 0
        self._stop_event = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _tree_rss(self.root, self._page))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def publish_in_subprocess(store_dir: Path, product: str, version: str, build: Path,
                          patches: bool = True, patcher_repo: Path = REPO) -> PublishRun:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--publish-child", str(store_dir),
           product, version, str(build), "1" if patches else "0", str(patcher_repo)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=REPO, text=True)
    assert proc.stdout is not None
    sampler: RssSampler | None = None
    result: dict[str, Any] | None = None
    for line in proc.stdout:
        line = line.strip()
        if line == PATCH_START and sampler is None:
            sampler = RssSampler(proc.pid)
            sampler.start()
        elif line.startswith("{"):
            result = json.loads(line)
    if sampler is not None:
        sampler.stop()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or result is None:
        raise SystemExit(f"update_size: publishing {product} {version} failed "
                         f"(exit {proc.returncode}), see the error above")
    return PublishRun(product, version, result, wall, usage.ru_maxrss * 1024,
                      sampler.peak if sampler is not None else 0, load)


def publish_child(store_dir: Path, product: str, version: str, build: Path, patches: bool = True,
                  patcher_repo: Path = REPO) -> None:
    """Subprocess side: publish one version, patches against the previous version only (or
    none), with the ``patcher`` package of ``patcher_repo`` (an A/B against another checkout)."""
    if patcher_repo != REPO:
        for name in [m for m in sys.modules if m == "patcher" or m.startswith("patcher.")]:
            del sys.modules[name]
        sys.path.insert(0, str(patcher_repo))
    import patcher.publish as pub
    from patcher.store import Store as ChildStore

    original = pub.build_patches_for
    cpu: dict[str, float] = {}

    def cpu_seconds() -> float:  # this process and its finished patch workers
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def marked(*args: Any, **kwargs: Any) -> Any:
        print(PATCH_START, flush=True)
        started = cpu_seconds()
        cpu["publish_cpu_s"] = started - cpu["start"]
        try:
            return original(*args, **kwargs)
        finally:
            cpu["patch_cpu_s"] = cpu_seconds() - started

    pub.build_patches_for = marked
    cpu["start"] = cpu_seconds()
    store = ChildStore(store_dir)
    try:
        report = pub.publish(store, product, version, build, workers=WORKERS,
                             patch_previous=1 if patches else 0)
    finally:
        store.close()
    del cpu["start"]
    print(json.dumps({**report.to_dict(), **cpu}), flush=True)


# ---------------------------------------------------------------------------------------------
# One version step


@dataclass(slots=True)
class FileRow:
    path: str
    status: str  # changed, added
    size: int
    ours_method: str  # chunks, zstd, bsdiff
    ours_bytes: float
    peers: dict[str, int]  # tool -> bytes

    @property
    def best_peer(self) -> int:
        return min(self.peers.values())


@dataclass(slots=True)
class BlockUse:
    """A block an update fetches: how much of it the update needs, and what else it holds."""

    index: int
    stored: int
    raw: int
    needed_raw: int
    needed_by: dict[str, int]  # file -> raw bytes of its needed chunks in this block
    holds: dict[str, int]  # file -> raw bytes of its chunks in this block (first owner)

    @property
    def waste(self) -> float:
        return self.stored * (1 - self.needed_raw / self.raw) if self.raw else 0.0


def chunk_owners(manifest: Manifest) -> tuple[dict[str, int], dict[str, str]]:
    """Chunk id -> size, and -> the first file of the manifest holding it."""
    sizes: dict[str, int] = {}
    owner: dict[str, str] = {}
    for f in manifest.files:
        for c in f.chunks:
            sizes.setdefault(c.id, c.size)
            owner.setdefault(c.id, f.path)
    return sizes, owner


def blocks_used(old: Manifest, new: Manifest, delta: DeltaIndex | None) -> list[BlockUse]:
    """The blocks update_cost() counts, biggest waste first."""
    diff = diff_manifests(old, new)
    patches = choose_patches(old, new, diff, delta)
    needed: dict[str, str] = {}  # chunk -> first file needing it
    for path in diff.rebuilt:
        f = new.file(path)
        assert f is not None
        if path in patches:
            continue
        for c in f.chunks:
            if c.id in diff.download:
                needed.setdefault(c.id, path)
    sizes, owner = chunk_owners(new)
    members: dict[int, list[str]] = {}
    for cid, loc in new.chunks.items():
        members.setdefault(loc.block, []).append(cid)
    out: list[BlockUse] = []
    for b in sorted({new.chunks[c].block for c in needed}):
        blk = new.blocks[b]
        by: dict[str, int] = {}
        holds: dict[str, int] = {}
        for cid in members[b]:
            holds[owner[cid]] = holds.get(owner[cid], 0) + sizes[cid]
            if cid in needed:
                by[needed[cid]] = by.get(needed[cid], 0) + sizes[cid]
        out.append(BlockUse(b, blk.stored_size, blk.raw_size, sum(by.values()), by, holds))
    return sorted(out, key=lambda u: -u.waste)


def live_share(manifest: Manifest) -> float:
    """Stored bytes attributable to the manifest's own chunks (install minus dead block parts)."""
    sizes, _ = chunk_owners(manifest)
    return sum(chunk_share(manifest, cid, size) for cid, size in sizes.items())


@dataclass(slots=True)
class Step:
    product: str
    old: str
    new: str
    cost: UpdateCost
    peers: dict[str, int]
    peer_seconds: dict[str, float]
    rows: list[FileRow]
    block_rounding: float  # whole blocks fetched minus the chunk shares attributed to files
    moved: int
    unchanged: int
    publish: PublishRun
    blocks: list[BlockUse]
    meta: int  # what an engine fetches besides blocks and patches (see metadata_bytes)
    manifest_patched: bool

    @property
    def ours(self) -> int:
        """Everything the update downloads: blocks, patches, manifest and delta index."""
        return self.cost.download_bytes + self.meta

    @property
    def best_peer(self) -> tuple[str, int]:
        tool = min(self.peers, key=lambda t: self.peers[t])
        return tool, self.peers[tool]


def metadata_bytes(store: Store, product: str, old_v: str, new_v: str,
                   delta: DeltaIndex | None) -> tuple[int, bool]:
    """What the engine fetches for an update besides blocks and patches: the new manifest's
    signature, then the manifest patch the signed delta index names (or the whole manifest),
    and that index with its signature; (bytes, manifest patched?)."""
    manifest = store.path(store.manifest_rel(product, new_v)).stat().st_size
    index = 0
    for rel in (store.delta_v2_rel(product, old_v, new_v), store.delta_rel(product, old_v, new_v)):
        if store.path(rel).exists():
            index = store.path(rel).stat().st_size + SIGNATURE
            break
    mp = delta.manifest_patch if delta is not None else None
    body = mp.patch_size if mp is not None else manifest
    return SIGNATURE + body + index, mp is not None


def ours_per_file(old: Manifest, new: Manifest, delta: DeltaIndex | None) -> tuple[
        dict[str, tuple[str, float]], float]:
    """Per rebuilt file: (method, bytes) of our plan; plus the block rounding remainder."""
    diff = diff_manifests(old, new)
    patches = choose_patches(old, new, diff, delta)
    out: dict[str, tuple[str, float]] = {}
    seen: set[str] = set()
    for path in diff.rebuilt:
        if path in patches:
            out[path] = (patches[path].method, float(patches[path].patch_size))
            continue
        f = new.file(path)
        assert f is not None
        share = 0.0
        for c in f.chunks:
            if c.id in diff.download and c.id not in seen:
                seen.add(c.id)
                share += chunk_share(new, c.id, c.size)
        out[path] = ("chunks", share)
    cost = update_cost(old, new, delta)
    attributed = sum(b for m, b in out.values() if m == "chunks")
    return out, cost.chunk_bytes - attributed


def measure_step(runner: PeerRunner, store: Store, product: str, old_v: str, old_dir: Path,
                 new_v: str, new_dir: Path, run: PublishRun) -> Step:
    old_m = store.read_manifest(product, old_v)
    new_m = store.read_manifest(product, new_v)
    delta = store.read_delta(product, old_v, new_v)
    doc = store.read_update_doc(product, old_m, new_v)
    meta: int | None = None
    if doc is not None:
        # format 3: the engine fetches the new manifest's signature and the document, which
        # carries the manifest delta and the small patches; larger patches are separate files
        delta = as_delta_index(doc[0], old_m, new_m)
        chosen = update_cost(old_m, new_m, delta).patches
        inline = {p.patch_id for p in doc[0].patches if p.data is not None}
        meta = SIGNATURE + doc[1] - sum(p.patch_size for p in chosen if p.patch_id in inline)
    cost = update_cost(old_m, new_m, delta)
    ours, rounding = ours_per_file(old_m, new_m, delta)

    old_files = build_files(old_dir)
    new_files = build_files(new_dir)
    old_shas = {sha256_file(p) for p in old_files.values()}
    plan: list[tuple[str, str, Path, Path | None]] = []  # path, status, new file, old file
    unchanged = moved = 0
    for rel, path in new_files.items():
        sha = sha256_file(path)
        prev = old_files.get(rel)
        if prev is not None and sha256_file(prev) == sha:
            unchanged += 1
        elif sha in old_shas:
            moved += 1  # renamed: any rename-aware tool ships nothing
        elif prev is not None:
            plan.append((rel, "changed", path, prev))
        else:
            plan.append((rel, "added", path, None))

    def jobs_for(new: Path, prev: Path | None) -> dict[str, PeerJob]:
        sha = sha256_file(new)
        if prev is None:
            j = PeerJob("zstd19", None, new, ("zstd19", sha))
            return dict.fromkeys(TOOLS, j)
        psha = sha256_file(prev)
        return {t: PeerJob(t, prev, new, (t, psha, sha)) for t in TOOLS}

    per_file = {rel: jobs_for(new, prev) for rel, _, new, prev in plan}
    runner.run(j for jobs in per_file.values() for j in jobs.values())
    rows: list[FileRow] = []
    totals = dict.fromkeys(TOOLS, 0)
    seconds = dict.fromkeys(TOOLS, 0.0)
    for rel, status, new, _prev in plan:
        sizes = {t: runner.sizes[j.key] for t, j in per_file[rel].items()}
        for t, j in per_file[rel].items():
            totals[t] += sizes[t]
            seconds[t] += runner.seconds[j.key]
        method, ours_b = ours.get(rel, ("moved", 0.0))
        rows.append(FileRow(rel, status, new.stat().st_size, method, ours_b, sizes))
    patched = True
    if meta is None:
        meta, patched = metadata_bytes(store, product, old_v, new_v, delta)
    return Step(product, old_v, new_v, cost, totals, seconds, rows, rounding, moved, unchanged, run,
                blocks_used(old_m, new_m, delta), meta, patched)


# ---------------------------------------------------------------------------------------------
# Reporting


def mb(n: float) -> str:
    return f"{round(n / MB, 3) + 0.0:.3f}"  # + 0.0: no "-0.000"


def kb(n: float) -> str:
    return f"{round(n / 1000, 1) + 0.0:.1f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def code_version(repo: Path = REPO) -> str:
    """The last commit that touched patcher/ and any uncommitted change there (the results
    depend on the publisher's code)."""
    try:
        head = subprocess.run(["git", "log", "-1", "--format=%h", "--", "patcher"], cwd=repo,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "patcher"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"patcher/ at {head}" + (f" + uncommitted {', '.join(changed)}" if changed else "")


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in
                    enumerate(zip(headers, widths, strict=True))))
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(r, widths, strict=True))))


@dataclass(frozen=True, slots=True)
class Install:
    product: str
    version: str
    latest: bool
    ours: int  # install_bytes(manifest): every block holding one of its chunks
    live: float  # the chunk shares of its own chunks (the rest of those blocks is dead weight)
    zstd19: int  # per-file zstd -19 of the build
    dead_by_file: dict[str, float]  # file -> dead stored bytes of the blocks it needs


def dead_weight(manifest: Manifest) -> dict[str, float]:
    """Stored bytes of chunks a fresh install fetches but does not use (older versions' chunks
    sharing a block with this version's), attributed to the files whose chunks need the block."""
    sizes, owner = chunk_owners(manifest)
    live: dict[int, dict[str, int]] = {}
    for cid, loc in manifest.chunks.items():
        per = live.setdefault(loc.block, {})
        per[owner[cid]] = per.get(owner[cid], 0) + sizes[cid]
    out: dict[str, float] = {}
    for b, per in live.items():
        blk = manifest.blocks[b]
        used = sum(per.values())
        dead = blk.stored_size * (1 - used / blk.raw_size)
        for path, n in per.items():
            out[path] = out.get(path, 0.0) + dead * n / used
    return out


def report(steps: list[Step], runs: list[PublishRun], main_product: str, installs: list[Install],
           peers: Peers, args: argparse.Namespace,
           source: str, code: str) -> dict[str, Any]:
    info = machine()
    print(f"# update_size: {source}")
    now = code_version(args.patcher_repo)
    print(f"code: {code}" + ("" if now == code else f" (changed during the run, now {now})"))
    print(f"machine: {info['nproc']} cores, {info['cpu']}; Python {info['python']}; "
          f"load average now {info['loadavg']}, before each publish "
          f"{[round(r.loadavg, 2) for r in runs]}")
    print(f"peers: {peers.versions['xdelta3']}; {peers.versions['zstd']}; {peers.bsdiff_impl}; "
          f"{peers.versions['hdiffpatch']}")
    print("sizes in MB = 10^6 bytes; peers run per file, 2 files in parallel\n")

    print("## Update download per step (ours = blocks of new chunks + chosen patches + meta: "
          "with a format-3 document, the new manifest's signature and the document less the "
          "chosen patches it carries; else "
          "manifest signature and patch (or whole manifest), delta index and signature; "
          "peers ship no metadata)")
    rows = []
    for s in steps:
        best_tool, best = s.best_peer
        rows.append([
            f"{s.product} {s.old}→{s.new}", mb(s.ours), mb(s.cost.chunk_bytes),
            mb(s.cost.patch_bytes), f"{s.meta:,}" + ("" if s.manifest_patched else "*"),
            *(mb(s.peers[t]) for t in TOOLS),
            f"{TOOL_LABELS[best_tool]}", f"{s.ours / best:.3f}" if best else "-",
            f"{s.cost.download_bytes / best:.3f}" if best else "-",
            mb(s.cost.full_bytes), f"{s.cost.write_bytes / max(s.ours, 1):.1f}",
            f"{s.publish.report['patch_seconds']:.1f}",
            f"{s.publish.patch_peak_rss_bytes / 2**20:.0f}",
            verdict(s.ours <= best),
        ])
    print_table(["step", "ours", "chunks", "patches", "meta B", *(TOOL_LABELS[t] for t in TOOLS),
                 "best", "ours/best", "w/o meta", "full", "written/dl", "patch s", "patch MiB",
                 "goal"], rows)
    print("(* = no manifest patch: the whole manifest is counted)")
    print("\npeer tool seconds per step (sum over files, 2 in parallel; cached results keep the "
          "time of the run that measured them):")
    for s in steps:
        parts = ", ".join(f"{TOOL_LABELS[t]} {s.peer_seconds[t]:.1f}" for t in TOOLS)
        print(f"  {s.product} {s.old}→{s.new}: {parts}")

    print_installs(installs)
    main_install = next(i for i in installs if i.product == main_product and i.latest)
    for i in installs:
        top = sorted(i.dead_by_file.items(), key=lambda kv: -kv[1])[:5]
        if top and top[0][1] >= 1000:
            print(f"  {i.product} {i.version}: dead bytes by the file needing the block: "
                  + ", ".join(f"{p} {mb(n)}" for p, n in top if n >= 1000))

    publish_mb_s, slowest_mb_s = print_publishing(runs, main_product, args.repeat)

    print("\n## Per file (largest contributors; ours loses where ours > best peer)")
    for s in steps:
        best_tool, _ = s.best_peer
        ranked = sorted(s.rows, key=lambda r: -max(r.ours_bytes, r.peers[best_tool]))[:10]
        losers = sorted((r for r in s.rows if r.ours_bytes - r.best_peer > 1000),
                        key=lambda r: r.best_peer - r.ours_bytes)[:10]
        shown = ranked + [r for r in losers if r not in ranked]
        print(f"\n{s.product} {s.old}→{s.new}: {len(s.rows)} files rebuilt, {s.moved} renamed, "
              f"{s.unchanged} unchanged; block rounding {mb(s.block_rounding)} MB")
        print_table(
            ["file (kB)", "status", "size", "ours via", "ours", *(TOOL_LABELS[t] for t in TOOLS),
             "ours-best peer"],
            [[r.path, r.status, kb(r.size), r.ours_method, kb(r.ours_bytes),
              *(kb(r.peers[t]) for t in TOOLS), kb(r.ours_bytes - r.best_peer)] for r in shown])
        if s.blocks:
            stored = sum(u.stored for u in s.blocks)
            need = sum(u.needed_raw for u in s.blocks)
            raw = sum(u.raw for u in s.blocks)
            wasteful = [u for u in s.blocks if u.waste >= 1]
            print(f"  blocks fetched: {len(s.blocks)}, {mb(stored)} MB stored; the update needs "
                  f"{mb(need)} MB raw of their {mb(raw)} MB raw"
                  + ("; most wasteful:" if wasteful else " (no block carries unneeded chunks)"))
            patched = {r.path for r in s.rows if r.ours_method not in ("chunks", "moved")}
            for u in wasteful[:5]:
                needers = ", ".join(f"{p} {n / 1000:.1f} kB" for p, n in
                                    sorted(u.needed_by.items(), key=lambda kv: -kv[1])[:3])
                others = ", ".join(
                    f"{p}{' (patched)' if p in patched else ''} {n / u.raw:.0%}"
                    for p, n in sorted(u.holds.items(), key=lambda kv: -kv[1])[:3])
                print(f"    block {u.index}: {mb(u.stored)} MB stored for {u.needed_raw / 1000:.1f} kB "
                      f"raw needed by {needers}; block holds {others}")
        rest = [r for r in s.rows if r not in shown]
        if rest:
            print(f"  + {len(rest)} more files (kB): ours {kb(sum(r.ours_bytes for r in rest))}, "
                  + ", ".join(f"{TOOL_LABELS[t]} {kb(sum(r.peers[t] for r in rest))}"
                              for t in TOOLS))

    # Goals
    main_steps = [s for s in steps if s.product == main_product]
    print("\n## Goals (2 cores)")
    goal_rows = []
    update_ok = all(s.ours <= s.best_peer[1] for s in steps)
    worst = max(steps, key=lambda s: s.ours / max(s.best_peer[1], 1))
    goal_rows.append([
        "update ≤ best single peer, every step",
        f"worst {worst.product} {worst.old}→{worst.new}: {mb(worst.ours)} vs "
        f"{TOOL_LABELS[worst.best_peer[0]]} {mb(worst.best_peer[1])} "
        f"({worst.ours / max(worst.best_peer[1], 1):.3f}x)", verdict(update_ok)])
    ratio = main_install.ours / main_install.zstd19
    goal_rows.append([f"full install ≤ {GOAL_INSTALL_RATIO}x per-file zstd-19",
                      f"{ratio:.3f}x ({mb(main_install.ours)} vs {mb(main_install.zstd19)})",
                      verdict(ratio <= GOAL_INSTALL_RATIO)])
    goal_rows.append([f"publish ≥ {GOAL_PUBLISH_MB_S:.0f} MB/s of input (no patches)",
                      f"{publish_mb_s:.1f} MB/s overall, slowest version {slowest_mb_s:.1f}",
                      verdict(publish_mb_s >= GOAL_PUBLISH_MB_S)])
    slow = max(main_steps, key=lambda s: s.publish.report["patch_seconds"])
    heavy = max(main_steps, key=lambda s: s.publish.patch_peak_rss_bytes)
    patch_ok = all(s.publish.report["patch_seconds"] < GOAL_PATCH_S
                   and s.publish.patch_peak_rss_bytes < GOAL_PATCH_RSS for s in main_steps)
    goal_rows.append([f"patches per step < {GOAL_PATCH_S:.0f} s and < 2 GiB RAM",
                      f"max {slow.publish.report['patch_seconds']:.1f} s ({slow.old}→{slow.new}), "
                      f"max {heavy.publish.patch_peak_rss_bytes / 2**20:.0f} MiB "
                      f"({heavy.old}→{heavy.new})", verdict(patch_ok)])
    print_table(["goal", "measured", "result"], goal_rows)

    return {
        "source": source,
        "code": code,
        "size_mb": args.size if not args.builds else None,
        "machine": info,
        "bsdiff_impl": peers.bsdiff_impl,
        "steps": [{
            "product": s.product, "from": s.old, "to": s.new,
            "ours_bytes": s.ours, "ours_chunk_bytes": s.cost.chunk_bytes,
            "ours_patch_bytes": s.cost.patch_bytes, "ours_meta_bytes": s.meta,
            "manifest_patched": s.manifest_patched,
            "xdelta3_bytes": s.peers["xdelta3"], "zstd_patch_from_bytes": s.peers["zstd_patch_from"],
            "bsdiff_bytes": s.peers["bsdiff"], "hdiffpatch_bytes": s.peers["hdiffpatch"],
            "full_bytes": s.cost.full_bytes, "written_bytes": s.cost.write_bytes,
            "written_per_downloaded": round(s.cost.write_bytes / max(s.ours, 1), 2),
            "patch_build_s": round(s.publish.report["patch_seconds"], 3),
            "patch_cpu_s": round(s.publish.report["patch_cpu_s"], 3),
            "patch_peak_rss_bytes": s.publish.patch_peak_rss_bytes,
        } for s in steps],
        "install_bytes": main_install.ours,
        "zstd19_install_bytes": main_install.zstd19,
        "publish_mb_s": round(publish_mb_s, 2),
        "goals": {"update": update_ok, "install": ratio <= GOAL_INSTALL_RATIO,
                  "publish": publish_mb_s >= GOAL_PUBLISH_MB_S, "patches": patch_ok},
    }


def print_publishing(runs: list[PublishRun], main_product: str, repeat: int) -> tuple[float, float]:
    """The publishing table; (MB/s over the main product's versions, slowest version's MB/s)."""
    print(f"\n## Publishing (each version in its own subprocess, level 3, {WORKERS} workers"
          + (f"; the fastest of {repeat} runs per version" if repeat > 1 else "") + ")")
    rows = []
    for r in runs:
        rep = r.report
        rows.append([f"{r.product} {r.version}", mb(rep["total_bytes"]),
                     f"{rep['publish_seconds']:.2f}",
                     f"{rep['total_bytes'] / MB / rep['publish_seconds']:.1f}",
                     str(rep["new_chunks"]), mb(rep["stored_bytes"]),
                     f"{rep['publish_cpu_s']:.2f}",
                     f"{rep['patch_seconds']:.1f}", f"{rep['patch_cpu_s']:.1f}",
                     f"{r.patch_peak_rss_bytes / 2**20:.0f}", f"{r.maxrss_bytes / 2**20:.0f}",
                     f"{r.loadavg:.1f}"])
    print_table(["version", "input", "publish s", "MB/s", "new chunks", "stored", "publish CPU s",
                 "patch s", "patch CPU s", "patch tree MiB", "max proc MiB", "load"], rows)
    main_runs = [r for r in runs if r.product == main_product]
    total_in = sum(r.report["total_bytes"] for r in main_runs)
    total_s = sum(r.report["publish_seconds"] for r in main_runs)
    publish_mb_s = total_in / MB / total_s
    slowest = min(main_runs, key=lambda r: r.report["total_bytes"] / r.report["publish_seconds"])
    slowest_mb_s = slowest.report["total_bytes"] / MB / slowest.report["publish_seconds"]
    print(f"{main_product}: {mb(total_in)} MB in {total_s:.2f} s = {publish_mb_s:.1f} MB/s "
          f"({publish_mb_s * MB / 2**20:.1f} MiB/s); slowest version {slowest.version} "
          f"{slowest_mb_s:.1f} MB/s")
    total_cpu = sum(r.report["publish_cpu_s"] for r in main_runs)
    print(f"  CPU time {total_cpu:.2f} s: {total_in / MB / (total_cpu / WORKERS):.1f} MB/s if the "
          f"{WORKERS} cores did nothing else (a bound; wall time is the measured figure)")
    return publish_mb_s, slowest_mb_s


def print_installs(installs: list[Install]) -> None:
    print("\n## Full install (live = our bytes without the dead parts of shared blocks)")
    rows = []
    for i in installs:
        ratio = i.ours / i.zstd19
        rows.append([f"{i.product} {i.version}", mb(i.ours), mb(i.live), mb(i.ours - i.live),
                     mb(i.zstd19), f"{ratio:.3f}", f"{i.live / i.zstd19:.3f}",
                     verdict(ratio <= GOAL_INSTALL_RATIO) if i.latest else "(first version)"])
    print_table(["version", "ours", "live", "dead", "zstd-19", "ours/zstd", "live/zstd",
                 "goal ≤1.02"], rows)


def report_publish(runs: list[PublishRun], main_product: str, installs: list[Install],
                   args: argparse.Namespace, source: str, code: str) -> dict[str, Any]:
    """--publish-only: publish speed and fresh installs, no update steps (no patches built)."""
    info = machine()
    print(f"# update_size --publish-only: {source}")
    print(f"code: {code}")
    print(f"machine: {info['nproc']} cores, {info['cpu']}; Python {info['python']}; "
          f"load average now {info['loadavg']}, before each publish "
          f"{[round(r.loadavg, 2) for r in runs]}")
    print_installs(installs)
    publish_mb_s, slowest_mb_s = print_publishing(runs, main_product, args.repeat)
    latest = [i for i in installs if i.latest]
    install_ok = all(i.ours / i.zstd19 <= GOAL_INSTALL_RATIO for i in latest)
    print("\n## Goals (2 cores)")
    print_table(["goal", "measured", "result"], [
        [f"full install ≤ {GOAL_INSTALL_RATIO}x per-file zstd-19, every product",
         ", ".join(f"{i.product} {i.ours / i.zstd19:.3f}x" for i in latest), verdict(install_ok)],
        [f"publish ≥ {GOAL_PUBLISH_MB_S:.0f} MB/s of input (no patches)",
         f"{publish_mb_s:.1f} MB/s overall, slowest {slowest_mb_s:.1f}",
         verdict(publish_mb_s >= GOAL_PUBLISH_MB_S)]])
    main_runs = [r for r in runs if r.product == main_product]
    return {
        "source": source,
        "code": code,
        "size_mb": args.size if not args.builds else None,
        "machine": info,
        "repeat": args.repeat,
        "publish": [{"product": r.product, "version": r.version,
                     "input_bytes": r.report["total_bytes"],
                     "publish_s": round(r.report["publish_seconds"], 3),
                     "publish_cpu_s": round(r.report["publish_cpu_s"], 3),
                     "stored_bytes": r.report["stored_bytes"], "max_rss_bytes": r.maxrss_bytes,
                     "loadavg": round(r.loadavg, 2)}
                    for r in runs],
        "installs": [{"product": i.product, "version": i.version, "install_bytes": i.ours,
                      "zstd19_install_bytes": i.zstd19, "ratio": round(i.ours / i.zstd19, 4)}
                     for i in installs],
        "publish_mb_s": round(publish_mb_s, 2),
        "publish_cpu_s": round(sum(r.report["publish_cpu_s"] for r in main_runs), 3),
        "goals": {"install": install_ok, "publish": publish_mb_s >= GOAL_PUBLISH_MB_S},
    }


# ---------------------------------------------------------------------------------------------
# Main


def fastest_runs(runs: list[PublishRun]) -> list[PublishRun]:
    """The fastest run of each version, in first-seen order (min of N; the load varies)."""
    fastest: dict[tuple[str, str], PublishRun] = {}
    for r in runs:
        key = (r.product, r.version)
        if key not in fastest or r.report["publish_seconds"] < fastest[key].report["publish_seconds"]:
            fastest[key] = r
    return list(fastest.values())


def measure_installs(runner: PeerRunner, store: Store,
                     products: list[tuple[str, list[tuple[str, Path]]]]) -> list[Install]:
    installs: list[Install] = []
    for product, versions in products:
        # the latest version (the goal) and, to tell codec loss from dead block parts,
        # the first one (its blocks hold nothing else)
        for version, folder in [*versions[:1], versions[-1]] if len(versions) > 1 else versions:
            manifest = store.read_manifest(product, version)
            files = build_files(folder)
            jobs = [PeerJob("zstd19", None, p, ("zstd19", sha256_file(p))) for p in files.values()]
            log(f"zstd -19 of every file of {product} {version}")
            runner.run(jobs)
            installs.append(Install(product, version, version == versions[-1][0],
                                    install_bytes(manifest), live_share(manifest),
                                    sum(runner.sizes[j.key] for j in jobs), dead_weight(manifest)))
    return installs


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def report_ab(rounds: dict[str, list[list[PublishRun]]], main_product: str,
              installs: list[Install], against_installs: list[Install], code: str,
              against_code: str) -> dict[str, Any]:
    """--against: both checkouts side by side, from the same alternated rounds."""
    sides: dict[str, Any] = {}
    for label, side_code, side_installs in (("this", code, installs),
                                            ("against", against_code, against_installs)):
        per_round = [[r for r in one if r.product == main_product] for one in rounds[label]]
        total_in = sum(r.report["total_bytes"] for r in per_round[0])
        catalog = [total_in / MB / sum(r.report["publish_seconds"] for r in one)
                   for one in per_round]
        cpu = [sum(r.report["publish_cpu_s"] for r in one) for one in per_round]
        versions: dict[str, dict[str, list[float]]] = {}
        for one in per_round:
            for r in one:
                v = versions.setdefault(r.version, {"s": [], "cpu_s": []})
                v["s"].append(r.report["publish_seconds"])
                v["cpu_s"].append(r.report["publish_cpu_s"])
        fastest = fastest_runs([r for one in per_round for r in one])
        sides[label] = {
            "code": side_code,
            "catalog_mb_s_median": round(_median(catalog), 1),
            "catalog_mb_s_best_round": round(max(catalog), 1),
            "catalog_mb_s_fastest_each": round(
                total_in / MB / sum(r.report["publish_seconds"] for r in fastest), 1),
            "catalog_cpu_s_median": round(_median(cpu), 3),
            "catalog_cpu_s_min": round(min(cpu), 3),
            "versions": {k: {"min_s": round(min(v["s"]), 3), "median_s": round(_median(v["s"]), 3),
                             "median_cpu_s": round(_median(v["cpu_s"]), 3)}
                         for k, v in versions.items()},
            "install_ratio": {i.product: round(i.ours / i.zstd19, 4)
                              for i in side_installs if i.latest},
            "loads": [round(r.loadavg, 1) for one in rounds[label] for r in one[:1]],
        }
    this, other = sides["this"], sides["against"]
    print(f"\n## A/B in one run: {this['code']} against {other['code']} "
          f"({len(rounds['this'])} rounds each, alternated; load before each round "
          f"{this['loads']} / {other['loads']})")
    rows = [["catalog MB/s, median of rounds", f"{other['catalog_mb_s_median']}",
             f"{this['catalog_mb_s_median']}"],
            ["catalog MB/s, fastest run of each version", f"{other['catalog_mb_s_fastest_each']}",
             f"{this['catalog_mb_s_fastest_each']}"],
            ["catalog CPU s, median (min)",
             f"{other['catalog_cpu_s_median']} ({other['catalog_cpu_s_min']})",
             f"{this['catalog_cpu_s_median']} ({this['catalog_cpu_s_min']})"]]
    for v in this["versions"]:
        a, b = other["versions"][v], this["versions"][v]
        rows.append([f"{main_product} {v} s min / median (median CPU s)",
                     f"{a['min_s']} / {a['median_s']} ({a['median_cpu_s']})",
                     f"{b['min_s']} / {b['median_s']} ({b['median_cpu_s']})"])
    for product in this["install_ratio"]:
        rows.append([f"{product} fresh install / per-file zstd-19",
                     f"{other['install_ratio'][product]}x", f"{this['install_ratio'][product]}x"])
    print_table(["", "against", "this"], rows)
    return sides


def _version_id(folder: Path, fallback: str) -> str:
    try:
        return check_id(folder.name, "version")
    except ValueError:
        return fallback


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--publish-child"]:
        child_store, child_product, child_version, child_build, patches, repo = argv[1:7]
        publish_child(Path(child_store), child_product, child_version, Path(child_build),
                      patches == "1", Path(repo))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--size", type=float, default=64, help="demo catalog MiB per version (64)")
    ap.add_argument("--work", type=Path, default=None,
                    help="work folder (default .bench-data/update-size in the repository)")
    ap.add_argument("--publish-only", action="store_true",
                    help="publish without patches and measure only publish speed and installs")
    ap.add_argument("--repeat", type=int, default=1,
                    help="publish everything N times (fresh stores; min of N per version)")
    ap.add_argument("--patcher-repo", type=Path, default=REPO,
                    help="publish with the patcher package of this checkout (A/B)")
    ap.add_argument("--against", type=Path, default=None,
                    help="with --publish-only: every round also publishes with the patcher "
                         "package of this checkout, alternating which goes first (an A/B in "
                         "one run); both are reported")
    ap.add_argument("builds", nargs="*", metavar="OLD_DIR NEW_DIR",
                    help="two build folders to compare instead of the demo catalog")
    args = ap.parse_args(argv)
    if len(args.builds) not in (0, 2):
        ap.error("give both OLD_DIR and NEW_DIR, or neither")
    if args.repeat < 1 or (args.repeat > 1 and not args.publish_only):
        ap.error("--repeat N needs --publish-only")
    if args.against is not None and not args.publish_only:
        ap.error("--against needs --publish-only")
    for name in ("patcher_repo", "against"):
        repo = getattr(args, name)
        if repo is not None:
            setattr(args, name, repo.resolve())
            if not (repo / "patcher" / "publish.py").is_file():
                ap.error(f"{repo} holds no patcher/publish.py")
    peers = find_peers()
    work = (args.work or REPO / ".bench-data" / "update-size").resolve()
    work.mkdir(parents=True, exist_ok=True)

    products: list[tuple[str, list[tuple[str, Path]]]]
    if args.builds:
        old_dir, new_dir = (Path(b).resolve() for b in args.builds)
        for d in (old_dir, new_dir):
            if not d.is_dir():
                ap.error(f"{d} is not a folder")
        old_v, new_v = _version_id(old_dir, "old"), _version_id(new_dir, "new")
        if old_v == new_v:
            old_v, new_v = "old", "new"
        products = [("bench", [(old_v, old_dir), (new_v, new_dir)])]
        source = f"builds {old_dir} → {new_dir}"
        store_dir = work / "store-dirs"
    else:
        from backend.democatalog import generate

        builds = work / "builds"
        log(f"generating the demo catalog ({args.size:g} MiB per version) in {builds}")
        t0 = time.perf_counter()
        demo = generate(builds, size_mb=args.size)
        log(f"catalog ready in {time.perf_counter() - t0:.1f} s")
        products = [(p.product_id, [(v, builds / p.product_id / v) for v in p.versions])
                    for p in demo]
        source = f"demo catalog, --size {args.size:g} (MiB per star-courier version)"
        store_dir = work / f"store-{args.size:g}"
    main_product = products[0][0]

    code = code_version(args.patcher_repo)
    # (label, patcher checkout, store): the checkout measured, then the one it is compared with
    sides = [("this", args.patcher_repo, store_dir)]
    if args.against is not None:
        sides.append(("against", args.against, store_dir.with_name(store_dir.name + "-against")))
    rounds: dict[str, list[list[PublishRun]]] = {label: [] for label, _, _ in sides}
    for round_no in range(args.repeat):
        # alternate which side goes first: the host's speed drifts over a run
        for label, repo, side_store in sides if round_no % 2 == 0 else sides[::-1]:
            if side_store.exists():
                shutil.rmtree(side_store)
            side_store.mkdir(parents=True)
            rounds[label].append([])
            for product, versions in products:
                for version, folder in versions:
                    log(f"publishing {product} {version}"
                        + (f" with {repo}" if args.against is not None else "")
                        + (f" (round {round_no + 1} of {args.repeat})" if args.repeat > 1 else ""))
                    run = publish_in_subprocess(side_store, product, version, folder,
                                                not args.publish_only, repo)
                    rep = run.report
                    log(f"  {rep['total_bytes'] / MB:.1f} MB in {rep['publish_seconds']:.2f} s "
                        f"(CPU {rep['publish_cpu_s']:.2f} s), patches {rep['patch_seconds']:.1f} s")
                    rounds[label][-1].append(run)
    runs = fastest_runs([r for one in rounds["this"] for r in one])
    by_key = {(r.product, r.version): r for r in runs}

    store = Store(store_dir)
    tmp = Path(tempfile.mkdtemp(prefix="peers-", dir=work))
    try:
        runner = PeerRunner(peers, tmp, work / "peer-sizes.json")
        installs = measure_installs(runner, store, products)
        if args.against is not None:
            other = Store(sides[1][2])
            try:
                against_installs = measure_installs(runner, other, products)
            finally:
                other.close()
        steps: list[Step] = []
        for product, versions in products if not args.publish_only else []:
            for (old_v, old_dir), (new_v, new_dir) in itertools.pairwise(versions):
                log(f"peers for {product} {old_v}→{new_v}")
                t0 = time.perf_counter()
                steps.append(measure_step(runner, store, product, old_v, old_dir, new_v, new_dir,
                                          by_key[(product, new_v)]))
                log(f"  done in {time.perf_counter() - t0:.1f} s")
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)

    if args.publish_only:
        doc = report_publish(runs, main_product, installs, args, source, code)
        if args.against is not None:
            doc["against"] = report_ab(rounds, main_product, installs, against_installs,
                                       code, code_version(args.against))
    else:
        doc = report(steps, runs, main_product, installs, peers, args, source, code)
    if args.json:
        print(json.dumps(doc, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
