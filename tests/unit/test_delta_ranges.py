"""Range patches (issue 14): HDiffPatch patches built region by region from the chunk lists,
joined into one ordinary HDiffPatch patch, applied by the unchanged applier; the scheduler's
cost model; the publisher's use of both and of the engine's work budget. Real hdiffpatch,
FastCDC and a real store: no mocks."""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

import hdiffpatch
import pytest

from patcher import delta
from patcher.chunking import chunk_buffer
from patcher.delta import (
    PatchJob,
    PatchMethod,
    apply_patch,
    build_hdiff,
    build_patches,
    estimate_job_memory,
    job_cost,
    matching_spans,
)
from patcher.publish import publish
from patcher.store import Store
from patcher.updatedoc import check_doc_work, decode_update_doc
from testing.testdata import MiB, rand, text


def applied(old: bytes, patch: bytes, new_size: int) -> bytes:
    """A built patch applied as the engine applies it (either HDiffPatch container)."""
    return delta._apply_hdiff(old, patch, new_size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(data: bytes) -> list[tuple[int, int, str]]:
    return [(c.offset, c.size, c.id) for c in chunk_buffer(data).chunks]


def spans_of(old: bytes, new: bytes) -> tuple[delta.Span, ...]:
    return matching_spans(chunks(old), chunks(new))


def pack_like(seed: int, entries: int = 24, size: int = 128 * 1024) -> list[bytes]:
    """Entries of a game pack: half dense (textures), half text (scripts)."""
    return [rand(seed * 1000 + i, size) if i % 2 else text(seed * 1000 + i, size)
            for i in range(entries)]


def edit(entries: list[bytes], rnd: random.Random) -> list[bytes]:
    """Edit some entries in place, insert one, drop one, move one, grow one."""
    out = list(entries)
    out[3] = out[3][:5000] + rnd.randbytes(300) + out[3][5300:]  # in-place edit
    out[10] = bytes(b ^ 1 for b in out[10][:2000]) + out[10][2000:]
    out.insert(7, text(99, 90_000))  # new entry
    del out[15]  # dropped entry
    out.append(out.pop(1))  # moved entry: its old bytes are far from its new place
    out[-3] += rand(7, 50_000)  # grown entry
    return out


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    old_entries = pack_like(1)
    return b"".join(old_entries), b"".join(edit(old_entries, random.Random(5)))


def test_a_range_patch_is_an_ordinary_hdiffpatch_patch_and_rebuilds_the_file(
    pair: tuple[bytes, bytes],
) -> None:
    old, new = pair
    spans = spans_of(old, new)
    assert spans and sum(n for _a, _b, n in spans) > len(new) // 2  # mostly unchanged
    checked = delta._checked_spans(old, new, spans)
    for joined in (False, True):  # our joining, checked by the real applier
        plain = delta._hdiff_ranges(old, new, checked, joined=joined)
        assert hdiffpatch.apply(old, plain) == new
    patch = build_hdiff(old, new, spans)
    assert delta.hdiff_sizes(patch) == (len(new), len(old))
    out = apply_patch(PatchMethod.HDIFF, old, patch, old_sha256=sha(old), new_sha256=sha(new),
                      new_size=len(new))
    assert out == new
    # a small entry moved out of its window (no span shows the move): the joined search finds
    # it, and the patch costs about what the whole-file search costs
    assert len(patch) <= len(build_hdiff(old, new)) * 1.05


@pytest.mark.parametrize("case", ["insert-at-start", "append", "truncate", "reorder",
                                  "replace-all-but-one", "identical-but-tail", "empty-old-window"])
def test_range_patches_of_edge_layouts(case: str) -> None:
    entries = pack_like(2, entries=12)
    old = b"".join(entries)
    layout = {
        "insert-at-start": [rand(3, 70_000), *entries],
        "append": [*entries, text(4, 200_000)],
        "truncate": entries[:5],
        "reorder": entries[6:] + entries[:6],  # covers whose old positions go backwards
        "replace-all-but-one": [rand(5, len(old) - len(entries[4])), entries[4]],
        "identical-but-tail": [*entries[:-1], entries[-1][:-1] + b"!"],
        "empty-old-window": [*entries[:4], rand(6, 40_000), *entries[4:]],
    }[case]
    new = b"".join(layout)
    spans = spans_of(old, new)
    checked = delta._checked_spans(old, new, spans)
    in_order = all(a[1] + a[2] <= b[1] for a, b in itertools.pairwise(checked))
    assert in_order == (case != "reorder")
    for joined in (True, False) if in_order else (True,):
        plain = delta._hdiff_ranges(old, new, checked, joined=joined)
        assert hdiffpatch.apply(old, plain) == new
    patch = build_hdiff(old, new, spans)
    assert applied(old, patch, len(new)) == new


def test_wrong_spans_cost_size_never_correctness() -> None:
    old = b"".join(pack_like(3, entries=10))
    new = old[:300_000] + rand(8, 5000) + old[300_000:]
    lying = [(0, 0, 400_000), (len(new) - 10, 0, 50), (100, 5, 10**9), (-1, 0, 5)]
    assert delta._checked_spans(old, new, lying) == []
    patch = build_hdiff(old, new, lying)
    assert applied(old, patch, len(new)) == new


def test_matching_spans_merge_runs_and_follow_the_continuing_copy() -> None:
    old = [(0, 10, "a"), (10, 10, "b"), (20, 10, "a"), (30, 10, "c")]
    new = [(0, 10, "x"), (10, 10, "b"), (20, 10, "a"), (30, 10, "c"), (40, 5, "y")]
    # "a" is held twice: the copy after "b" continues the run, so b-a-c is one span
    assert matching_spans(old, new) == ((10, 10, 30),)
    assert matching_spans(old, [(0, 10, "a")]) == ((0, 0, 10),)
    assert matching_spans([], new) == ()


def test_packed_integers_round_trip_with_and_without_tags() -> None:
    values = [0, 1, 62, 63, 64, 126, 127, 128, 2**14 - 1, 2**14, 2**35 + 17, 2**63 - 1]
    for tag_bits, tags in ((0, [0]), (1, [0, 1]), (2, [0, 1, 2, 3])):
        for value in values:
            for tag in tags:
                packed = delta._pack(value, tag, tag_bits)
                assert delta._unpack(packed + b"\xff", 0, tag_bits) == (value, tag, len(packed))


def test_range_jobs_are_budgeted_by_what_they_search_not_the_file() -> None:
    size = 100 * MiB
    spans = [(0, 0, 40 * MiB), (41 * MiB, 40 * MiB, 59 * MiB)]  # one 1 MiB edit
    whole = estimate_job_memory(size, size, bsdiff=False, methods=(PatchMethod.HDIFF,))
    ranged = estimate_job_memory(size, size, bsdiff=False, methods=(PatchMethod.HDIFF,),
                                 spans=spans)
    assert whole > 900 * MiB
    assert ranged < 7 * size  # the files, the joined pieces, the patch and its check: not 8x
    assert job_cost((PatchMethod.HDIFF,), size, size, spans) < job_cost(
        (PatchMethod.HDIFF,), size, size) / 10
    # a new file's strong frame outlasts a range patch of a larger file: it starts first
    assert job_cost((PatchMethod.ZSTD,), None, 35 * MiB) > job_cost(
        (PatchMethod.HDIFF,), size, size, spans)


def test_build_patches_runs_range_jobs_in_workers_and_keeps_job_order(tmp_path: Path) -> None:
    jobs = []
    expected = []
    for i in range(3):
        old_entries = pack_like(10 + i, entries=40)
        old, new = b"".join(old_entries), b"".join(edit(old_entries, random.Random(i)))
        (tmp_path / f"{i}.old").write_bytes(old)
        (tmp_path / f"{i}.new").write_bytes(new)
        jobs.append(PatchJob(f"data/{i}.pak", tmp_path / f"{i}.old", tmp_path / f"{i}.new",
                             len(new), spans_of(old, new)))
        expected.append((old, new))
    results = build_patches(jobs, workers=2, memory_limit=512 * MiB)
    assert [r.key for r in results] == [j.key for j in jobs]
    for res, (old, new) in zip(results, expected, strict=True):
        assert res.method is PatchMethod.HDIFF and res.data is not None
        assert applied(old, res.data, len(new)) == new


def test_the_publisher_diffs_changed_ranges_and_publishes_only_documents_the_engine_accepts(
    tmp_path: Path,
) -> None:
    old_entries = pack_like(20, entries=24)
    builds = {}
    for version, entries in (("1.0", old_entries), ("1.1", edit(old_entries, random.Random(9)))):
        root = tmp_path / version
        (root / "data").mkdir(parents=True)
        (root / "data" / "main.pak").write_bytes(b"".join(entries))
        (root / "readme.txt").write_bytes(text(30, 3000) + version.encode())
        builds[version] = root
    store = Store(tmp_path / "store")
    try:
        publish(store, "game", "1.0", builds["1.0"])
        report = publish(store, "game", "1.1", builds["1.1"])
        by_path = {p.path: p for p in report.patches}
        pak = by_path["data/main.pak"]
        assert pak.method == PatchMethod.HDIFF.value and pak.size < pak.alternative_bytes
        old_manifest = store.read_manifest("game", "1.0")
        doc_path = store.path(store.delta_v3_rel("game", "1.0", "1.1"))
        doc = decode_update_doc(doc_path.read_bytes(), old_manifest)
        check_doc_work(doc, old_manifest)  # what the engine runs first: no refusal
        carried = {p.path: p for p in doc.patches}
        if "data/main.pak" in carried and carried["data/main.pak"].data is not None:
            patch = carried["data/main.pak"].data
        else:
            index = store.read_delta("game", "1.0", "1.1")
            assert index is not None
            index_patch = next(p for p in index.patches if p.path == "data/main.pak")
            patch = store.path(store.patch_rel("game", index_patch.patch_id)).read_bytes()
        old_pak = (builds["1.0"] / "data" / "main.pak").read_bytes()
        new_pak = (builds["1.1"] / "data" / "main.pak").read_bytes()
        assert apply_patch(PatchMethod.HDIFF, old_pak, patch, old_sha256=sha(old_pak),
                           new_sha256=sha(new_pak), new_size=len(new_pak)) == new_pak
    finally:
        store.close()


def decode_runs(ctrl: bytes, code: bytes) -> bytes:
    """HDiffPatch's difference runs decoded (the applier's _TBytesRle_load_stream, in Python)."""
    out = bytearray()
    pos = code_pos = 0
    while pos < len(ctrl):
        kind = ctrl[pos] >> 6
        length, _tag, pos = delta._unpack(ctrl, pos, 2)
        length += 1
        if kind == 0:
            out += bytes(length)
        elif kind == 1:
            out += b"\xff" * length
        elif kind == 2:
            out += code[code_pos:code_pos + 1] * length
            code_pos += 1
        else:
            out += code[code_pos:code_pos + length]
            code_pos += length
    assert code_pos == len(code)
    return bytes(out)


def test_difference_runs_split_at_any_cut_decode_to_the_same_bytes() -> None:
    records = [(0, 5, b""), (1, 3, b""), (2, 7, b"\x42"), (3, 6, b"abcdef"), (0, 200, b""),
               (3, 1, b"z")]
    ctrl = b"".join(delta._pack(n - 1, kind, 2) for kind, n, _c in records)
    code = b"".join(c for _k, _n, c in records)
    whole = decode_runs(ctrl, code)
    assert len(whole) == 222
    rnd = random.Random(3)
    for _ in range(50):
        cuts = sorted(rnd.sample(range(1, 222), rnd.randrange(1, 12)))
        lengths = [b - a for a, b in zip([0, *cuts], [*cuts, 222], strict=True)]
        pieces = delta._split_runs(ctrl, code, lengths)
        assert [len(decode_runs(c, k)) for c, k in pieces] == lengths
        assert b"".join(decode_runs(c, k) for c, k in pieces) == whole
    with pytest.raises(ValueError):
        delta._split_runs(ctrl, code, [100])  # runs left over


def test_moved_small_entries_are_found_and_in_place_edits_are_not(
    pair: tuple[bytes, bytes],
) -> None:
    old, new = pair  # entry 1 (128 KiB, no whole chunk of its own) moved to the end
    spans = delta._checked_spans(old, new, spans_of(old, new))
    regions, _unused = delta._pieces(spans, len(old), len(new))
    windows = delta._windows(spans, regions, len(old))
    assert delta._moved_bytes(old, new, regions, windows) >= delta._MOVED_MIN
    entries = pack_like(1)
    edited_only = b"".join([*entries[:3], entries[3][:5000] + rand(4, 300) + entries[3][5300:],
                            *entries[4:]])
    spans = delta._checked_spans(old, edited_only, spans_of(old, edited_only))
    regions, _unused = delta._pieces(spans, len(old), len(edited_only))
    assert delta._moved_bytes(old, edited_only, regions,
                              delta._windows(spans, regions, len(old))) == 0


def test_a_file_made_only_of_moved_spans_is_a_patch_of_covers() -> None:
    half_a, half_b = rand(11, MiB), rand(12, MiB)
    old = half_a + half_b
    for new in (half_b + half_a, half_b + half_a + b"tail"):
        patch = build_hdiff(old, new, [(0, MiB, MiB), (MiB, 0, MiB)])
        assert applied(old, patch, len(new)) == new
        assert len(patch) < 100  # two covers and a header: nothing searched, nothing literal


def test_a_small_patch_of_a_mid_sized_file_is_never_larger_than_the_whole_file_one() -> None:
    rnd = random.Random(21)
    old = b"".join(pack_like(30, entries=20))
    new = bytearray(old)
    for _ in range(30):  # scattered small edits, as in code: every chunk region changes a bit
        at = rnd.randrange(len(new) - 8)
        new[at:at + 4] = rnd.randbytes(4)
    spans = spans_of(old, bytes(new))
    assert spans
    ranged = build_hdiff(old, bytes(new), spans)
    assert applied(old, ranged, len(new)) == bytes(new)
    assert len(ranged) <= len(build_hdiff(old, bytes(new)))
