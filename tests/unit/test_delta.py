"""Tests for patcher.delta: real bsdiff4 and zstandard, no mocks."""

from __future__ import annotations

import bz2
import hashlib
import random
import struct
import time
from pathlib import Path

import pytest
import zstandard

from patcher.delta import (
    BSDIFF_MAX_FILE,
    PatchJob,
    PatchMethod,
    PatchResult,
    apply_patch,
    build_best_patch,
    build_bsdiff,
    build_hdiff,
    build_patches,
    build_zstd,
    estimate_job_memory,
)
from patcher.errors import DeltaError

CODE = "DELTA_PATCH_APPLICATION_FAILED"
MiB = 1024 * 1024
METHODS = list(PatchMethod)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(method: PatchMethod, old: bytes, new: bytes) -> bytes:
    if method is PatchMethod.HDIFF:
        return build_hdiff(old, new)
    return build_bsdiff(old, new) if method is PatchMethod.BSDIFF else build_zstd(old, new)


def apply(method: PatchMethod, old: bytes, patch: bytes, new: bytes) -> bytes:
    return apply_patch(
        method, old, patch, old_sha256=sha(old), new_sha256=sha(new), new_size=len(new)
    )


def random_ish(rnd: random.Random, size: int) -> bytes:
    """Incompressible runs mixed with repeated text, like a mix of code and data."""
    words = [rnd.randbytes(rnd.randrange(3, 12)) for _ in range(64)]
    out = bytearray()
    while len(out) < size:
        if rnd.random() < 0.5:
            out += rnd.randbytes(rnd.randrange(16, 512))
        else:
            out += b"".join(rnd.choice(words) for _ in range(rnd.randrange(4, 64)))
    return bytes(out[:size])


def edited(rnd: random.Random, old: bytes) -> bytes:
    """A new version: insertions, a deletion, scattered byte edits and a new tail."""
    new = bytearray(old)
    for _ in range(5):
        pos = rnd.randrange(len(new) + 1)
        new[pos:pos] = rnd.randbytes(rnd.randrange(1, 300))
    cut = rnd.randrange(len(new) // 2)
    del new[cut : cut + rnd.randrange(1, 2000)]
    for _ in range(40):
        new[rnd.randrange(len(new))] = rnd.randrange(256)
    new += rnd.randbytes(777)
    return bytes(new)


def executable_like(seed: int, count: int, *, shift_from: int | None = None) -> bytes:
    """Call instructions whose 4-byte targets all move when code is inserted (bsdiff's case)."""
    rnd = random.Random(seed)
    out = bytearray()
    for _ in range(count):
        opcode, target = 0xE8 + rnd.randrange(16), rnd.randrange(1 << 20)
        if shift_from is not None and target >= shift_from:
            target += 48
        out += bytes([opcode]) + struct.pack("<I", target) + bytes([0x90, rnd.randrange(4)])
    return bytes(out)


@pytest.fixture(scope="module")
def versions() -> tuple[bytes, bytes]:
    rnd = random.Random(20240611)
    old = random_ish(rnd, 300_000)
    return old, edited(rnd, old)


def write_job(tmp: Path, key: str, old: bytes, new: bytes, budget: int) -> PatchJob:
    (tmp / f"{key}.old").write_bytes(old)
    (tmp / f"{key}.new").write_bytes(new)
    return PatchJob(key, tmp / f"{key}.old", tmp / f"{key}.new", budget)


def assert_refused(excinfo: pytest.ExceptionInfo[DeltaError], *fragments: str) -> None:
    assert excinfo.value.code == CODE
    text = str(excinfo.value)
    assert any(fragment in text for fragment in fragments), text


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_with_insertions_and_edits(
    method: PatchMethod, versions: tuple[bytes, bytes]
) -> None:
    old, new = versions
    patch = build(method, old, new)
    assert len(patch) < len(new) // 10  # it is a delta, not a copy
    assert apply(method, old, patch, new) == new


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"", b"brand new file"),
        (b"file that gets emptied", b""),
        (b"", b""),
        (b"same bytes" * 100, b"same bytes" * 100),
        (b"x", b"y" * 5000),
    ],
    ids=["empty-old", "empty-new", "both-empty", "identical", "tiny-old"],
)
def test_round_trip_edge_cases(method: PatchMethod, old: bytes, new: bytes) -> None:
    assert apply(method, old, build(method, old, new), new) == new


def test_zstd_patch_is_deterministic(versions: tuple[bytes, bytes]) -> None:
    old, new = versions
    assert build_zstd(old, new) == build_zstd(old, new)


def test_low_zstd_levels_still_use_the_whole_dictionary() -> None:
    rnd = random.Random(3)
    old = rnd.randbytes(4 * MiB)
    new = old[:100] + b"edit" + old[104 : 2 * MiB] + b"insert" + old[2 * MiB :]
    patch = build_zstd(old, new, level=1)
    assert len(patch) < 2000, len(patch)
    assert apply(PatchMethod.ZSTD, old, patch, new) == new
    with pytest.raises(ValueError):
        build_zstd(old, new, level=0)


def test_zstd_indexes_the_whole_40_mib_dictionary() -> None:
    """A change near the start and one in the middle: both ends of the dictionary match.

    With zstd's level presets only the last few MiB of the old file are indexed and
    this patch is megabytes; with sized tables it is a few KiB.
    """
    size = 40 * MiB
    rnd = random.Random(40)
    old = rnd.randbytes(size)
    new = bytearray(old)
    new[1000:1010] = b"near start"
    new[size // 2 : size // 2] = b"inserted in the middle!" * 20
    new = bytes(new)

    started = time.monotonic()
    patch = build_zstd(old, new)
    elapsed = time.monotonic() - started
    assert len(patch) < 16 * 1024, f"{len(patch)} bytes: dictionary head not indexed"
    assert apply(PatchMethod.ZSTD, old, patch, new) == new
    print(f"40 MiB zstd patch: {len(patch)} bytes in {elapsed:.1f}s")


# ------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("method", METHODS)
def test_apply_refuses_wrong_old_hash(method: PatchMethod, versions: tuple[bytes, bytes]) -> None:
    old, new = versions
    patch = build(method, old, new)
    other_old = old[:-1] + bytes([old[-1] ^ 1])
    with pytest.raises(DeltaError) as excinfo:
        apply_patch(
            method, other_old, patch, old_sha256=sha(old), new_sha256=sha(new), new_size=len(new)
        )
    assert_refused(excinfo, "input hash mismatch")


@pytest.mark.parametrize("method", METHODS)
def test_apply_refuses_patch_producing_other_output(
    method: PatchMethod, versions: tuple[bytes, bytes]
) -> None:
    """A well-formed patch that yields different bytes of the right size (tampered)."""
    old, new = versions
    forged = bytearray(new)
    forged[len(forged) // 3] ^= 0xFF
    patch = build(method, old, bytes(forged))
    with pytest.raises(DeltaError) as excinfo:
        apply(method, old, patch, new)
    assert_refused(excinfo, "output hash mismatch")


@pytest.mark.parametrize("method", METHODS)
def test_apply_never_returns_wrong_bytes_from_flipped_patch(
    method: PatchMethod, versions: tuple[bytes, bytes]
) -> None:
    old, new = versions
    patch = build(method, old, new)
    rnd = random.Random(7)
    positions = sorted({*range(min(48, len(patch))), *rnd.sample(range(len(patch)), 60)})
    refused = 0
    for pos in positions:
        tampered = bytearray(patch)
        tampered[pos] ^= 1 << rnd.randrange(8)
        try:
            out = apply(method, old, bytes(tampered), new)
        except DeltaError as exc:
            assert exc.code == CODE
            refused += 1
        else:
            assert out == new  # an irrelevant bit (e.g. unused header flag) is fine
    assert refused > len(positions) // 2, refused


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.99])
def test_apply_refuses_truncated_patch(
    method: PatchMethod, keep: float, versions: tuple[bytes, bytes]
) -> None:
    old, new = versions
    patch = build(method, old, new)
    with pytest.raises(DeltaError) as excinfo:
        apply(method, old, patch[: int(len(patch) * keep)], new)
    assert_refused(excinfo, "corrupt")


@pytest.mark.parametrize("method", METHODS)
def test_apply_refuses_output_bigger_than_new_size(
    method: PatchMethod, versions: tuple[bytes, bytes]
) -> None:
    old, new = versions
    patch = build(method, old, new)
    with pytest.raises(DeltaError) as excinfo:
        apply_patch(
            method, old, patch, old_sha256=sha(old), new_sha256=sha(new), new_size=len(new) - 1
        )
    assert_refused(excinfo, "output size mismatch")


def test_apply_bounds_zstd_frame_without_content_size(versions: tuple[bytes, bytes]) -> None:
    """With no size in the header, max_output_size is what stops the output."""
    old, new = versions
    compressor = zstandard.ZstdCompressor(
        level=19,
        dict_data=zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT),
        write_content_size=False,
    )
    patch = compressor.compress(new)
    assert zstandard.get_frame_parameters(patch).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert apply(PatchMethod.ZSTD, old, patch, new) == new
    with pytest.raises(DeltaError) as excinfo:
        apply_patch(
            PatchMethod.ZSTD,
            old,
            patch,
            old_sha256=sha(old),
            new_sha256=sha(new),
            new_size=len(new) - 1,
        )
    assert_refused(excinfo, "corrupt", "output size")


def test_apply_refuses_bsdiff_block_inflating_past_new_size() -> None:
    """A bzip2 bomb in the extra block is stopped at new_size, not decompressed."""
    old = b"old"
    control, diff, extra = b"", bz2.compress(b""), bz2.compress(b"\0" * (16 * MiB))

    def offt(n: int) -> bytes:
        return struct.pack("<q", n)

    patch = b"BSDIFF40" + offt(len(bz2.compress(control))) + offt(len(diff)) + offt(10)
    patch += bz2.compress(control) + diff + extra
    with pytest.raises(DeltaError) as excinfo:
        apply_patch(
            PatchMethod.BSDIFF,
            old,
            patch,
            old_sha256=sha(old),
            new_sha256=sha(b"0123456789"),
            new_size=10,
        )
    assert_refused(excinfo, "inflates past 10 bytes")


def test_apply_refuses_garbage_and_unknown_method(versions: tuple[bytes, bytes]) -> None:
    old, new = versions
    for method in METHODS:
        with pytest.raises(DeltaError) as excinfo:
            apply(method, old, b"definitely not a patch, just some bytes", new)
        assert_refused(excinfo, "corrupt")
    with pytest.raises(DeltaError) as excinfo:
        apply_patch(
            "xdelta",  # type: ignore[arg-type]
            old,
            b"",
            old_sha256=sha(old),
            new_sha256=sha(new),
            new_size=len(new),
        )
    assert_refused(excinfo, "unknown patch method")


# ------------------------------------------------------------------------- choosing


def test_build_best_patch_tiny_budget_means_no_patch(
    tmp_path: Path, versions: tuple[bytes, bytes]
) -> None:
    old, new = versions
    result = build_best_patch(write_job(tmp_path, "f", old, new, budget=8))
    assert result == PatchResult("f", None, None, {})  # nothing was even tried

    # zstd and HDiffPatch are tried; no bsdiff patch (32-byte header + 3 bzip2 streams) fits
    # in 60 bytes, so it is not run even for a library.
    result = build_best_patch(write_job(tmp_path, "g.so", old, new, budget=60))
    assert (result.method, result.data) == (None, None)
    assert set(result.sizes) == {"zstd", "hdiffpatch"}
    assert result.sizes["zstd"] >= 60


def test_build_best_patch_needs_to_be_strictly_smaller_than_budget(
    tmp_path: Path, versions: tuple[bytes, bytes]
) -> None:
    old, new = versions
    best = build_best_patch(write_job(tmp_path, "f.dll", old, new, budget=len(new)))
    assert best.method is not None and best.data is not None
    assert set(best.sizes) == {"zstd", "bsdiff", "hdiffpatch"}
    assert len(best.data) == min(best.sizes.values())
    assert apply(best.method, old, best.data, new) == new

    at_budget = build_best_patch(write_job(tmp_path, "g.dll", old, new, budget=len(best.data)))
    assert (at_budget.method, at_budget.data) == (None, None)
    assert at_budget.sizes == best.sizes


def test_build_best_patch_picks_bsdiff_for_shifted_code(tmp_path: Path) -> None:
    old = executable_like(5, 40_000)
    new = executable_like(5, 40_000, shift_from=1 << 19)
    new = new[:1000] + b"NEWCODE!" * 6 + new[1000:]
    result = build_best_patch(write_job(tmp_path, "game.exe", old, new, budget=len(new)))
    assert result.method is PatchMethod.BSDIFF, result.sizes
    assert result.sizes["bsdiff"] < result.sizes["zstd"]
    assert result.data is not None
    assert apply(PatchMethod.BSDIFF, old, result.data, new) == new


def test_build_best_patch_skips_bsdiff_when_zstd_is_already_tiny(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(100_000)
    result = build_best_patch(write_job(tmp_path, "same.so", data, data, budget=len(data)))
    # identical files: zstd's frame and HDiffPatch's sectioned container (20 B) are both tiny
    assert result.method is not None and result.method is not PatchMethod.BSDIFF
    assert result.sizes[result.method.value] == min(result.sizes.values()) <= 32
    assert set(result.sizes) == {"zstd", "hdiffpatch"}


def test_build_best_patch_reports_unreadable_input(tmp_path: Path) -> None:
    job = PatchJob("missing", tmp_path / "nope.old", tmp_path / "nope.new", budget=1000)
    with pytest.raises(DeltaError) as excinfo:
        build_best_patch(job)
    assert_refused(excinfo, "missing: cannot read")


# ------------------------------------------------------------------------- scheduling


def test_estimates() -> None:
    small = estimate_job_memory(MiB, MiB, bsdiff=False)
    assert small > 3 * MiB
    assert estimate_job_memory(MiB, MiB, bsdiff=True) >= small
    big_zstd = estimate_job_memory(BSDIFF_MAX_FILE, BSDIFF_MAX_FILE, bsdiff=False)
    big_bsdiff = estimate_job_memory(BSDIFF_MAX_FILE, BSDIFF_MAX_FILE, bsdiff=True)
    assert big_bsdiff >= 18 * BSDIFF_MAX_FILE > big_zstd
    # zstd's tables grow with the old file (the whole dictionary is indexed)
    assert estimate_job_memory(40 * MiB, 40 * MiB, bsdiff=False) > 8 * 40 * MiB
    assert estimate_job_memory(40 * MiB, 40 * MiB, bsdiff=False) > 2 * small


def test_build_patches_in_order_with_two_workers(tmp_path: Path) -> None:
    rnd = random.Random(99)
    jobs: list[PatchJob] = []
    expected: dict[str, tuple[bytes, bytes]] = {}
    # Sizes vary so that the largest-first schedule differs from the job order.
    for index, size in enumerate([20_000, 400_000, 5_000, 150_000, 60_000]):
        old = random_ish(rnd, size)
        new = edited(rnd, old)
        key = f"file{index}"
        budget = 50 if index == 2 else len(new)  # file2 cannot beat its budget
        jobs.append(write_job(tmp_path, key, old, new, budget))
        expected[key] = (old, new)

    results = build_patches(jobs, workers=2)
    assert [r.key for r in results] == [j.key for j in jobs]
    for result in results:
        old, new = expected[result.key]
        if result.key == "file2":
            assert (result.method, result.data) == (None, None)
            continue
        assert result.method is not None and result.data is not None
        assert set(result.sizes) == {"zstd", "hdiffpatch"}  # data files: no bsdiff
        assert len(result.data) == min(result.sizes.values())
        assert apply(result.method, old, result.data, new) == new
    # Same answers as building one by one in this process.
    assert build_patches(jobs, workers=1) == results


def test_build_patches_drops_bsdiff_when_it_cannot_fit(tmp_path: Path) -> None:
    rnd = random.Random(5)
    # A tiny old file and a 12 MB (quickly compressible) new one: bsdiff's 17x would
    # need more than zstd's tables (and the file is small enough for zstd to be tried).
    big_old = rnd.randbytes(1024)
    big_new = (big_old * 59)[:60_000] * 200
    small_old = random_ish(rnd, 100_000)
    jobs = [
        write_job(tmp_path, "big.exe", big_old, big_new, budget=10**9),
        write_job(tmp_path, "small.exe", small_old, edited(rnd, small_old), budget=10**9),
    ]
    no_bsdiff = estimate_job_memory(len(big_old), len(big_new), bsdiff=False,
                                    methods=(PatchMethod.ZSTD, PatchMethod.HDIFF))
    assert estimate_job_memory(len(big_old), len(big_new), bsdiff=False,
                               methods=tuple(PatchMethod)) > no_bsdiff

    # Room for the big job's zstd and HDiffPatch but not its bsdiff: bsdiff dropped there only.
    limited = build_patches(jobs, workers=2, memory_limit=no_bsdiff)
    assert [r.key for r in limited] == ["big.exe", "small.exe"]
    assert set(limited[0].sizes) == {"zstd", "hdiffpatch"}
    assert set(limited[1].sizes) == {"zstd", "bsdiff", "hdiffpatch"}
    assert limited[0].method is not None and limited[0].data is not None
    assert apply(limited[0].method, big_old, limited[0].data, big_new) == big_new

    # No room at all: every job runs alone with zstd only.
    alone = build_patches(jobs, workers=2, memory_limit=1)
    assert [r.key for r in alone] == ["big.exe", "small.exe"]
    assert all(set(r.sizes) == {"zstd"} for r in alone)
    assert alone[0].data is not None
    assert apply(PatchMethod.ZSTD, big_old, alone[0].data, big_new) == big_new


def test_build_patches_errors(tmp_path: Path) -> None:
    assert build_patches([], workers=2) == []
    with pytest.raises(ValueError):
        build_patches([], workers=0)
    job = PatchJob("gone", tmp_path / "a", tmp_path / "b", budget=100)
    with pytest.raises(DeltaError) as excinfo:
        build_patches([job, job], workers=2)
    assert_refused(excinfo, "gone: cannot read")


# -- format-3 update documents (patcher.updatedoc) ----------------------------------------------


def _manifest(paths: list[str]) -> object:
    from patcher.manifest import ChunkEntry, ChunkLocation, FileEntry, Manifest

    files = tuple(FileEntry(p, 5, 0o644, sha(p.encode()), (ChunkEntry(0, 5, sha(p.encode() + b"c")),))
                  for p in paths)
    from patcher.manifest import Block, Codec

    return Manifest("prod", "1", files, (Block("a" * 64, 0, 10, 5 * len(paths), Codec.ZSTD),),
                    {f.chunks[0].id: ChunkLocation(0, 5 * i) for i, f in enumerate(files)})


def _doc_bytes(old: object) -> bytes:
    from patcher.updatedoc import DocPatch, UpdateDoc, encode_update_doc

    inline = b"patch-bytes"
    patches = (
        DocPatch("a.txt", "a.txt", "zstd", 7, inline, "", len(inline)),
        DocPatch("new/b.bin", None, "zstd", 9, None, "f" * 64, 70_000),
        DocPatch("c.txt", "a.txt", "hdiffpatch", 3, b"xyz", "", 3),
    )
    return encode_update_doc(UpdateDoc(patches, b"delta-frame"), old)  # type: ignore[arg-type]


def test_update_document_round_trip() -> None:
    import blake3

    from patcher.updatedoc import decode_update_doc

    old = _manifest(["a.txt", "c.txt"])
    doc = decode_update_doc(_doc_bytes(old), old)  # type: ignore[arg-type]
    assert [(p.path, p.source_path, p.method, p.to_size, p.data) for p in doc.patches] == [
        ("a.txt", "a.txt", "zstd", 7, b"patch-bytes"),
        ("new/b.bin", None, "zstd", 9, None),
        ("c.txt", "a.txt", "hdiffpatch", 3, b"xyz")]
    assert doc.patches[0].patch_id == blake3.blake3(b"patch-bytes").hexdigest()
    assert (doc.patches[1].patch_id, doc.patches[1].patch_size) == ("f" * 64, 70_000)
    assert doc.manifest_delta == b"delta-frame"


def _reencode(body: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(body)


@pytest.mark.parametrize("case", ["garbage", "format", "index", "method", "size", "inline",
                                  "twice", "path", "sourceless-bsdiff", "no-content-size",
                                  "truncated", "layout", "empty-steps"])
def test_malformed_update_documents_are_refused(case: str) -> None:
    from patcher.errors import ManifestError
    from patcher.updatedoc import decode_update_doc

    old = _manifest(["a.txt", "c.txt"])

    def body(*rows: bytes, tail: bytes = b"x") -> bytes:
        # format 3, patch count, the rows, no new blocks, no packs, no layout, inline bytes
        return _reencode(bytes([3, len(rows)]) + b"".join(rows) + b"\x00\x00\x00" + tail)

    ok = bytes([1, 1]) + b"z" + bytes([1, 1])  # a.txt from a.txt, zstd, 1 byte, 1 inline byte
    blob = {
        "garbage": b"\x00" * 40,
        "format": _reencode(b"\x02\x00\x00\x00"),
        "index": body(bytes([5, 1]) + b"z" + bytes([1, 1])),
        "method": body(bytes([1, 1]) + b"q" + bytes([1, 1])),
        "size": body(bytes([1, 1]) + b"z" + b"\xff\xff\xff\xff\xff\x7f" + bytes([1])),
        "inline": body(bytes([1, 1]) + b"z" + bytes([1, 99])),
        "twice": body(ok, ok, tail=b"xy"),
        "path": body(bytes([0, 7]) + b"../evil" + bytes([1]) + b"z" + bytes([1, 1])),
        "sourceless-bsdiff": body(bytes([0, 1]) + b"n" + bytes([0]) + b"b" + bytes([1, 1])),
        "no-content-size": zstandard.ZstdCompressor(write_content_size=False).compress(b"\x03\x00"),
        "truncated": _reencode(bytes([3, 1]) + ok[:3]),
        # a layout that keeps 3 of the 2 installed files
        "layout": _reencode(bytes([3, 0, 0, 0, 2, 3 << 2])),
        # KEEP 0 steps: a byte each, an object each, no file (a ~100-byte document of them
        # would build a million objects)
        "empty-steps": _reencode(bytes([3, 0, 0, 0, 4, 0, 0, 0])),
    }[case]
    with pytest.raises(ManifestError) as exc:
        decode_update_doc(blob, old)  # type: ignore[arg-type]
    assert exc.value.code in ("UPDATE_DOC_INVALID", "MANIFEST_PATH_INVALID")


def test_a_well_formed_binary_document_decodes() -> None:
    from patcher.updatedoc import decode_update_doc

    old = _manifest(["a.txt", "c.txt"])
    blob = _reencode(bytes([3, 1, 1, 1]) + b"z" + bytes([1, 1, 0, 0, 0]) + b"x" + b"delta")
    doc = decode_update_doc(blob, old)  # type: ignore[arg-type]
    assert [(p.path, p.data) for p in doc.patches] == [("a.txt", b"x")]
    assert doc.manifest_delta == b"delta"


@pytest.mark.parametrize("method", METHODS)
def test_apply_without_an_output_hash_still_checks_input_and_size(method: PatchMethod) -> None:
    old, new = b"old content " * 50, b"new content " * 60
    patch = build(method, old, new)
    out = apply_patch(method, old, patch, old_sha256=sha(old), new_sha256=None, new_size=len(new))
    assert out == new
    with pytest.raises(DeltaError):
        apply_patch(method, old + b"!", patch, old_sha256=sha(old), new_sha256=None,
                    new_size=len(new))
    with pytest.raises(DeltaError):
        apply_patch(method, old, patch, old_sha256=sha(old), new_sha256=None, new_size=len(new) + 1)


def test_prediction_of_an_unchanged_step_is_the_old_manifest_renamed() -> None:
    from patcher.manifest import manifest_to_json
    from patcher.updatedoc import predict_manifest

    old = _manifest(["a.txt", "c.txt"])
    predicted = predict_manifest(old, "2", [])  # type: ignore[arg-type]
    assert manifest_to_json(predicted) == manifest_to_json(old).replace(  # type: ignore[arg-type]
        b'"versionId":"1"', b'"versionId":"2"')


def test_layout_moves_drops_and_adds_files() -> None:
    from patcher.manifest import FileEntry, manifest_to_json
    from patcher.updatedoc import (
        UpdateDoc,
        decode_update_doc,
        encode_update_doc,
        file_layout,
        predict_manifest,
    )

    old = _manifest(["a.txt", "b.txt", "c.txt"])
    a, b, c = old.files  # type: ignore[attr-defined]
    new_files = (FileEntry("a2.txt", a.size, a.mode, a.hash_sha256, a.chunks), c,
                 FileEntry("d.txt", 1, 0o644, sha(b"d"), ()))
    new = type(old)("prod", "2", new_files, old.blocks, {  # type: ignore[attr-defined]
        k: v for k, v in old.chunks.items() if k != b.chunks[0].id})  # type: ignore[attr-defined]
    layout = file_layout(old, new)  # type: ignore[arg-type]
    doc = decode_update_doc(encode_update_doc(UpdateDoc((), b"", layout=layout), old), old)  # type: ignore[arg-type]
    assert doc.layout == layout
    predicted = predict_manifest(old, "2", [], layout=doc.layout)  # type: ignore[arg-type]
    assert [f.path for f in predicted.files] == ["a2.txt", "c.txt", "d.txt"]
    # the moved row is exact; only the new file's row is left to the manifest delta
    assert predicted.files[0].hash_sha256 == a.hash_sha256
    assert manifest_to_json(predicted).count(b'"hash_sha256"') == 3


@pytest.mark.parametrize("rewritten", [False, True])
def test_bsdiff_runs_after_hdiffpatch_only_for_edits(tmp_path: Path, rewritten: bool) -> None:
    """An executable whose HDiffPatch patch is over BSDIFF_SKIP_SHARE of it was rewritten, not
    edited: bsdiff is not run (it lost there, at a quarter of the step's CPU)."""
    rnd = random.Random(7)
    old = b"\x7fELF" + bytes(rnd.getrandbits(8) for _ in range(200_000))
    if rewritten:
        new = old[:100_000] + bytes(rnd.getrandbits(8) for _ in range(100_004))
    else:
        edited = bytearray(old)
        for i in range(64, len(edited), 1009):  # scattered small edits, like shifted addresses
            edited[i] ^= 0x10
        new = bytes(edited)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "libx.so").write_bytes(new)
    result = build_best_patch(PatchJob("libx.so", tmp_path / "old", tmp_path / "libx.so", 1 << 30))
    assert "hdiffpatch" in result.sizes
    assert ("bsdiff" in result.sizes) is (not rewritten)
    assert result.data is not None and result.method is not None
    assert apply_patch(result.method, old, result.data, old_sha256=sha(old), new_sha256=sha(new),
                       new_size=len(new)) == new


# -- the update document's work budget (review findings 1-3) ------------------------------------

GiB = 1024 * MiB


def _big_file_manifest(n_chunks: int, extra: int = 0) -> object:
    """One installed file of ``n_chunks`` 64 KiB chunks (plus ``extra`` small files): the row
    a hostile layout would copy."""
    from patcher.manifest import Block, ChunkEntry, ChunkLocation, Codec, FileEntry, Manifest

    ids = [sha(b"chunk%d" % i) for i in range(n_chunks)]
    big = FileEntry("big.pak", n_chunks * 65536, 0o644, sha(b"big"),
                    tuple(ChunkEntry(i * 65536, 65536, c) for i, c in enumerate(ids)))
    small = tuple(FileEntry(f"s{i}.txt", 5, 0o644, sha(b"s%d" % i), ()) for i in range(extra))
    return Manifest("prod", "1", (big, *small), (Block("a" * 64, 0, 1, n_chunks * 65536, Codec.ZSTD),),
                    {c: ChunkLocation(0, i * 65536) for i, c in enumerate(ids)})


def _move_doc(old: object, paths: list[str]) -> object:
    """The reviewer's first document: MOVE installed file 0 under each of ``paths``."""
    from patcher.updatedoc import MOVE, LayoutOp, UpdateDoc, decode_update_doc, encode_update_doc

    layout = tuple(LayoutOp(MOVE, 0, p) for p in paths)
    blob = encode_update_doc(UpdateDoc((), b"", layout=layout), old)  # type: ignore[arg-type]
    assert len(blob) < 64 * 1024, "a small document"
    return decode_update_doc(blob, old)  # type: ignore[arg-type]


def _zero_frame(size: int) -> bytes:
    """A zstd frame of ``size`` zero bytes made of RLE blocks (4 bytes per 128 KiB): 1 GiB is
    32,783 bytes, built here without allocating it."""
    header = struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", size)  # single segment
    blocks = bytearray()
    left = size
    while left:
        n = min(left, 128 * 1024)
        left -= n
        blocks += ((n << 3) | (1 << 1) | (0 if left else 1)).to_bytes(3, "little") + b"\x00"
    return header + bytes(blocks)


def _zero_frames_doc(old: object, count: int) -> bytes:
    """The reviewer's second document: ``count`` inline whole-file frames of 1 GiB of zeros,
    each a new path (format 3, patch rows, no blocks/packs/layout, inline bytes, no delta)."""
    from patcher.updatedoc import _varint

    frame = _zero_frame(GiB)
    rows = b"".join(b"\x00" + _varint(len(name)) + name + b"\x00z" + _varint(GiB)
                    + _varint(len(frame)) for name in (b"n%d" % i for i in range(count)))
    body = b"\x03" + _varint(count) + rows + b"\x00\x00\x00" + frame * count
    return zstandard.ZstdCompressor(level=1).compress(body)


def test_the_crafted_zero_frame_is_what_it_claims() -> None:
    frame = _zero_frame(300 * 1024)
    assert zstandard.ZstdDecompressor().decompress(frame) == bytes(300 * 1024)
    assert len(_zero_frame(GiB)) <= 32_783  # the review measured 32,783 with zstd itself
    assert zstandard.get_frame_parameters(_zero_frame(GiB)).content_size == GiB


def _refused_small(fn: object, *args: object) -> DeltaError:
    """Run ``fn`` expecting a DeltaError, and check it allocated nothing big before refusing."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(DeltaError) as exc:
            fn(*args)  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, f"{peak} bytes allocated before the refusal"
    return exc.value


def test_moves_repeating_one_path_are_refused_before_any_prediction(tmp_path: Path) -> None:
    """M MOVE steps putting a 1000-chunk file under one path (155 MiB of predicted JSON at
    M=2000 before the fix): refused by the count, before any row is copied."""
    from engine.jobs.update import derive_manifest_blob
    from patcher.updatedoc import check_doc_work

    old = _big_file_manifest(1000)
    doc = _move_doc(old, ["a"] * 2000)
    assert _refused_small(check_doc_work, doc, old).code == "UPDATE_DOC_PATH_TWICE"
    err = _refused_small(derive_manifest_blob, tmp_path, old, doc, {}, "2")
    assert err.code == "UPDATE_DOC_PATH_TWICE"


def test_moves_under_many_paths_are_refused_past_the_installed_rows() -> None:
    """Distinct paths: each copy is a valid row, but 2000 copies of a 1000-row file (the
    review's 155 MiB of JSON) copy far more rows than the installed version has; 60 copies stay
    within the slack (a legitimate duplicate is fine)."""
    from patcher.updatedoc import MOVE_SLACK_ROWS, check_doc_work

    old = _big_file_manifest(1000)
    err = _refused_small(check_doc_work, _move_doc(old, [f"copy/{i}" for i in range(2000)]), old)
    assert err.code == "UPDATE_DOC_TOO_MANY_ROWS"
    assert str(1000 + MOVE_SLACK_ROWS) in str(err)
    work = check_doc_work(_move_doc(old, [f"copy/{i}" for i in range(60)]), old)  # type: ignore[arg-type]
    assert (work.files, work.rows) == (60, 60_000)


def test_a_prediction_past_the_loaders_json_limit_is_refused() -> None:
    """Within the byte budget of a (claimed) 2 TiB install, 1000 patched 1 GiB outputs still
    make at least 4096 rows each: ~295 MB of JSON, past MAX_JSON_BYTES."""
    from patcher.manifest import ChunkEntry, FileEntry, Manifest
    from patcher.updatedoc import DocPatch, UpdateDoc, check_doc_work

    old = Manifest("prod", "1", (FileEntry("huge", 2 << 40, 0o644, sha(b"h"),
                                           (ChunkEntry(0, 1, sha(b"c")),)),), (), {})
    patches = tuple(DocPatch(f"n{i}", None, "zstd", GiB, b"x", "", 1) for i in range(1000))
    err = _refused_small(check_doc_work, UpdateDoc(patches, b""), old)
    assert err.code == "UPDATE_DOC_JSON_TOO_LARGE"


def test_many_new_files_are_refused_past_the_installed_count() -> None:
    """A ~30 KB document of 100k NEW steps (short names compress to nothing; a million made a
    131 MB prediction): more files added than the installed count + ADD_SLACK_FILES."""
    from patcher.updatedoc import (
        ADD_SLACK_FILES,
        NEW,
        LayoutOp,
        UpdateDoc,
        check_doc_work,
        decode_update_doc,
        encode_update_doc,
    )

    old = _big_file_manifest(1, extra=2)
    n = ADD_SLACK_FILES + 4
    blob = encode_update_doc(UpdateDoc((), b"", layout=tuple(
        LayoutOp(NEW, 0, f"{i}") for i in range(n))), old)  # type: ignore[arg-type]
    assert len(blob) < 64 * 1024, len(blob)
    doc = decode_update_doc(blob, old)  # type: ignore[arg-type]
    assert _refused_small(check_doc_work, doc, old).code == "UPDATE_DOC_TOO_MANY_FILES"
    work = check_doc_work(UpdateDoc((), b"", layout=doc.layout[: n - 1]), old)  # type: ignore[arg-type, index]
    assert work.files == n - 1  # the installed count + the slack: accepted


def test_inline_gigabyte_zero_frames_are_refused_before_any_decompression(tmp_path: Path) -> None:
    """1900 inline 1 GiB zero frames (~1900 GiB of work from a small document): past the
    budget of the installed size, refused before a frame is decompressed."""
    from engine.jobs.update import derive_manifest_blob
    from patcher.updatedoc import check_doc_work, decode_update_doc, work_budget

    old = _big_file_manifest(16)  # 1 MiB installed: the budget is 3 MiB + 64 MiB
    blob = _zero_frames_doc(old, 1900)
    assert len(blob) < 64 * 1024, len(blob)
    doc = decode_update_doc(blob, old)  # type: ignore[arg-type]
    assert len(doc.patches) == 1900 and all(p.to_size == GiB for p in doc.patches)
    data = {p.patch_id: p.data for p in doc.patches}
    err = _refused_small(check_doc_work, doc, old)
    assert err.code == "UPDATE_DOC_OVER_BUDGET"
    assert str(work_budget(old.total_size)) in str(err)  # type: ignore[attr-defined]
    err = _refused_small(derive_manifest_blob, tmp_path, old, doc, data, "2")
    assert err.code == "UPDATE_DOC_OVER_BUDGET"
    # one such frame alone is refused too: a 1 GiB output for a 1 MiB game
    one = decode_update_doc(_zero_frames_doc(old, 1), old)  # type: ignore[arg-type]
    assert _refused_small(check_doc_work, one, old).code == "UPDATE_DOC_OVER_BUDGET"


def test_budget_counts_each_source_once_and_external_patches() -> None:
    from patcher.updatedoc import DocPatch, UpdateDoc, doc_work

    old = _big_file_manifest(16, extra=1)  # big.pak: 1 MiB
    patches = (DocPatch("x", "big.pak", "hdiffpatch", 100, b"p", "", 1),
               DocPatch("y", "big.pak", "zstd", 200, None, "f" * 64, 5000))
    work = doc_work(UpdateDoc(patches, b""), old)  # type: ignore[arg-type]
    assert (work.output_bytes, work.source_bytes, work.external_bytes) == (300, MiB, 5000)
    assert work.total_bytes == 300 + MiB + 5000


def test_derivation_reads_no_source_that_grew_on_disk(tmp_path: Path) -> None:
    """The installed file is now far bigger than its manifest row (3 GiB in the review): refused
    by its size, never read whole (here 8 MiB on disk for a 1 MiB row)."""
    from engine.jobs.update import derive_manifest_blob
    from patcher.updatedoc import DocPatch, UpdateDoc

    old = _big_file_manifest(16)
    with (tmp_path / "big.pak").open("wb") as fh:
        fh.truncate(8 * MiB)
    doc = UpdateDoc((DocPatch("big.pak", "big.pak", "zstd", 10, b"p", "i", 1),), b"")
    err = _refused_small(derive_manifest_blob, tmp_path, old, doc, {"i": b"p"}, "2")
    assert "8388608 bytes on disk" in str(err)


def test_a_source_the_verified_record_proves_is_not_hashed_again(tmp_path: Path) -> None:
    """``_read_source`` takes a source whose metadata matches the verified-metadata record
    without hashing it; with no record, or once the file changed after its entry was made, the
    SHA-256 decides. The file's bytes differ from the SHA-256 the entry names, so only a read
    that did not hash can return them."""
    from engine.io.verifiedmeta import VerifiedRecord
    from engine.jobs.update import _read_source
    from patcher.manifest import FileEntry

    game = tmp_path / "game"
    game.mkdir()
    (game / "a.bin").write_bytes(b"x" * 100)
    claimed = sha(b"y" * 100)  # what the installed manifest says the file holds
    entry = FileEntry("a.bin", 100, 0o644, claimed, ())
    with pytest.raises(DeltaError, match="no longer the installed version's file"):
        _read_source(game, entry)
    record = VerifiedRecord(tmp_path / "verified" / "p.json", game)
    record.set("a.bin", claimed, (game / "a.bin").stat())
    assert _read_source(game, entry, record) == b"x" * 100
    other = VerifiedRecord(tmp_path / "verified" / "q.json", game)
    other.set("a.bin", sha(b"z" * 100), (game / "a.bin").stat())  # proven other content
    with pytest.raises(DeltaError):
        _read_source(game, entry, other)
    (game / "a.tmp").write_bytes(b"x" * 100)  # replaced since (another inode)
    (game / "a.tmp").replace(game / "a.bin")
    with pytest.raises(DeltaError):
        _read_source(game, entry, record)
