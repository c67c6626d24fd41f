"""The streaming manifest loader's faster reading of rows and locations (issue 13, first byte
within 0.3 s): what it refuses goes to the strict loader, which gives the same manifest or the
same error; the two ways of linking rows to locations give the same table."""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from random import Random
from typing import Any

import pytest
import zstandard

from patcher.errors import ManifestError
from patcher.manifest import (
    Block,
    ChunkEntry,
    ChunkLocation,
    ChunkTable,
    Codec,
    FileEntry,
    Manifest,
    _bisect_rows,
    _decode_strict,
    _group,
    _keys,
    _link_large,
    _link_small,
    _NotCanonical,
    _stream_manifest,
    decode_manifest,
    encode_manifest,
    manifest_to_dict,
    manifest_to_json,
)

C, D, E = "c" * 64, "d" * 64, "e" * 64


def _text() -> bytes:
    """Two files (three and one chunk rows, one chunk shared), three locations."""
    m = Manifest(
        "p", "1",
        (FileEntry("a", 30, 0o644, "e3" * 32,
                   (ChunkEntry(0, 10, C), ChunkEntry(10, 10, D), ChunkEntry(20, 10, E))),
         FileEntry("b", 10, 0o644, "e3" * 32, (ChunkEntry(0, 10, D),))),
        (Block("a" * 64, 0, 30, 30, Codec.RAW),),
        {C: ChunkLocation(0, 0), D: ChunkLocation(0, 10), E: ChunkLocation(0, 20)})
    return manifest_to_json(m)


def _outcome(decode: Any, blob: bytes) -> tuple[Any, ...]:
    try:
        m = decode(blob)
    except ManifestError as exc:
        return ("error", exc.code, exc.field)
    return ("ok", manifest_to_dict(m))


def _refused_by_the_fast_path(raw: bytes) -> tuple[Any, ...]:
    """The outcome of ``raw`` through the strict loader, after checking that the streaming
    loader does not read it itself and that ``decode_manifest`` agrees with the strict one."""
    blob = zstandard.ZstdCompressor().compress(raw)
    with pytest.raises((_NotCanonical, ManifestError)):
        _stream_manifest(blob)
    strict = _outcome(_decode_strict, blob)
    assert _outcome(decode_manifest, blob) == strict
    return strict


def test_the_sample_is_read_by_the_fast_path() -> None:
    raw = _text()
    blob = zstandard.ZstdCompressor().compress(raw)
    assert _outcome(_stream_manifest, blob) == _outcome(_decode_strict, blob)


def _edit(old: bytes, new: bytes) -> bytes:
    raw = _text()
    assert raw.count(old) == 1, old
    return raw.replace(old, new)


_ROW_D = b'[10,10,"' + D.encode() + b'"]'
_LOC_D = b'"' + D.encode() + b'":[0,10]'


@pytest.mark.parametrize(("old", "new", "expected"), [
    # the fields stay the same once the punctuation is dropped: only the layout tells
    (_ROW_D, b'[10,"10,' + D.encode() + b'"]', ("MANIFEST_SCHEMA", "files[0].chunks[1]")),
    (_ROW_D, b'[10,10,"' + D[:63].encode() + b'"d]', ("MANIFEST_CORRUPT", "manifest")),
    (_ROW_D, b'[10,10",' + D.encode() + b'"]', ("MANIFEST_CORRUPT", "manifest")),
    (_ROW_D, b'["10,10,' + D.encode() + b'"]', ("MANIFEST_SCHEMA", "files[0].chunks[1]")),
    (_LOC_D, b'"' + D.encode() + b':",[0,10]', ("MANIFEST_CORRUPT", "manifest")),
    (_LOC_D, b'"' + D.encode() + b'":[0],10', ("MANIFEST_CORRUPT", "manifest")),
    (_LOC_D, b'"' + D.encode() + b'":[0,1]0', ("MANIFEST_CORRUPT", "manifest")),
])
def test_punctuation_moved_between_fields_is_refused(old: bytes, new: bytes,
                                                     expected: tuple[str, str]) -> None:
    assert _refused_by_the_fast_path(_edit(old, new)) == ("error", *expected)


def test_ids_of_63_and_65_digits_are_refused() -> None:
    """Every id field is 64 digits, not only all of them together: one digit moved from an id
    to the next leaves the ids' digits, joined, what they were."""
    rows = _edit(b'"' + C.encode() + b'"],[10,10,"' + D.encode(),
                 b'"' + C[:63].encode() + b'"],[10,10,"c' + D.encode())
    assert _refused_by_the_fast_path(rows) == (
        "error", "MANIFEST_SCHEMA", "files[0].chunks[0].id")
    locs = _edit(b'"' + C.encode() + b'":[0,0],"' + D.encode(),
                 b'"' + C[:63].encode() + b'":[0,0],"c' + D.encode())
    assert _refused_by_the_fast_path(locs) == ("error", "MANIFEST_SCHEMA", f"chunks[{C[:63]!r}]")


# the four numbers of a chunk row and a location: what json reads as the same integer (or
# refuses) but the canonical layout never writes
_NUMBER_AT = {
    "row offset": (b'[10,10,"' + D.encode(), b'[{},10,"' + D.encode()),
    "row size": (b'[10,10,"' + D.encode(), b'[10,{},"' + D.encode()),
    "location block": (_LOC_D, b'"' + D.encode() + b'":[{},10]'),
    "location offset": (_LOC_D, b'"' + D.encode() + b'":[0,{}]'),
}
_SPELLINGS = [b" 10", b"10 ", b"+10", b"1_0", b"010", b"10.0", b"1e1", b"", b"-10", b"\xd9\xa1"]


@pytest.mark.parametrize("where", sorted(_NUMBER_AT))
@pytest.mark.parametrize("spelling", _SPELLINGS)
def test_numbers_spelled_otherwise_go_to_the_strict_loader(where: str, spelling: bytes) -> None:
    old, template = _NUMBER_AT[where]
    value = spelling.replace(b"10", b"0") if where == "location block" else spelling
    outcome = _refused_by_the_fast_path(_edit(old, template.replace(b"{}", value)))
    if value.strip() in (b"10", b"0", b"-0") and value != b"+0":
        # whitespace around a number is valid JSON, and so is -0: the same manifest
        assert outcome == _outcome(_decode_strict, zstandard.ZstdCompressor().compress(_text()))
    else:
        assert outcome[0] == "error"


# --- a document in one piece has its locations read first ---------------------------------


def test_the_locations_are_the_documents_last_chunks_member() -> None:
    """A document in one piece has its locations read first, from the last ',"chunks":{' on:
    that text elsewhere (a launch entry's extra member: valid, ignored) leaves the same
    manifest; after the locations (another member, or a second "chunks", whose value JSON
    keeps) the fast path refuses it and the strict loader decides."""
    raw = _text()
    launch = _edit(b'"launch":[]', b'"launch":[{"name":"x","executable":"a","arguments":[],'
                   b'"working_dir":"","chunks":{}}]')
    blob = zstandard.ZstdCompressor().compress(launch)
    fast = _outcome(_stream_manifest, blob)
    assert fast[0] == "ok" and fast == _outcome(_decode_strict, blob)
    locations = raw[raw.rindex(b',"chunks":{') : -1]
    same = _outcome(_decode_strict, zstandard.ZstdCompressor().compress(raw))
    assert same[0] == "ok"
    # other valid locations of the same chunks: the strict loader keeps the first member's
    swapped = locations[11:].replace(b"[0,0]", b"[0,x]").replace(b"[0,20]", b"[0,0]") \
        .replace(b"[0,x]", b"[0,20]")
    assert swapped != locations[11:]
    for tail in (b',"extra":{"chunks":{}}}', b',"extra":{"chunks":{' + locations[11:] + b"}}",
                 b',"extra":{"chunks":{' + swapped + b"}}", locations + b"}"):
        assert _refused_by_the_fast_path(raw[:-1] + tail) == same
    assert _refused_by_the_fast_path(raw.replace(b',"chunks":{', b',"chunks" :{')) == same
    assert _refused_by_the_fast_path(raw.replace(b',"chunks":{', b',"chunks":{}, "y":{'))[0] == \
        "error"


_FUZZ_EDITS = [b",", b"", b" ", b"]", b"[", b"}", b"{", b":", b'"', b"0", b"00", b"A", b"f", b"-",
               b',"chunks":{', b',"chunks":{}', b'"chunks":[', b'],"', b'"],[', b'":[',
               b',"x":{"chunks":{}}', b"4294967296"]


def test_edits_around_the_chunks_members_agree_with_the_strict_loader() -> None:
    """A seeded differential fuzz of edits near every '"chunks"' (the files' rows and the
    locations, read first in a document in one piece), before the document's end, and
    anywhere, in documents with and without their size in the frame header: the same
    manifest or the same error code and field both ways, and what the fast path accepts is
    what the strict loader makes of it."""
    rnd = Random(2511)
    ids = [rnd.randbytes(32).hex() for _ in range(24)]
    files = tuple(FileEntry(f"d/f{i}", 40, 0o644, "e3" * 32, tuple(
        ChunkEntry(10 * j, 10, ids[(3 * i + j) % 24]) for j in range(4))) for i in range(8))
    m = Manifest("p", "1", files, (Block("a" * 64, 0, 120, 120, Codec.RAW),
                                   Block("b" * 64, 120, 50, 120, Codec.ZSTD)),
                 {cid: ChunkLocation(i % 2, 10 * (i // 2)) for i, cid in enumerate(ids)})
    texts = [manifest_to_json(m), _text()]
    fast_ok = refused = 0
    for i in range(1500):
        raw = rnd.choice(texts)
        for _ in range(rnd.choice((1, 1, 2))):
            where = rnd.random()
            if where < 0.4:
                at = rnd.choice([h.start() for h in re.finditer(rb'"chunks"', raw)] or [0])
                at += rnd.randrange(-3, 14)
            elif where < 0.6:
                at = len(raw) - rnd.randrange(1, 40)
            else:
                at = rnd.randrange(len(raw))
            at = max(0, min(at, len(raw) - 1))
            raw = raw[:at] + rnd.choice(_FUZZ_EDITS) + raw[at + rnd.choice((0, 1, 1, 2)) :]
        blob = zstandard.ZstdCompressor(write_content_size=i % 2 == 0).compress(raw)
        strict = _outcome(_decode_strict, blob)
        assert _outcome(decode_manifest, blob) == strict, raw
        try:
            fast = _stream_manifest(blob)
        except (_NotCanonical, ManifestError):
            refused += 1
        else:
            assert ("ok", manifest_to_dict(fast)) == strict, raw
            fast_ok += 1
    assert fast_ok >= 10 and refused > 1000  # both kinds of outcome were compared


# --- the two linkers -------------------------------------------------------------------------


def _inputs(m: Manifest) -> tuple[bytearray, array[int], bytes]:
    """What ``_link`` reads: the sorted unique ids, the rows' sizes, the rows' ids."""
    t = m.table()
    row_ids = b"".join(t.ids[32 * u : 32 * u + 32] for u in t.row_chunk)
    return bytearray(t.ids), array("I", t.row_size), row_ids


def _hex(raw: bytes | bytearray) -> list[bytes]:
    return [raw[i : i + 32].hex().encode() for i in range(0, len(raw), 32)]


def _both(ids: bytearray, row_size: array[int], row_ids: bytes) -> tuple[Any, ...]:
    """The small linker (dicts over the ids' hex text) and the large one (bisect over the
    arrays): the same rows' chunks and chunks' sizes, or both refuse."""
    def small() -> tuple[array[int], array[int]]:
        return _link_small(_hex(ids), _hex(row_ids), row_size)

    def large() -> tuple[array[int], array[int]]:
        return _link_large(ids, _keys(ids), row_size, bytearray(row_ids))

    outcomes: list[tuple[Any, ...]] = []
    for link in (small, large):
        try:
            row_chunk, size = link()
        except _NotCanonical:
            outcomes.append(("refused",))
        else:
            outcomes.append(("ok", row_chunk.tolist(), size.tolist()))
    assert outcomes[0] == outcomes[1]
    return outcomes[0]


def _sample() -> Manifest:
    return decode_manifest(zstandard.ZstdCompressor().compress(_text()))


def test_both_linkers_give_the_decoded_table() -> None:
    m = _sample()
    t = m.table()
    assert _both(*_inputs(m)) == ("ok", t.row_chunk.tolist(), t.size.tolist())
    assert t.row_chunk.tolist() == [0, 1, 2, 1] and t.size.tolist() == [10, 10, 10]


def test_both_linkers_keep_the_last_rows_size() -> None:
    ids, row_size, row_ids = _inputs(_sample())
    row_size[3] = 7  # the second row of chunk D: its size is the chunk's
    assert _both(ids, row_size, row_ids) == ("ok", [0, 1, 2, 1], [10, 7, 10])


def test_both_linkers_refuse_a_row_without_a_location_and_an_unused_location() -> None:
    ids, row_size, row_ids = _inputs(_sample())
    assert _both(ids, row_size, row_ids[:-1] + b"\xff") == ("refused",)  # shares D's first bytes
    assert _both(ids, row_size, b"\x00" * 32 + row_ids[32:]) == ("refused",)  # before every id
    assert _both(ids, row_size, row_ids[:-32] + b"\xff" * 32) == ("refused",)  # after every id
    unused = bytearray(ids[:32] + b"\xdd" + b"\x00" * 31 + ids[32:])  # sorted between C and D
    assert _both(unused, row_size, row_ids) == ("refused",)
    assert _both(bytearray(), array("I"), b"") == ("ok", [], [])
    assert _both(bytearray(), row_size[:1], row_ids[:32]) == ("refused",)


def test_both_linkers_tell_apart_ids_sharing_their_first_8_bytes() -> None:
    prefix = bytes(range(8))
    ids = bytearray(b"".join(prefix + bytes([i]) * 24 for i in (1, 2, 3)))
    row_ids = ids[64:96] + ids[0:32] + ids[32:64] + ids[0:32]
    assert _both(ids, array("I", [4, 5, 6, 7]), bytes(row_ids)) == (
        "ok", [2, 0, 1, 0], [7, 6, 4])
    assert _both(ids, array("I", [4, 5, 6]), bytes(row_ids[:64]) + prefix + b"\x09" * 24) == (
        "refused",)


def test_a_manifest_of_many_chunks_decodes_the_same_both_ways() -> None:
    """A few thousand chunks in a few files spread over several windows: the fast path (rows
    split a window at a time) gives what the strict loader gives."""
    ids = [f"{i:016x}" * 4 for i in range(1, 6001)]
    files = tuple(
        FileEntry(f"data/f{k}", 3000 * 7, 0o644, "e3" * 32,
                  tuple(ChunkEntry(7 * j, 7, ids[3000 * k + j]) for j in range(3000)))
        for k in range(2))
    blocks = tuple(Block(f"{b:064x}", b << 20, 1 << 20, 1 << 20, Codec.RAW) for b in range(6))
    m = Manifest("p", "1", files, blocks, {cid: ChunkLocation(i // 1000, 7 * (i % 1000))
                                          for i, cid in enumerate(ids)})
    blob = encode_manifest(m)
    fast = _stream_manifest(blob)
    assert fast == m and manifest_to_dict(fast) == manifest_to_dict(_decode_strict(blob))


def test_rows_are_bisected_within_their_12_bit_range() -> None:
    """``_bisect_rows`` finds what a bisect over all the keys finds, for keys at the edges of
    the 12-bit ranges, keys no id has, and keys past the last one."""
    edges = [0, 1, (1 << 52) - 1, 1 << 52, (1 << 52) + 1, 5 << 52, (5 << 52) + 7,
             (4095 << 52) - 1, 4095 << 52, (1 << 64) - 2]
    ids = bytearray(b"".join(k.to_bytes(8, "big") + bytes(24) for k in edges))
    keys = _keys(ids)
    probes = [*edges, 2, 3 << 52, (5 << 52) + 3, (1 << 64) - 1, (2 << 52) - 1]
    row_ids = bytearray(b"".join(k.to_bytes(8, "big") + b"\x01" * 24 for k in probes))
    assert _bisect_rows(keys, row_ids).tolist() == [bisect_left(keys, k) for k in probes]
    assert _bisect_rows(_keys(bytearray()), row_ids).tolist() == [0] * len(probes)
    assert _bisect_rows(keys, bytearray()).tolist() == []


def test_a_frame_without_its_size_is_read_a_window_at_a_time() -> None:
    """Without the size in the frame header the document is not decompressed in one piece but
    streamed (256 KiB windows): the same manifest, and extra bytes after the frame refused."""
    ids = [f"{i:016x}" * 4 for i in range(1, 8001)]
    m = Manifest("p", "1", (FileEntry("data/f", 8000 * 7, 0o644, "e3" * 32, tuple(
        ChunkEntry(7 * j, 7, cid) for j, cid in enumerate(ids))),),
        (Block("a" * 64, 0, 1 << 20, 1 << 20, Codec.RAW),),
        {cid: ChunkLocation(0, 7 * i) for i, cid in enumerate(ids)})
    raw = manifest_to_json(m)
    assert len(raw) > 4 * 256 * 1024
    blob = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    assert zstandard.get_frame_parameters(blob).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert _stream_manifest(blob) == m
    for tail in (blob, b"x"):
        assert _outcome(decode_manifest, blob + tail) == _outcome(_decode_strict, blob + tail)


def test_a_streamed_document_is_linked_by_bisect() -> None:
    """A document past 4 MiB is streamed: its rows' ids are kept as raw bytes, not as text, and
    linked by bisect, here seven chunks named 70,000 times in two files (5.6 MB of JSON)."""
    ids = [f"{i:02x}" * 32 for i in (9, 3, 7, 1, 5, 2, 8)]
    files = tuple(
        FileEntry(f"f{k}", 35_000, 0o644, "e3" * 32,
                  tuple(ChunkEntry(j, 1, ids[(j + k) % 7]) for j in range(35_000)))
        for k in range(2))
    m = Manifest("p", "1", files, (Block("a" * 64, 0, 7, 7, Codec.RAW),),
                 {cid: ChunkLocation(0, i) for i, cid in enumerate(sorted(ids))})
    blob = encode_manifest(m)
    assert zstandard.get_frame_parameters(blob).content_size > 4 * 1024 * 1024
    fast = _stream_manifest(blob)
    assert fast.table().row_chunk.tolist()[:8] == [6, 2, 4, 0, 3, 1, 5, 6]
    assert manifest_to_dict(fast) == manifest_to_dict(_decode_strict(blob))


def test_ids_sharing_their_first_8_bytes_are_linked_and_found_by_bisection() -> None:
    """Ids that share their first 8 bytes (never from BLAKE3, but a document may hold any) are
    told apart by bisection over the whole id within their group: 20,000 of them named in
    reverse order link as the strict loader links them, and the table finds each (a walk
    over the group took K² steps: minutes here, days within the size budget)."""
    k = 20_000
    ids = ["00" * 8 + f"{i:048x}" for i in range(k)]
    m = Manifest("p", "1", (FileEntry("a", k, 0o644, "e3" * 32, tuple(
        ChunkEntry(j, 1, ids[k - 1 - j]) for j in range(k))),),
        (Block("a" * 64, 0, k, k, Codec.RAW),),
        {cid: ChunkLocation(0, i) for i, cid in enumerate(ids)})
    blob = zstandard.ZstdCompressor(write_content_size=False).compress(manifest_to_json(m))
    fast = decode_manifest(blob)  # no content size: streamed, linked by bisect
    assert manifest_to_dict(fast) == manifest_to_dict(_decode_strict(blob))
    table = fast.table()
    assert table.row_chunk.tolist()[:3] == [k - 1, k - 2, k - 3]
    assert [table.find(ids[i]) for i in (0, 1, 7_777, k - 1)] == [0, 1, 7_777, k - 1]
    missing = "00" * 8 + f"{k:048x}"  # in the group's range, not in it
    assert [table.find(missing), table.find(ids[10].upper()), table.find("zz" * 32)] == [-1] * 3


# --- grouping (the planner's by_block and rows_of) -------------------------------------------


def _reference_group(keys: array[int], n: int) -> tuple[array[int], array[int]]:
    """The counting sort over arrays that ``_group`` replaced, kept as its reference."""
    start = array("I", bytes(4 * (n + 1)))
    for k in keys:
        start[k + 1] += 1
    for k in range(n):
        start[k + 1] += start[k]
    fill = array("I", start)
    order = array("I", bytes(4 * len(keys)))
    for i, k in enumerate(keys):
        order[fill[k]] = i
        fill[k] += 1
    return start, order


def _reference_by_block(t: ChunkTable) -> tuple[array[int], array[int]]:
    nblocks = (max(t.block) + 1) if len(t.block) else 0
    start, order = _reference_group(t.block, nblocks)
    for b in range(nblocks):
        lo, hi = start[b], start[b + 1]
        if hi - lo > 1:
            order[lo:hi] = array("I", sorted(order[lo:hi], key=t.block_offset.__getitem__))
    return start, order


def _random_table(rng: Random, n: int, rows: int, nblocks: int, offsets: int,
                  in_block_order: bool) -> ChunkTable:
    """``n`` chunks in ``nblocks`` blocks at offsets below ``offsets`` (equal ones too), named
    by ``rows`` rows; with ``in_block_order`` the rows name the chunks first in their (block,
    offset) order, as the publisher writes them."""
    block = array("I", (rng.randrange(nblocks) for _ in range(n)))
    block_offset = array("I", (rng.randrange(offsets) for _ in range(n)))
    chunks = list(range(n))
    if in_block_order:
        chunks.sort(key=lambda u: (block[u], block_offset[u]))
    else:
        rng.shuffle(chunks)
    named = chunks + [rng.randrange(n) for _ in range(rows - n)] if n else []
    if in_block_order:  # repeats after the first rows, so the first-row order is kept
        named = chunks + sorted(named[n:], key=lambda _: rng.random())
    row_chunk = array("I", named)
    ids = bytes(rng.randrange(256) for _ in range(32 * n))
    return ChunkTable(ids, block, block_offset, array("I", [1] * n),
                      array("Q", range(len(row_chunk))), array("I", [1] * len(row_chunk)),
                      row_chunk, array("I", bytes(4 * len(row_chunk))))


def test_grouping_equals_the_counting_sort() -> None:
    """``_group``, ``rows_of`` and ``by_block`` give the arrays the counting sort over arrays
    gave (order by key, then index; by_block by block, then offset, then index) on random
    tables: empty, one chunk, repeated keys, equal and unsorted offsets, rows in the
    publisher's order (by_block's shortcut) and in any order (its sort)."""
    rng = Random(25)
    assert _group(array("I"), 0) == (array("I", [0]), array("I"))
    assert _group(array("I"), 3) == (array("I", [0, 0, 0, 0]), array("I"))
    assert _group(array("I", [2, 0, 2, 2, 0]), 4) == (
        array("I", [0, 2, 2, 5, 5]), array("I", [1, 4, 0, 2, 3]))
    for case in range(300):
        keys = array("I", (rng.randrange(1 + case % 17) for _ in range(rng.randrange(40))))
        n = (max(keys) + 1 if keys else 0) + rng.randrange(3)
        assert _group(keys, n) == _reference_group(keys, n)
    shortcut = fallback = 0
    for case in range(400):
        n = [0, 1, 2][case] if case < 3 else rng.randrange(1, 60)
        t = _random_table(rng, n, n + rng.randrange(n + 1), 1 + rng.randrange(max(n, 1)),
                          [1, 3, 1 << 24][case % 3], in_block_order=case % 2 == 1)
        assert t.by_block() == _reference_by_block(t), case
        assert t.rows_of() == _reference_group(t.row_chunk, len(t.block)), case
        firsts = list(dict.fromkeys(t.row_chunk))
        if firsts == list(t.by_block()[1]) and len(firsts) == len(t):
            shortcut += 1
        else:
            fallback += 1
    assert shortcut > 50 and fallback > 50  # both of by_block's ways were compared
