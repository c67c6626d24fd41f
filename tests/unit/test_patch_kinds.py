"""Issue 14's patch kinds and their containers, on real libraries (hdiffpatch, zstandard)."""

from __future__ import annotations

import hashlib
import random

import pytest

from patcher.chunking import ChunkedFile, ChunkRef
from patcher.delta import (
    BSDIFF_MAX_FILE,
    ZSTD_FULL_MAX,
    PatchMethod,
    apply_patch,
    build_hdiff,
    build_zstd,
    hdiff_sizes,
    plan_methods,
)
from patcher.deltaindex import (
    EMPTY_SHA256,
    DeltaIndex,
    ManifestPatch,
    PatchEntry,
    decode_delta_index,
    encode_delta_index,
    rebuild_manifest_blob,
)
from patcher.errors import DeltaError, ManifestError
from patcher.manifest import Codec, compress_manifest_json
from patcher.publish import mostly_dead_chunks
from patcher.store import ChunkRecord

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pair() -> tuple[bytes, bytes]:
    rnd = random.Random(14)
    old = rnd.randbytes(50_000) + b"text " * 4000
    new = bytearray(old)
    new[1000:1000] = b"inserted"
    new[30_000] ^= 0xFF
    return old, bytes(new)


# ------------------------------------------------------------------------- HDiffPatch


def _classic(old: bytes, new: bytes) -> bytes:
    """HDiffPatch's own container, as its library codes it (bzip2: one coder for every section)."""
    import hdiffpatch

    return hdiffpatch.diff(old, new, hdiffpatch.BZip2Config(level=9))


def _best_classic(old: bytes, new: bytes) -> bytes:
    import hdiffpatch

    return min((hdiffpatch.diff(old, new, c) for c in (
        "none", hdiffpatch.BZip2Config(level=9), hdiffpatch.Lzma2Config(level=9, window=26),
        hdiffpatch.ZStdConfig(level=22, window=27))), key=len)


def test_hdiff_round_trip_and_header(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    patch = build_hdiff(old, new)
    # each section coded by its own best coder: the sectioned container, no larger than the
    # library's own container with any single coder
    assert patch[0] & 0x80 and not patch.startswith(b"HDIFF13&")
    assert len(patch) <= len(_best_classic(old, new))
    assert hdiff_sizes(patch) == (len(new), len(old))
    assert len(patch) < len(new) / 10
    out = apply_patch(PatchMethod.HDIFF, old, patch, old_sha256=sha(old), new_sha256=sha(new),
                      new_size=len(new))
    assert out == new


def test_hdiff_classic_container_still_applies(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    patch = _classic(old, new)
    assert patch.startswith(b"HDIFF13&")
    assert hdiff_sizes(patch) == (len(new), len(old))
    assert apply_patch(PatchMethod.HDIFF, old, patch, old_sha256=sha(old), new_sha256=sha(new),
                       new_size=len(new)) == new


@pytest.mark.parametrize("container", ["sectioned", "classic"])
def test_hdiff_refuses_a_declared_size_before_allocating(pair: tuple[bytes, bytes],
                                                         container: str) -> None:
    old, new = pair
    patch = build_hdiff(old, new) if container == "sectioned" else _classic(old, new)
    with pytest.raises(DeltaError, match="declares"):
        apply_patch(PatchMethod.HDIFF, old, patch, old_sha256=sha(old), new_sha256=sha(new),
                    new_size=len(new) - 1)


@pytest.mark.parametrize("container", ["sectioned", "classic"])
def test_hdiff_refuses_foreign_and_corrupt_patches(pair: tuple[bytes, bytes],
                                                   container: str) -> None:
    old, new = pair
    patch = build_hdiff(old, new) if container == "sectioned" else _classic(old, new)
    kw = {"old_sha256": sha(old), "new_sha256": sha(new), "new_size": len(new)}
    for bad in (b"", b"HDIFF13&", b"\x80", b"BSDIFF40" + patch[8:],
                patch.replace(b"&", b"&xz", 1), patch[: len(patch) // 2], patch + b"\0"):
        if bad == patch:
            continue
        with pytest.raises(DeltaError):
            apply_patch(PatchMethod.HDIFF, old, bad, **kw)  # type: ignore[arg-type]
    # another old file of the same hash cannot exist; one of another size is refused by header
    with pytest.raises(DeltaError):
        apply_patch(PatchMethod.HDIFF, old + b"x", patch, old_sha256=sha(old + b"x"),
                    new_sha256=sha(new), new_size=len(new))
    flipped = bytearray(patch)
    for i in range(len(patch) // 3, len(patch), max(1, len(patch) // 20)):
        flipped[i] ^= 0x55
    with pytest.raises(DeltaError):
        apply_patch(PatchMethod.HDIFF, old, bytes(flipped), **kw)  # type: ignore[arg-type]


def test_sectioned_hdiff_every_truncation_and_byte_flip_is_a_delta_error(
        pair: tuple[bytes, bytes]) -> None:
    """Whatever a damaged sectioned patch holds, the engine sees a DeltaError (and falls back
    to the file's chunks), never another exception or a wrong output."""
    old, new = pair
    patch = build_hdiff(old, new)
    assert patch[0] & 0x80
    kw = {"old_sha256": sha(old), "new_sha256": sha(new), "new_size": len(new)}
    rnd = random.Random(7)
    damaged = [patch[:n] for n in range(len(patch))]
    for _ in range(300):
        b = bytearray(patch)
        b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        damaged.append(bytes(b))
    for bad in damaged:
        try:
            out = apply_patch(PatchMethod.HDIFF, old, bad, **kw)  # type: ignore[arg-type]
        except DeltaError:
            continue
        assert out == new  # a flip the coders' redundancy absorbs still gives the new file


def test_sectioned_hdiff_refuses_an_endless_packed_integer_at_once(
        pair: tuple[bytes, bytes]) -> None:
    """A header integer of a million continuation bytes (an unsigned update document may carry
    such a patch) is refused after ten bytes, not parsed in quadratic time."""
    old, new = pair
    bad = b"\x80" + b"\xff" * 1_000_000 + b"\x01"
    with pytest.raises(DeltaError, match="too long"):
        apply_patch(PatchMethod.HDIFF, old, bad, old_sha256=sha(old), new_sha256=sha(new),
                    new_size=len(new))


def test_sectioned_hdiff_refuses_sections_past_the_output_bound(
        pair: tuple[bytes, bytes]) -> None:
    """A header declaring huge sections (a decompression bomb) is refused before decoding."""
    from patcher.delta import _pack

    old, new = pair
    fake = bytes([0x80]) + b"".join(_pack(v) for v in (len(new), len(old), 1, 10, 10**9, 10, 10))
    with pytest.raises(DeltaError, match="sections of"):
        apply_patch(PatchMethod.HDIFF, old, fake + b"\0" * 64, old_sha256=sha(old),
                    new_sha256=sha(new), new_size=len(new))


def test_whole_file_zstd_frame_applies_to_empty_input(pair: tuple[bytes, bytes]) -> None:
    _, new = pair
    frame = build_zstd(b"", new)
    out = apply_patch(PatchMethod.ZSTD, b"", frame, old_sha256=EMPTY_SHA256, new_sha256=sha(new),
                      new_size=len(new))
    assert out == new


# ------------------------------------------------------------------------- choosing methods


def test_methods_chosen_by_kind_and_size() -> None:
    elf = b"\x7fELF\x02\x01\x01\x00"
    assert plan_methods("bin/game", elf, MiB, MiB) == (
        PatchMethod.ZSTD, PatchMethod.HDIFF, PatchMethod.BSDIFF)
    assert plan_methods("lib/x.dll", b"", MiB, MiB)[-1] is PatchMethod.BSDIFF
    assert plan_methods("data/a.pak", b"PAK1", MiB, MiB) == (PatchMethod.ZSTD, PatchMethod.HDIFF)
    # big data files: HDiffPatch only (zstd's cost grows with the file, not with the change)
    assert plan_methods("data/a.pak", b"PAK1", ZSTD_FULL_MAX + 1, MiB) == (PatchMethod.HDIFF,)
    assert PatchMethod.BSDIFF not in plan_methods("bin/game", elf, BSDIFF_MAX_FILE + 1, MiB)
    # no predecessor: a whole-file frame
    assert plan_methods("data/new.pak", b"", None, MiB) == (PatchMethod.ZSTD,)


# ------------------------------------------------------------------------- delta index formats


def _entry(path: str, method: str, source: str | None) -> PatchEntry:
    return PatchEntry(path, source, "a" * 64 if source else EMPTY_SHA256, "b" * 64, 10, method,
                      "c" * 64, 5)


def test_format_2_round_trip_and_format_1_subset() -> None:
    index = DeltaIndex("p", "1", "2", (
        _entry("a", "bsdiff", "a"), _entry("b", "hdiffpatch", "b"), _entry("c", "zstd", None),
        _entry("d", "zstd", "d")), ManifestPatch("zstd", "d" * 64, 123, 4567))
    assert decode_delta_index(encode_delta_index(index)) == index
    v1 = index.for_v1()
    assert [p.path for p in v1.patches] == ["a", "d"] and v1.manifest_patch is None
    assert decode_delta_index(encode_delta_index(v1, 1)) == v1
    with pytest.raises(ValueError):
        encode_delta_index(index, 1)


def test_format_1_refuses_new_kinds_and_format_2_checks_them() -> None:
    import json

    import zstandard

    def blob(version: int, patch: dict[str, object]) -> bytes:
        doc = {"formatVersion": version, "productId": "p", "fromVersion": "1", "toVersion": "2",
               "patches": [patch]}
        return zstandard.ZstdCompressor().compress(json.dumps(doc).encode())

    good = {"path": "a", "sourcePath": "a", "fromSha256": "a" * 64, "toSha256": "b" * 64,
            "toSize": 1, "method": "hdiffpatch", "patchId": "c" * 64, "patchSize": 1}
    with pytest.raises(ManifestError):
        decode_delta_index(blob(1, good))  # what an old engine would have refused too
    assert decode_delta_index(blob(2, good)).patches[0].method == "hdiffpatch"
    with pytest.raises(ManifestError):  # only a zstd frame decodes from empty input
        decode_delta_index(blob(2, {**good, "sourcePath": None, "fromSha256": None}))
    with pytest.raises(ManifestError):
        decode_delta_index(blob(3, good))


# ------------------------------------------------------------------------- manifest patch


def test_manifest_patch_rebuilds_the_signed_bytes_or_refuses() -> None:
    old_json = b'{"files":[' + b",".join(b'{"p":"%d"}' % i for i in range(2000)) + b"]}"
    new_json = old_json.replace(b'"p":"77"', b'"p":"seventy-seven"')
    patch = build_zstd(old_json, new_json)
    mp = ManifestPatch("zstd", "0" * 64, len(patch), len(new_json))
    old_blob = compress_manifest_json(old_json)
    assert rebuild_manifest_blob(old_blob, patch, mp) == compress_manifest_json(new_json)
    with pytest.raises(ManifestError) as exc:  # declared size is checked before decoding
        rebuild_manifest_blob(old_blob, patch, ManifestPatch("zstd", "0" * 64, len(patch), 10))
    assert exc.value.code == "MANIFEST_PATCH_FAILED"
    with pytest.raises(ManifestError):
        rebuild_manifest_blob(old_blob, patch[:-5], mp)
    # against another base it rebuilds other bytes (the signature check is the caller's)
    other = compress_manifest_json(old_json.replace(b'"p":"5"', b'"p":"6"'))
    assert rebuild_manifest_blob(other, patch, mp) != compress_manifest_json(new_json)


# ------------------------------------------------------------------------- dead blocks


def test_mostly_dead_chunks() -> None:
    def rec(cid: str, pack: str, raw: int) -> ChunkRecord:
        return ChunkRecord(cid, pack, 0, raw, raw, Codec.ZSTD, 0, 100)

    known = {"a": rec("a", "P", 1000), "b": rec("b", "P", 1000),
             "c": rec("c", "Q", 200), "d": rec("d", "Q", 200)}
    files = [ChunkedFile(400, "0" * 64, (ChunkRef(0, 100, "a"), ChunkRef(100, 100, "c"),
                                         ChunkRef(200, 100, "d"), ChunkRef(300, 100, "new")))]
    # block P: 100 of 1000 raw bytes needed -> re-store; block Q: 200 of 200 -> keep
    assert mostly_dead_chunks(files, known, 0.9) == {"a"}
    assert mostly_dead_chunks(files, known, 0.05) == set()
