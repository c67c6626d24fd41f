"""Manifest model, signing and the strict loader (round-trip and rejection properties)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from patcher.errors import ManifestError
from patcher.manifest import (
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
    manifest_to_dict,
    parse_manifest,
)
from patcher.signing import generate_key, load_signed_manifest, sign_manifest

HEX = "0123456789abcdef"
hex64 = st.text(HEX, min_size=64, max_size=64)
segment = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)
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


def test_zstd_bomb_and_garbage_are_refused() -> None:
    bomb = zstandard.ZstdCompressor().compress(b" " * (1100 * 1024 * 1024 // 64) * 64)
    with pytest.raises(ManifestError) as info:
        decode_manifest(bomb)
    assert info.value.code == "MANIFEST_CORRUPT"
    with pytest.raises(ManifestError):
        decode_manifest(b"not zstd at all")
    with pytest.raises(ManifestError):
        decode_manifest(zstandard.ZstdCompressor().compress(b"{not json"))


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
