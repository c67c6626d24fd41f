"""The manifest's binary form (``patcher.manifestbin``): the same manifest as the JSON form,
refused by the same rules with the same codes, and never anything but a ``ManifestError`` for
bytes that are not one."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings

from patcher.errors import ManifestError
from patcher.manifest import (
    BINARY_MAGIC,
    Block,
    ChunkEntry,
    ChunkLocation,
    Codec,
    FileEntry,
    LaunchEntry,
    Manifest,
    compress_manifest_json,
    decode_manifest,
    encode_manifest,
    is_binary_manifest,
    manifest_to_dict,
    manifest_to_json,
)
from patcher.manifestbin import (
    decode_manifest_binary,
    encode_manifest_binary,
)
from patcher.signing import generate_key, load_signed_manifest
from tests.unit.test_manifest import manifests

C, D, E = "c" * 64, "d" * 64, "e" * 64


def _sample() -> Manifest:
    """Two files (three and one chunk rows, one chunk shared), three locations in two blocks."""
    return Manifest(
        "p", "1",
        (FileEntry("a", 30, 0o644, "e3" * 32,
                   (ChunkEntry(0, 10, C), ChunkEntry(10, 10, D), ChunkEntry(20, 10, E))),
         FileEntry("bin/b", 10, 0o755, "e4" * 32, (ChunkEntry(0, 10, D),))),
        (Block("a" * 64, 0, 20, 20, Codec.RAW), Block("b" * 64, 0, 7, 10, Codec.ZSTD)),
        {C: ChunkLocation(0, 0), D: ChunkLocation(0, 10), E: ChunkLocation(1, 0)},
        dirs=("saves",), launch=(LaunchEntry("Play", "bin/b", ("-x",), "", (("A", "1"),)),))


@settings(max_examples=60, deadline=None)
@given(manifests())
def test_both_forms_decode_to_the_same_manifest(m: Manifest) -> None:
    blob = encode_manifest_binary(m)
    assert is_binary_manifest(blob) and not is_binary_manifest(encode_manifest(m))
    back = decode_manifest(blob)
    assert back == decode_manifest(encode_manifest(m))
    assert manifest_to_dict(back) == manifest_to_dict(m)
    # the JSON form's signed bytes come back from the binary one (an update's manifest patch
    # applies to those)
    assert compress_manifest_json(manifest_to_json(back)) == encode_manifest(m)


def test_the_binary_form_is_signed_and_checked_like_the_json_one() -> None:
    key = generate_key()
    blob = encode_manifest_binary(_sample())
    back = load_signed_manifest(blob, key.sign(blob), key.public_key())
    assert manifest_to_dict(back) == manifest_to_dict(_sample())
    assert back.table().find(D) >= 0 and back.file("bin/b") is not None
    with pytest.raises(ManifestError) as info:
        load_signed_manifest(blob, key.sign(encode_manifest(_sample())), key.public_key())
    assert info.value.code == "MANIFEST_SIGNATURE_INVALID"


def test_a_manifest_of_many_chunks_is_the_same_in_both_forms() -> None:
    ids = [f"{i:016x}" * 4 for i in range(1, 6001)]
    files = tuple(
        FileEntry(f"data/f{k}", 3000 * 7, 0o644, "e3" * 32,
                  tuple(ChunkEntry(7 * j, 7, ids[3000 * k + j]) for j in range(3000)))
        for k in range(2))
    blocks = tuple(Block(f"{b:064x}", b << 20, 1 << 20, 1 << 20, Codec.RAW) for b in range(6))
    m = Manifest("p", "1", files, blocks, {cid: ChunkLocation(i // 1000, 7 * (i % 1000))
                                          for i, cid in enumerate(ids)})
    back = decode_manifest_binary(encode_manifest_binary(m))
    assert back == decode_manifest(encode_manifest(m))
    assert back.table().by_block() == decode_manifest(encode_manifest(m)).table().by_block()


def test_a_game_of_one_repeated_chunk_is_taken_in_both_forms() -> None:
    """Rows of one chunk over and over (a file of zeros): the binary form compresses to almost
    nothing, and is still taken wherever the JSON form is (no budget per compressed byte)."""
    rows = 40_000
    m = Manifest("p", "1", (FileEntry("zeros.bin", 16 * rows, 0o644, "e3" * 32,
                                      tuple(ChunkEntry(16 * i, 16, C) for i in range(rows))),),
                 (Block("a" * 64, 0, 16, 16, Codec.RAW),), {C: ChunkLocation(0, 0)})
    blob = encode_manifest_binary(m)
    assert len(blob) < 4096
    assert decode_manifest(blob) == decode_manifest(encode_manifest(m))


def test_counts_past_what_the_json_form_may_hold_are_too_large() -> None:
    """The binary form is ~10x denser: counts whose JSON would be over the JSON loaders' limit
    (256 MiB) are refused as too large, before any column is read."""
    header, columns = _parts(encode_manifest_binary(_sample()))
    header["rows"] = 4_000_000
    with pytest.raises(ManifestError) as info:
        decode_manifest(_blob(header, columns))
    assert info.value.code == "MANIFEST_TOO_LARGE"


# -- refusals: the binary form taken apart, one thing changed, put together again ---------------

_COLUMNS = [("ids", "32s"), ("block", "I"), ("block_offset", "I"), ("row_size", "I"),
            ("row_chunk", "I"), ("pack", "I"), ("offset", "Q"), ("stored", "I"), ("raw", "I"),
            ("codec", "B")]


def _parts(blob: bytes) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    body = zstandard.ZstdDecompressor().decompress(blob[len(BINARY_MAGIC):])
    (size,) = struct.unpack_from("<I", body)
    header = json.loads(body[4:4 + size])
    counts = {"ids": header["chunks"], "block": header["chunks"],
              "block_offset": header["chunks"], "row_size": header["rows"],
              "row_chunk": header["rows"]}
    at, columns = 4 + size, {}
    for name, kind in _COLUMNS:
        n = counts.get(name, header["blocks"])
        width = struct.calcsize("<" + kind)
        columns[name] = [struct.unpack_from("<" + kind, body, at + width * i)[0]
                         for i in range(n)]
        at += width * n
    assert at == len(body)
    return header, columns


def _body(header: dict[str, Any], columns: dict[str, list[Any]]) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + b"".join(
        b"".join(columns[name]) if kind == "32s"
        else struct.pack(f"<{len(columns[name])}{kind}", *columns[name])
        for name, kind in _COLUMNS)


def _blob(header: dict[str, Any], columns: dict[str, list[Any]]) -> bytes:
    return BINARY_MAGIC + zstandard.ZstdCompressor(write_content_size=True).compress(
        _body(header, columns))


Edit = Callable[[dict[str, Any], dict[str, list[Any]]], None]


def _set(where: dict[str, Any] | list[Any], key: Any, value: Any) -> None:
    where[key] = value


_EDITS: dict[str, tuple[Edit, str]] = {
    "traversal": (lambda h, c: _set(h["files"][0], 0, "../evil"), "MANIFEST_PATH_INVALID"),
    "absolute": (lambda h, c: _set(h["files"][0], 0, "/etc/passwd"), "MANIFEST_PATH_INVALID"),
    "collision": (lambda h, c: _set(h["files"][1], 0, "A"), "MANIFEST_PATH_COLLISION"),
    "file under a file": (lambda h, c: _set(h["files"][1], 0, "a/b"), "MANIFEST_PATH_COLLISION"),
    "dir traversal": (lambda h, c: h["dirs"].append(".."), "MANIFEST_PATH_INVALID"),
    "file size": (lambda h, c: _set(h["files"][0], 1, 31), "MANIFEST_CHUNKS_TILING"),
    "negative size": (lambda h, c: _set(h["files"][0], 1, -1), "MANIFEST_LIMIT"),
    "bool size": (lambda h, c: _set(h["files"][0], 1, True), "MANIFEST_SCHEMA"),
    "sha": (lambda h, c: _set(h["files"][0], 3, "zz"), "MANIFEST_SCHEMA"),
    "mode": (lambda h, c: _set(h["files"][0], 2, 0o4755), "MANIFEST_LIMIT"),
    "file row": (lambda h, c: h["files"][0].pop(), "MANIFEST_SCHEMA"),
    "format": (lambda h, c: _set(h, "formatVersion", 99), "MANIFEST_FORMAT_UNSUPPORTED"),
    "product": (lambda h, c: _set(h, "productId", "../x"), "MANIFEST_SCHEMA"),
    "no files": (lambda h, c: h.pop("files"), "MANIFEST_SCHEMA"),
    "launch": (lambda h, c: _set(h["launch"][0], "executable", "/bin/sh"),
               "MANIFEST_PATH_INVALID"),
    "launch env": (lambda h, c: _set(h["launch"][0], "environment", {"LAUNCHER_X": "1"}),
                   "MANIFEST_SCHEMA"),
    "save root": (lambda h, c: h.__setitem__("saves", [{"root": "anywhere", "path": "s",
                                                          "include": [], "exclude": []}]),
                  "MANIFEST_SCHEMA"),
    "pack id": (lambda h, c: _set(h["packs"], 0, "A" * 64), "MANIFEST_SCHEMA"),
    "rows moved between files": (lambda h, c: (_set(h["files"][0], 4, 2),
                                               _set(h["files"][1], 4, 2)),
                                 "MANIFEST_CHUNKS_TILING"),
    "a chunk of size 0": (lambda h, c: (_set(c["row_size"], 0, 0), _set(c["row_size"], 1, 20)),
                          "MANIFEST_LIMIT"),
    "a row past the chunks": (lambda h, c: _set(c["row_chunk"], 0, 3), "MANIFEST_SCHEMA"),
    "an unused chunk": (lambda h, c: _set(c["row_chunk"], 0, 1), "MANIFEST_SCHEMA"),
    "ids unsorted": (lambda h, c: c["ids"].reverse(), "MANIFEST_SCHEMA"),
    "ids repeated": (lambda h, c: _set(c["ids"], 1, c["ids"][0]), "MANIFEST_SCHEMA"),
    "a block past the blocks": (lambda h, c: _set(c["block"], 0, 2), "MANIFEST_LIMIT"),
    "a chunk overrunning its block": (lambda h, c: _set(c["block_offset"], 1, 15),
                                      "MANIFEST_CHUNKS_TILING"),
    "a block past the packs": (lambda h, c: _set(c["pack"], 1, 2), "MANIFEST_SCHEMA"),
    "a raw block that shrank": (lambda h, c: _set(c["stored"], 0, 19), "MANIFEST_SCHEMA"),
    "a raw size of 0": (lambda h, c: _set(c["raw"], 1, 0), "MANIFEST_LIMIT"),
    "an unknown codec": (lambda h, c: _set(c["codec"], 1, 7), "MANIFEST_SCHEMA"),
    "zstd-dict without a dictionary": (lambda h, c: _set(c["codec"], 1, 2), "MANIFEST_SCHEMA"),
    "rows said but not there": (lambda h, c: _set(h, "rows", 5), "MANIFEST_CORRUPT"),
    "a block said but not there": (lambda h, c: _set(h, "blocks", 3), "MANIFEST_CORRUPT"),
}


def test_the_sample_survives_being_taken_apart() -> None:
    header, columns = _parts(encode_manifest_binary(_sample()))
    assert manifest_to_dict(decode_manifest(_blob(header, columns))) == manifest_to_dict(_sample())


@pytest.mark.parametrize("name", sorted(_EDITS))
def test_each_broken_rule_is_refused_with_its_code(name: str) -> None:
    header, columns = _parts(encode_manifest_binary(_sample()))
    edit, code = _EDITS[name]
    edit(header, columns)
    with pytest.raises(ManifestError) as info:
        decode_manifest(_blob(header, columns))
    assert info.value.code == code, (name, info.value)
    assert info.value.field


def _frame(body: bytes, **kw: Any) -> bytes:
    return BINARY_MAGIC + zstandard.ZstdCompressor(**kw).compress(body)


@pytest.mark.parametrize(("blob", "code"), [
    (BINARY_MAGIC, "MANIFEST_CORRUPT"),
    (BINARY_MAGIC + b"not zstd", "MANIFEST_CORRUPT"),
    (_frame(b"{}", write_content_size=False), "MANIFEST_CORRUPT"),  # no declared size
    (_frame(b""), "MANIFEST_CORRUPT"),  # no header
    (_frame(struct.pack("<I", 99) + b"{}"), "MANIFEST_CORRUPT"),  # a header past the body
    (_frame(struct.pack("<I", 2) + b"[]"), "MANIFEST_CORRUPT"),  # not an object
    (_frame(struct.pack("<I", 3) + b"{x}"), "MANIFEST_CORRUPT"),  # not JSON
    (_frame(b"\0" * (64 << 20)), "MANIFEST_TOO_LARGE"),  # a bomb: 64 MiB from a few KB
])
def test_bytes_that_are_no_binary_manifest_are_refused(blob: bytes, code: str) -> None:
    with pytest.raises(ManifestError) as info:
        decode_manifest(blob)
    assert info.value.code == code


def test_a_frame_with_bytes_after_it_is_refused() -> None:
    blob = encode_manifest_binary(_sample())
    with pytest.raises(ManifestError) as info:
        decode_manifest(blob + b"\0")
    assert info.value.code == "MANIFEST_CORRUPT"


def test_flipped_bytes_give_a_manifest_error_or_the_same_manifest() -> None:
    """Whatever byte of the frame's content is changed, the loader answers a ManifestError
    (or, where the byte did not matter, a manifest): never another exception."""
    body = bytearray(_body(*_parts(encode_manifest_binary(_sample()))))
    rng = random.Random(27)
    outcomes = set()
    for _ in range(600):
        broken = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            broken[rng.randrange(len(broken))] = rng.randrange(256)
        try:
            decode_manifest(_frame(bytes(broken)))
            outcomes.add("ok")
        except ManifestError as exc:
            outcomes.add(exc.code)
    assert "MANIFEST_CORRUPT" in outcomes and len(outcomes) >= 4, outcomes
