"""Manifest model, signing and the strict loader (round-trip and rejection properties)."""

from __future__ import annotations

import copy
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from patcher.errors import ManifestError
from patcher.manifest import (
    MAX_EXPANSION_RATIO,
    MAX_JSON_BYTES,
    MIN_JSON_BUDGET,
    RESERVED_PREFIX,
    Block,
    ChunkEntry,
    ChunkLocation,
    Codec,
    FileEntry,
    LaunchEntry,
    Manifest,
    SaveLocation,
    SaveRoot,
    check_relative_path,
    decode_manifest,
    encode_manifest,
    is_reserved_name,
    json_budget,
    manifest_to_dict,
    manifest_to_json,
    parse_manifest,
)
from patcher.signing import generate_key, load_signed_manifest, public_key_hex, sign_manifest

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024

HEX = "0123456789abcdef"
hex64 = st.text(HEX, min_size=64, max_size=64)


def _valid_segment(s: str) -> bool:
    try:
        check_relative_path(s, "segment")
    except ManifestError:
        return False  # e.g. "con" or "lpt1": reserved on Windows
    return True


segment = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12).filter(
    _valid_segment
)
rel_path = st.lists(segment, min_size=1, max_size=4).map("/".join)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    paths = draw(st.lists(rel_path, min_size=0, max_size=6, unique_by=str.casefold))
    # no path may be a prefix folder of another (file vs folder collision)
    paths = [p for p in paths if not any(q.casefold().startswith(p.casefold() + "/") for q in paths)]
    block = Block("a" * 64, 0, 10_000_000, 10_000_000, Codec.RAW)
    files = []
    locations: dict[str, ChunkLocation] = {}
    cursor = 0
    for path in paths:
        sizes = draw(st.lists(st.integers(1, 200_000), max_size=4))
        chunks = []
        offset = 0
        for size in sizes:
            cid = draw(hex64)
            if cid in locations:
                continue
            chunks.append(ChunkEntry(offset, size, cid))
            locations[cid] = ChunkLocation(0, cursor)
            offset += size
            cursor += size
        files.append(FileEntry(path, offset, draw(st.sampled_from([0o644, 0o755])), draw(hex64),
                               tuple(chunks)))
    if cursor > block.raw_size:
        block = Block("a" * 64, 0, cursor, cursor, Codec.RAW)
    return Manifest(
        product_id=draw(segment.filter(lambda s: s[0].isalnum())),
        version_id="1.0.0",
        files=tuple(files),
        blocks=(block,),
        chunks=locations,
        dirs=("mods",) if "mods" not in {p.split("/")[0] for p in paths} else (),
        launch=(LaunchEntry("Play", "game.py", ("--x",), ""),),
        saves=(SaveLocation(SaveRoot.INSTALL, "saves", ("*.sav",), ()),),
    )


@settings(max_examples=60, deadline=None)
@given(manifests())
def test_round_trip_through_signed_bytes(m: Manifest) -> None:
    key = generate_key()
    blob, sig = sign_manifest(m, key)
    back = load_signed_manifest(blob, sig, key.public_key())
    assert manifest_to_dict(back) == manifest_to_dict(m)


def _mutations(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []

    def mut(name: str, fn: Any) -> None:
        d = copy.deepcopy(doc)
        fn(d)
        out.append((name, d))

    if doc["files"]:
        mut("traversal", lambda d: d["files"][0].__setitem__("path", "../evil"))
        mut("absolute", lambda d: d["files"][0].__setitem__("path", "/etc/passwd"))
        mut("drive", lambda d: d["files"][0].__setitem__("path", "C:/x"))
        mut("backslash", lambda d: d["files"][0].__setitem__("path", "a\\b"))
        mut("nul", lambda d: d["files"][0].__setitem__("path", "a\x00b"))
        mut("dot", lambda d: d["files"][0].__setitem__("path", "a/./b"))
        mut("size", lambda d: d["files"][0].__setitem__("size", d["files"][0]["size"] + 1))
        mut("negative", lambda d: d["files"][0].__setitem__("size", -1))
        mut("bool size", lambda d: d["files"][0].__setitem__("size", True))
        mut("sha", lambda d: d["files"][0].__setitem__("hash_sha256", "zz"))
        mut("collide", lambda d: d["files"].append(
            dict(d["files"][0], path=d["files"][0]["path"].upper())))
        mut("mode", lambda d: d["files"][0].__setitem__("mode", 0o4755))
        if doc["files"][0]["chunks"]:
            mut("gap", lambda d: d["files"][0]["chunks"][0].__setitem__(0, 1))
            mut("chunk size", lambda d: d["files"][0]["chunks"][0].__setitem__(1, 10**9))
    mut("format", lambda d: d.__setitem__("formatVersion", 99))
    mut("product", lambda d: d.__setitem__("productId", "../x"))
    mut("no files", lambda d: d.pop("files"))
    mut("dir traversal", lambda d: d["dirs"].append(".."))
    mut("codec", lambda d: d["blocks"][0].__setitem__(4, "lzma"))
    mut("launch abs", lambda d: d["launch"][0].__setitem__("executable", "/bin/sh"))
    mut("save root", lambda d: d["saves"][0].__setitem__("root", "anywhere"))
    return out


@settings(max_examples=40, deadline=None)
@given(manifests())
def test_every_mutation_is_rejected_with_a_field(m: Manifest) -> None:
    doc = manifest_to_dict(m)
    for name, bad in _mutations(doc):
        with pytest.raises(ManifestError) as info:
            parse_manifest(json.loads(json.dumps(bad)))
        assert info.value.code.startswith("MANIFEST_"), name
        assert info.value.field, name


def test_signature_over_other_bytes_is_refused() -> None:
    m = Manifest("p", "1", (), (Block("a" * 64, 0, 1, 1, Codec.RAW),), {})
    key = generate_key()
    blob, sig = sign_manifest(m, key)
    with pytest.raises(ManifestError) as info:
        load_signed_manifest(blob + b"\x00", sig, key.public_key())
    assert info.value.code == "MANIFEST_SIGNATURE_INVALID"
    with pytest.raises(ManifestError):
        load_signed_manifest(blob, sig, generate_key().public_key())
    with pytest.raises(ManifestError):
        load_signed_manifest(blob, sig[:10], key.public_key())


def test_garbage_truncated_and_extra_frames_are_corrupt() -> None:
    good = encode_manifest(Manifest("p", "1", (), (Block("a" * 64, 0, 1, 1, Codec.RAW),), {}))
    assert decode_manifest(good).product_id == "p"
    for bad in (b"", b"not zstd at all", good[:-3], good + good, good + b"junk",
                zstandard.ZstdCompressor().compress(b"{not json")):
        with pytest.raises(ManifestError) as info:
            decode_manifest(bad)
        assert info.value.code == "MANIFEST_CORRUPT", bad[:20]
        assert info.value.field == "manifest"


@pytest.mark.parametrize(
    "path", ["", "/a", "a/../b", "..", "a//b", "C:\\x", "c:x", "a\\b", "a/\x00", "CON", "lpt1.txt",
             "a/b.", "x:y"],
)
def test_bad_paths(path: str) -> None:
    with pytest.raises(ManifestError):
        check_relative_path(path, "f")


def test_publisher_never_encodes_an_invalid_manifest() -> None:
    bad = Manifest("p", "1", (FileEntry("../x", 0, 0o644, "0" * 64, ()),),
                   (Block("a" * 64, 0, 1, 1, Codec.RAW),), {})
    with pytest.raises(ManifestError) as info:
        encode_manifest(bad)
    assert info.value.field == "files[0].path"


# -- the launcher's reserved names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "reserved"),
    [(".launcher-staging", True), (".Launcher-Move", True), (".LAUNCHER-STAGING", True),
     (".launcher-", True), (".launcher-x.txt", True), ("launcher-staging", False),
     (".launcher", False), ("x.launcher-move", False), ("a.launcher-staging", False),
     ("launcher-build.json", False), (". launcher-staging", False)],
)
def test_reserved_name_rule(component: str, reserved: bool) -> None:
    assert RESERVED_PREFIX == ".launcher-"
    assert is_reserved_name(component) is reserved


@pytest.mark.parametrize(
    ("path", "component"),
    [(".launcher-staging", ".launcher-staging"), (".launcher-staging/x", ".launcher-staging"),
     (".launcher-staging/task/bin/game", ".launcher-staging"), (".Launcher-Move", ".Launcher-Move"),
     ("sub/.LAUNCHER-STAGING", ".LAUNCHER-STAGING"), ("a/b/.launcher-move/c.txt", ".launcher-move")],
)
def test_reserved_paths_are_refused(path: str, component: str) -> None:
    with pytest.raises(ManifestError) as info:
        check_relative_path(path, "files[7].path")
    assert info.value.code == "MANIFEST_PATH_INVALID"
    assert info.value.field == "files[7].path"
    assert repr(component) in info.value.message and "reserved" in info.value.message


@pytest.mark.parametrize("path", ["launcher-staging/x", ".launcher/x", "data/x.launcher-move",
                                  "a.launcher-staging", "sub/launcher-build.json"])
def test_names_near_the_reserved_ones_are_accepted(path: str) -> None:
    assert check_relative_path(path, "f") == path


def _small_doc() -> dict[str, Any]:
    cid, sha = "c" * 64, "d" * 64
    return {
        "formatVersion": 1, "productId": "p", "versionId": "1", "createdAt": "", "dictionary": None,
        "files": [{"path": "bin/game", "size": 5, "mode": 0o755, "hash_sha256": sha,
                   "chunks": [[0, 5, cid]]}],
        "dirs": ["mods"],
        "launch": [{"name": "Play", "executable": "bin/game", "arguments": [], "working_dir": "bin"}],
        "saves": [{"root": "install", "path": "saves", "include": ["*"], "exclude": []}],
        "blocks": [["a" * 64, 0, 5, 5, "raw"]],
        "chunks": {cid: [0, 0]},
    }


@pytest.mark.parametrize(
    ("field", "edit"),
    [("files[0].path", lambda d: d["files"][0].__setitem__("path", ".launcher-staging/x")),
     ("files[0].path", lambda d: d["files"][0].__setitem__("path", "bin/.Launcher-Move")),
     ("dirs[0]", lambda d: d.__setitem__("dirs", [".launcher-staging"])),
     ("dirs[0]", lambda d: d.__setitem__("dirs", ["mods/.LAUNCHER-STAGING/t"])),
     ("launch[0].executable",
      lambda d: d["launch"][0].__setitem__("executable", ".launcher-staging/game")),
     ("launch[0].working_dir",
      lambda d: d["launch"][0].__setitem__("working_dir", ".launcher-move")),
     ("saves[0].path", lambda d: d["saves"][0].__setitem__("path", "x/.launcher-saves"))],
)
def test_signed_manifest_with_a_reserved_name_is_refused(field: str, edit: Any) -> None:
    """A manifest signed with the real key (as a compromised or buggy publisher would) that names
    the engine's staging folder: refused on load, naming the field."""
    key = generate_key()
    doc = _small_doc()
    blob = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
    assert load_signed_manifest(blob, key.sign(blob), key.public_key()).product_id == "p"
    edit(doc)
    blob = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
    with pytest.raises(ManifestError) as info:
        load_signed_manifest(blob, key.sign(blob), key.public_key())
    assert (info.value.code, info.value.field) == ("MANIFEST_PATH_INVALID", field)
    assert RESERVED_PREFIX in info.value.message.lower()


def test_publisher_never_encodes_a_reserved_name() -> None:
    bad = Manifest("p", "1", (FileEntry(".launcher-staging/x", 0, 0o644, "0" * 64, ()),),
                   (Block("a" * 64, 0, 1, 1, Codec.RAW),), {})
    with pytest.raises(ManifestError) as info:
        sign_manifest(bad, generate_key())
    assert (info.value.code, info.value.field) == ("MANIFEST_PATH_INVALID", "files[0].path")


# -- decompression bombs -------------------------------------------------------------------------


def test_json_budget() -> None:
    assert json_budget(1) == MIN_JSON_BUDGET  # small manifests: any ratio up to the floor
    assert json_budget(30_000) == MIN_JSON_BUDGET
    assert json_budget(64 * 1024) == 64 * 1024 * MAX_EXPANSION_RATIO
    assert json_budget(MAX_JSON_BYTES // 2) == MAX_JSON_BYTES  # never past the absolute bound
    assert json_budget(1 << 30) == 256 * MiB


def _write_padded_manifest(folder: Path, total: int, *, declare_size: bool, noise: int = 0) -> int:
    """A signed manifest, valid JSON of ``total`` bytes: a tiny real document plus a "pad" string
    of ``noise`` random hex digits and then "x" repeated (what zstd shrinks ~30000x). Compressed
    as a stream, so the test never holds the padding in memory."""
    doc = _small_doc()
    head = json.dumps(doc).encode()[:-1] + b',"pad":"'
    tail = b'"}'
    left = total - len(head) - len(tail)
    blob_path = folder / "m.manifest"
    with blob_path.open("wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(
            fh, size=total if declare_size else -1) as writer:
        writer.write(head)
        if noise:
            writer.write(random.Random(9).randbytes(noise // 2).hex().encode())
            left -= noise
        piece = b"x" * MiB
        while left > 0:
            writer.write(piece[:left])
            left -= len(piece)
        writer.write(tail)
    key = generate_key()
    blob = blob_path.read_bytes()
    (folder / "m.sig").write_bytes(key.sign(blob))
    (folder / "key.hex").write_text(public_key_hex(key))
    return len(blob)


_MEASURE_LOAD = r"""
import json, resource, sys
from pathlib import Path
from patcher.errors import ManifestError
from patcher.signing import load_public_key, load_signed_manifest

folder = Path(sys.argv[1])
blob, sig = (folder / "m.manifest").read_bytes(), (folder / "m.sig").read_bytes()
key = load_public_key((folder / "key.hex").read_text())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    m = load_signed_manifest(blob, sig, key)
    result = {"loaded": m.product_id}
except ManifestError as exc:
    result = {"code": exc.code, "field": exc.field, "message": exc.message}
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
result["growth"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * unit
print(json.dumps(result))
"""


def _load_in_child(folder: Path) -> dict[str, Any]:
    """load_signed_manifest in a fresh python process; returns its outcome and peak RSS growth."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE_LOAD, str(folder)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.skipif(sys.platform == "win32", reason="measures peak RSS with the resource module")
@pytest.mark.parametrize(
    ("total", "declare_size", "noise", "stopped_at", "max_growth"),
    [
        # 900 MiB of padding, ~30 KB on the wire: refused from the frame header alone...
        (900 * MiB, True, 0, "frame header declares 943718400 bytes", 128 * MiB),
        # ...or, when the header does not say, as soon as it outgrows the 32 MiB floor.
        (900 * MiB, False, 0, f"expands past {MIN_JSON_BUDGET} bytes", 128 * MiB),
        # 1 MiB of random hex makes it ~0.5 MB on the wire: only the absolute bound stops it.
        (300 * MiB, False, MiB, f"expands past {MAX_JSON_BYTES} bytes", 400 * 10**6),
    ],
    ids=["900MiB-size-in-header", "900MiB-streamed", "300MiB-with-noise"],
)
def test_signed_padding_bomb_is_refused_in_bounded_memory(
    tmp_path: Path, total: int, declare_size: bool, noise: int, stopped_at: str, max_growth: int
) -> None:
    """QA's bomb: a validly signed manifest padded to 900 MiB of JSON used to load (the padding
    is an unknown key) at 1.8-2.7 GB RSS. It must be refused, with little memory."""
    wire = _write_padded_manifest(tmp_path, total, declare_size=declare_size, noise=noise)
    assert wire < MiB
    result = _load_in_child(tmp_path)
    assert result.get("code") == "MANIFEST_TOO_LARGE", result
    assert result["field"] == "manifest"
    assert stopped_at in result["message"], result
    assert result["growth"] < max_growth, f"peak RSS grew {result['growth'] / MiB:.0f} MiB"


def _realistic_manifest(chunks: int, per_file: int = 64) -> Manifest:
    """Shaped like a publisher's: random BLAKE3-like ids, ~16 chunks to a 1 MiB block."""
    rnd = random.Random(3)
    files: list[FileEntry] = []
    blocks: list[Block] = []
    locations: dict[str, ChunkLocation] = {}
    fill = 1 << 20
    while len(locations) < chunks:
        rows = []
        offset = 0
        for _ in range(per_file):
            size = rnd.randrange(16 * 1024, 128 * 1024)
            if fill + size > 1 << 20:
                blocks.append(Block(rnd.randbytes(32).hex(), len(blocks) << 20, 900_000, 1 << 20,
                                    Codec.ZSTD))
                fill = 0
            cid = rnd.randbytes(32).hex()
            locations[cid] = ChunkLocation(len(blocks) - 1, fill)
            fill += size
            rows.append(ChunkEntry(offset, size, cid))
            offset += size
        n = len(files)
        files.append(FileEntry(f"data/level{n // 100:03d}/asset_{n:06d}.pak", offset, 0o644,
                               rnd.randbytes(32).hex(), tuple(rows)))
    return Manifest("big-game", "1.0", tuple(files), tuple(blocks), locations)


@pytest.mark.slow
def test_large_legitimate_manifest_still_loads() -> None:
    """200k chunks (~13 GB of game): ~37 MB of JSON, past the ratio floor, at a real ratio."""
    m = _realistic_manifest(200_000)  # fewer would not pass the floor
    key = generate_key()
    blob, sig = sign_manifest(m, key)
    size = zstandard.frame_content_size(blob)  # the JSON's size, in the frame (the loader checks)
    assert size > MIN_JSON_BUDGET
    assert size / len(blob) < 4  # random hex ids: real manifests barely compress
    back = load_signed_manifest(blob, sig, key.public_key())
    assert back == m


@pytest.mark.slow
def test_most_repetitive_valid_manifest_still_loads() -> None:
    """The ratio bound must not refuse a valid manifest: 96k empty files under long, near-equal
    paths compress ~300x (far past any real build), still well inside MAX_EXPANSION_RATIO."""
    prefix = "assets/" + "x" * 230 + "/"
    # 96k files: ~36 MB of JSON, 7% past the floor (the ratio bound applies only past it)
    files = tuple(FileEntry(f"{prefix}f{i:08d}", 0, 0o644, "e3" * 32, ()) for i in range(96_000))
    m = Manifest("p", "1", files, (), {})
    key = generate_key()
    blob, sig = sign_manifest(m, key)
    size = zstandard.frame_content_size(blob)  # the JSON's size, in the frame (the loader checks)
    assert size > MIN_JSON_BUDGET and size / len(blob) > 100
    assert size <= json_budget(len(blob))
    assert load_signed_manifest(blob, sig, key.public_key()) == m


def test_launch_environment_is_checked_and_kept_out_of_old_manifests() -> None:
    from patcher.errors import ManifestError
    from patcher.manifest import parse_launch

    base = {"name": "Play", "executable": "game", "arguments": [], "working_dir": ""}
    (entry,) = parse_launch([base | {"environment": {"B": "2", "A": "1"}}])
    assert entry.environment == (("A", "1"), ("B", "2"))
    assert parse_launch([base])[0].environment == ()
    for bad in ({"LAUNCHER_API_TOKEN": "x"}, {"1X": "y"}, {"A": 5}, {"A": "x\0y"}, ["A"]):
        with pytest.raises(ManifestError):
            parse_launch([base | {"environment": bad}])


# --- compact representation and the streaming loader (issue 13) ------------------------------


def _canonical(doc: dict[str, Any]) -> bytes:
    return zstandard.ZstdCompressor().compress(
        json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())


@settings(max_examples=40, deadline=None)
@given(manifests())
def test_streaming_loader_reads_what_the_general_loader_reads(m: Manifest) -> None:
    from patcher.manifest import _stream_manifest

    blob = encode_manifest(m)
    fast = _stream_manifest(blob)  # the canonical layout never needs json.loads
    assert fast == m and manifest_to_dict(fast) == manifest_to_dict(m)
    # the same document with whitespace is not canonical: read by the general loader, same result
    spaced = zstandard.ZstdCompressor().compress(json.dumps(manifest_to_dict(m), indent=1).encode())
    assert decode_manifest(spaced) == fast
    for f, g in zip(fast.files, m.files, strict=True):
        assert len(f.chunks) == len(g.chunks) and list(f.chunks) == list(g.chunks)
        assert f.chunks == g.chunks and g.chunks == f.chunks and hash(f.chunks) == hash(g.chunks)
        if g.chunks:
            assert f.chunks[-1] == g.chunks[-1] and tuple(f.chunks[1:]) == g.chunks[1:]
    assert dict(fast.chunks.items()) == m.chunks and set(fast.chunks) == set(m.chunks)
    for cid, loc in m.chunks.items():
        assert fast.chunks[cid] == loc and cid in fast.chunks
        assert cid.upper() == cid or cid.upper() not in fast.chunks
    assert fast.chunk_sizes() == m.chunk_sizes()


@settings(max_examples=25, deadline=None)
@given(manifests())
def test_every_mutation_gets_the_same_error_through_the_streaming_loader(m: Manifest) -> None:
    doc = manifest_to_dict(m)
    for name, bad in _mutations(doc):
        with pytest.raises(ManifestError) as general:
            parse_manifest(json.loads(json.dumps(bad)))
        with pytest.raises(ManifestError) as streamed:
            decode_manifest(_canonical(bad))
        assert (streamed.value.code, streamed.value.field, streamed.value.message) == (
            general.value.code, general.value.field, general.value.message), name


def test_ids_sharing_their_first_bytes_are_told_apart() -> None:
    """The table finds ids by their first 8 bytes (bisect); ids equal there still resolve."""
    prefix = "ab" * 8
    ids = [prefix + f"{i:02x}" * 24 for i in (3, 1, 2)] + ["00" * 32]
    files = tuple(FileEntry(f"f{i}", 10, 0o644, "e3" * 32, (ChunkEntry(0, 10, cid),))
                  for i, cid in enumerate(ids))
    locs = {cid: ChunkLocation(0, 10 * i) for i, cid in enumerate(ids)}
    m = Manifest("p", "1", files, (Block("a" * 64, 0, 40, 40, Codec.RAW),), locs)
    back = decode_manifest(encode_manifest(m))
    assert back == m
    assert [f.chunks[0].id for f in back.files] == ids
    assert all(back.chunks[cid] == locs[cid] for cid in ids)
    assert prefix + "ff" * 24 not in back.chunks
    with pytest.raises(KeyError):
        back.chunks[prefix + "ff" * 24]


def test_a_duplicate_or_unsorted_location_key_goes_to_the_general_loader() -> None:
    m = Manifest("p", "1", (FileEntry("a", 10, 0o644, "e3" * 32, (ChunkEntry(0, 10, "b" * 64),)),),
                 (Block("a" * 64, 0, 10, 10, Codec.RAW),), {"b" * 64: ChunkLocation(0, 0)})
    text = manifest_to_json(m).decode()
    row = '"' + "b" * 64 + '":[0,0]'
    twice = text.replace(row, row + "," + row)  # valid JSON: the last duplicate key wins
    assert decode_manifest(zstandard.ZstdCompressor().compress(twice.encode())) == m


def test_a_large_dirs_list_is_read_by_the_streaming_loader_too() -> None:
    """dirs, launch and saves are decoded by json from the stream's window, which grows past
    its 256 KiB for a long list (and a row split across two windows is read whole)."""
    from patcher.manifest import _stream_manifest

    m = _realistic_manifest(6_000)
    dirs = tuple(f"extra/level{i:05d}/textures/hi-res" for i in range(20_000))  # ~700 KB of JSON
    big = Manifest(m.product_id, m.version_id, m.files, m.blocks, m.chunks, dirs=dirs)
    fast = _stream_manifest(encode_manifest(big))
    assert fast == big and fast.dirs == dirs


# --- the streaming loader accepts exactly what the strict one does (review findings 4-6) ------


def _three_chunk_text() -> str:
    ids = ["b" * 64, "c" * 64, "d" * 64]
    m = Manifest("p", "1", (FileEntry("a", 30, 0o644, "e3" * 32, tuple(
        ChunkEntry(10 * i, 10, cid) for i, cid in enumerate(ids))),),
        (Block("a" * 64, 0, 30, 30, Codec.RAW),),
        {cid: ChunkLocation(0, 10 * i) for i, cid in enumerate(ids)})
    return manifest_to_json(m).decode()


def _outcome(decode: Any, blob: bytes) -> tuple[Any, ...]:
    """What a loader makes of ``blob``: the manifest (as data) or the error's code and field.
    Any other exception escapes and fails the test."""
    try:
        m = decode(blob)
    except ManifestError as exc:
        return ("error", exc.code, exc.field)
    return ("ok", m, manifest_to_dict(m))


def _both_agree(raw: bytes) -> tuple[Any, ...]:
    from patcher.manifest import _decode_strict

    blob = zstandard.ZstdCompressor().compress(raw)
    streamed, strict = _outcome(decode_manifest, blob), _outcome(_decode_strict, blob)
    assert streamed == strict, raw[:300]
    return strict


@pytest.mark.parametrize(("old", "new", "field"), [
    ('[10,10,"' + "c" * 64, '[10,4294967296,"' + "c" * 64, "files[0].chunks[1].size"),
    ('"' + "c" * 64 + '":[0,10]', '"' + "c" * 64 + '":[4294967296,10]', f"chunks[{'c' * 64!r}].block"),
    ('"' + "c" * 64 + '":[0,10]', '"' + "c" * 64 + '":[0,99999999999]', f"chunks[{'c' * 64!r}].offset"),
])
def test_a_number_past_32_bits_gets_the_strict_limit_error(old: str, new: str, field: str) -> None:
    """Finding 4: such numbers went into array('I') and raised OverflowError."""
    text = _three_chunk_text()
    assert old in text
    assert _both_agree(text.replace(old, new).encode()) == ("error", "MANIFEST_LIMIT", field)


@pytest.mark.parametrize("edits", [
    [(b'"],[10,', b'"]\xc3[10,')],  # one byte, not a comma, between two rows
    [(b'"],[10,', b'"]x[10,')],
    [(b'"],[10,', b'"][10,'), (b'"],[20,', b'"],,[20,')],  # [r1][r2],,[r3]: lengths add up
    [(b'"],[20,', b'"],,[20,')],
    [(b'[0,0],"', b'[0,0]x"')],  # between two locations
    [(b'[0,10],"', b'[0,10]"')],
    [(b'[0,0],"', b'[0,0]"'), (b'[0,10],"', b'[0,10],,"')],
    [(b'"raw"]],', b'"raw"],]],')],
])
def test_rows_must_be_separated_by_exactly_one_comma(edits: list[tuple[bytes, bytes]]) -> None:
    """Finding 5: the streaming reader checked the rows' lengths, not that the bytes between
    them are commas, and accepted invalid JSON."""
    text = _three_chunk_text().encode()
    for old, new in edits:
        assert text.count(old) == 1
        text = text.replace(old, new)
    assert _both_agree(text)[:2] == ("error", "MANIFEST_CORRUPT")


@pytest.mark.parametrize("where", ["launch", "dirs", "saves"])
def test_json_nested_too_deeply_is_a_corrupt_manifest(where: str) -> None:
    """Finding 6: 100000 '[' raised RecursionError from json on both paths."""
    deep = "[" * 100_000 + "]" * 100_000
    text = _three_chunk_text().replace(f'"{where}":[]', f'"{where}":[{deep}]')
    from patcher.manifest import _decode_strict

    blob = zstandard.ZstdCompressor().compress(text.encode())
    for decode in (decode_manifest, _decode_strict):
        with pytest.raises(ManifestError) as caught:
            decode(blob)
        assert caught.value.code == "MANIFEST_CORRUPT" and caught.value.field == "manifest"
        assert "nested too deeply" in caught.value.message


_NUMBERS = [b"0", b"1", b"7", b"10", b"01", b"-1", b"1.0", b"1e1", b"4294967295", b"4294967296",
            b"18446744073709551616", b"9999999999999999", b"99999999999999999", b"true", b"null"]
_BYTES = [b",", b"", b",,", b" ", b"x", b"\xc3", b"]", b"[", b"}", b"{", b":", b'"', b"\n"]


def test_streaming_and_strict_loaders_agree_on_mutated_manifests() -> None:
    """A seeded differential fuzz: valid manifests with one separator or number changed (or
    two, to pair a lost comma with a doubled one) give the same manifest or the same error
    code and field through the streaming and the strict path."""
    rnd = random.Random(20261129)
    ids = [rnd.randbytes(32).hex() for _ in range(8)]
    files = [FileEntry(f"d/f{i}", 20, 0o644, "e3" * 32,
                       (ChunkEntry(0, 10, ids[i]), ChunkEntry(10, 10, ids[i + 1])))
             for i in range(0, 8, 2)]
    sample = Manifest(
        "p", "1", (*files, FileEntry("empty", 0, 0o755, "e3" * 32, ())),
        (Block("a" * 64, 0, 40, 40, Codec.RAW), Block("b" * 64, 40, 30, 40, Codec.ZSTD)),
        {cid: ChunkLocation(i // 4, 10 * (i % 4)) for i, cid in enumerate(ids)},
        dirs=("d", "saves"), launch=(LaunchEntry("Play", "d/f0", ("-x",)),),
        saves=(SaveLocation(SaveRoot.INSTALL, "saves"),))
    texts = [manifest_to_json(sample), manifest_to_json(_realistic_manifest(40, per_file=5))]
    accepted = rejected = 0
    for _ in range(3000):
        raw = rnd.choice(texts)
        for _ in range(rnd.choice((1, 1, 2))):
            seps = [m.start() for m in re.finditer(rb"[,:\[\]{}]", raw)]
            nums = [m.span() for m in re.finditer(rb"(?<![0-9a-f])[0-9]+(?![0-9a-f])", raw)]
            if nums and rnd.random() < 0.5:
                lo, hi = rnd.choice(nums)
                raw = raw[:lo] + rnd.choice(_NUMBERS) + raw[hi:]
            else:
                at = rnd.choice(seps)
                raw = raw[:at] + rnd.choice(_BYTES) + raw[at + 1 :]
        outcome = _both_agree(raw)
        accepted += outcome[0] == "ok"
        rejected += outcome[0] == "error"
    assert accepted > 100 and rejected > 1000  # both kinds of outcome were compared


_ROW_EDITS = [b"A", b"F", b"g", b'"', b":", b"[", b"]", b",", b"", b"00", b"0", b" ", b'":[', b'],"',
              b'"],[', b',"', b"\\u0030", b"-"]


def test_rows_and_locations_split_at_their_punctuation_agree_with_the_strict_loader() -> None:
    """The streaming loader splits chunk rows and locations at their punctuation and checks
    each field whole (issue 13, start-up): a seeded fuzz of edits inside those rows — a hex
    digit upper-cased or replaced, punctuation moved, doubled, dropped or swapped for another
    row's, numbers with leading zeros — gives the same manifest or the same error code and field
    through both loaders."""
    rnd = random.Random(20261129)
    texts = [manifest_to_json(_realistic_manifest(30, per_file=4)), _three_chunk_text().encode()]
    rejected = 0
    for _ in range(1500):
        raw = rnd.choice(texts)
        at_rows = raw.index(b'"chunks":[')  # the first file's rows, through the locations' end
        at = rnd.randrange(at_rows, len(raw) - 2)
        raw = raw[:at] + rnd.choice(_ROW_EDITS) + raw[at + rnd.choice((0, 1, 1, 2, 3)) :]
        rejected += _both_agree(raw)[0] == "error"
    assert rejected > 1000
    for old, new in ((b'"],[10,', b'"],[010,'), (b'"' + b"c" * 64, b'"C' + b"c" * 63)):
        text = _three_chunk_text().encode()
        assert old in text
        assert _both_agree(text.replace(old, new, 1))[0] == "error"
