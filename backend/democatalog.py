"""Deterministic demo catalog: realistic game build folders in several versions.

``generate(dest, size_mb=8, seed=1)`` writes ``dest/<product_id>/<version>/`` (one complete build
folder per version) for two products and returns their descriptions:

* ``star-courier``: the main product, versions 1.0.0, 1.1.0, 1.2.0 and 2.0.0; one version weighs
  about ``size_mb`` MiB.
* ``tiny-tactics``: a small product (about ``size_mb / 8``), versions 1.0.0 and 1.0.1.

A build contains packed asset files (``data/*.pak``: random blobs that stand for already-compressed
textures/audio mixed with text-like record tables that compress about 3x), an executable-like
binary (``bin/<product_id>``: pseudo machine code full of relative calls and absolute addresses,
so inserting functions near the start changes bytes every few KB over the whole file), a few
shared-library-like files (``lib/**/*.so``), an incompressible movie, hundreds of small text files
(ini, lua, glsl, locale strings, docs; one empty file, one duplicate, one name with a space), an
empty ``mods/`` directory, a runnable ``game.py`` (stdlib-only Python 3) and
``launcher-build.json``.
Successive versions change the builds the way real patches do (in-place edits, insertions and
appends inside paks, recompiled binaries, edited/added/removed/renamed files); the exact changes of
each version are listed in the ``_star_courier_plan`` / ``_tiny_tactics_plan`` docstrings.

Everything derives from ``(product, seed, content key)`` through hash-seeded streams, so the same
arguments always give byte-identical files (mtimes are fixed as well). Only the standard library is
used. A finished product is marked by ``dest/<product_id>/.generated-<size_mb>-<seed>``; calling
``generate`` again with the same arguments then returns at once, while different arguments rebuild
the product's version folders (``dest/<product_id>/.lock`` serialises concurrent generators).
Unchanged files are copied from the previous version instead of being generated again, and large
catalogs are written by a small process pool: 300 MiB (about 1.3 GB over all versions) takes a few
seconds on two cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import multiprocessing.context
import os
import random
import re
import shutil
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, TypeAlias

__all__ = ["ACHIEVEMENTS", "GENERATOR_VERSION", "LAUNCHER_BUILD", "DemoProduct", "describe",
           "generate", "marker_name"]

GENERATOR_VERSION = 2  # 2: the demo game reports achievements
MIB = 1024 * 1024

# Fixed modification times (one per version index) so that archives of builds are reproducible too.
_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z
_VERSION_STEP = 30 * 86_400
# Above this much content per catalog, heavy files are written by a process pool.
_PARALLEL_THRESHOLD = 48 * MIB


@dataclass(frozen=True)
class DemoProduct:
    """One generated product: its build folders are ``dest/<product_id>/<version>/``."""

    product_id: str
    title: str
    versions: tuple[str, ...]


def marker_name(size_mb: float, seed: int) -> str:
    """Name of the marker file that says a product was fully generated with these arguments."""
    return f".generated-{size_mb:g}-{seed}"


# --------------------------------------------------------------------------------------------
# Deterministic randomness
# --------------------------------------------------------------------------------------------


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).digest()


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(_digest(*parts), "big"))


def _randbytes(rng: random.Random, n: int) -> bytes:
    """Random bytes in 1 MiB pieces (much faster than one huge ``randbytes`` call)."""
    if n <= MIB:
        return rng.randbytes(n)
    return b"".join(rng.randbytes(min(MIB, n - i)) for i in range(0, n, MIB))


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_NOUNS = _words(
    "cargo courier station nebula pilot hull thruster shield reactor beacon convoy freighter "
    "outpost asteroid relay drone pirate patrol dock hangar engine warp orbit sector signal "
    "contract bounty salvage market fuel crate manifest route jump gate colony miner scanner "
    "turret cannon missile radar comet moon planet trader smuggler guild faction mission "
    "waypoint cockpit airlock module battery coolant plasma vector target squad tactic unit "
    "tile grid turn archer knight wizard castle banner scout siege wall tower"
)
_VERBS = _words(
    "update spawn load unload dock undock scan jump fire repair refuel trade deliver escort "
    "patrol attack defend evade track render animate play stop reset apply compute resolve "
    "select move rotate build destroy collect reward notify save restore init shutdown"
)
_ADJS = _words(
    "red blue dark bright heavy light fast slow old new rusty shiny hidden stellar orbital "
    "deep far near frozen burning silent loud ancient modern small large"
)
_KATAKANA = [chr(c) for c in range(0x30A2, 0x30F3)]


def _ident(rng: random.Random, parts: int = 2) -> str:
    words = [rng.choice(_VERBS)] + [rng.choice(_NOUNS) for _ in range(parts - 1)]
    return "_".join(words)


def _sentence(rng: random.Random, lo: int = 4, hi: int = 12) -> str:
    words = [rng.choice(_ADJS + _NOUNS + _VERBS) for _ in range(rng.randint(lo, hi))]
    return (" ".join(words)).capitalize() + "."


# --------------------------------------------------------------------------------------------
# Text-like record tables (compress about 3x) built column-wise with bytes.translate
# --------------------------------------------------------------------------------------------

_ALPHABETS = {
    "h": b"0123456789abcdef",
    "d": b"0123456789",
    "a": b"abcdefghijklmnopqrstuvwxyz",
    "A": b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_",
    "s": b"+-",
}
_ENUMS = {
    "ENT": ("ship", "station", "crate", "asteroid", "drone", "beacon", "turret", "gate"),
    "TEAM": ("neutral", "player", "pirates", "guild", "police"),
    "MESH": ("hull", "wing", "rock", "dock", "fins", "mast", "pods", "keel"),
    "MAT": ("steel", "glass", "stone", "frost", "paint", "alloy", "resin"),
    "WID": ("button", "slider", "labels", "panels", "images", "toggle"),
    "ANCH": ("tl", "tr", "bl", "br", "cc"),
    "SND": ("sfx", "bgm", "vox", "amb"),
    "SYS": ("net", "render", "audio", "save", "physics", "script", "input"),
}


@dataclass(frozen=True)
class _Template:
    pattern: bytes
    # Each group shares one random byte per record; (column, translate table) per byte it drives.
    groups: tuple[tuple[tuple[int, bytes], ...], ...]


def _compile_template(spec: str) -> _Template:
    out = bytearray()
    groups: list[tuple[tuple[int, bytes], ...]] = []
    spec = spec.replace("{{", "\x01").replace("}}", "\x02")  # escaped literal braces
    for lit, fld in re.findall(r"([^{]*)(?:\{([^}]*)\})?", spec):
        out += lit.replace("\x01", "{").replace("\x02", "}").encode()
        if not fld:
            continue
        if fld.startswith("e:"):
            words = _ENUMS[fld[2:]]
            width = max(len(w) for w in words)
            padded = [w.ljust(width).encode() for w in words]
            cols = []
            for j in range(width):
                table = bytes(padded[b * len(padded) // 256][j] for b in range(256))
                cols.append((len(out) + j, table))
            groups.append(tuple(cols))
            out += b" " * width
            continue
        alphabet = _ALPHABETS[fld[0]]
        width = int(fld[1:] or 1)
        table = bytes(alphabet[b * len(alphabet) // 256] for b in range(256))
        for j in range(width):
            groups.append(((len(out) + j, table),))
        out += b"?" * width
    return _Template(bytes(out), tuple(groups))


_TEMPLATES = tuple(
    _compile_template(s)
    for s in (
        "ent {h6} class={e:ENT} pos={s}{d4}.{d2},{s}{d4}.{d2},{s}{d3}.{d2} rot={d3} "
        "hp={d3} team={e:TEAM} flags=0x{h6}\n",
        '{{"id":"{h10}","mesh":"meshes/{e:MESH}_{d3}.msh","lod":{d1},"bounds":[{d4},{d4},{d4}],'
        '"material":"{e:MAT}","tint":"#{h6}"}}\n',
        '<widget id="{a7}" type="{e:WID}" x="{d4}" y="{d4}" w="{d3}" h="{d3}" '
        'anchor="{e:ANCH}" text="@{A9}"/>\n',
        "{e:SND}/{a6}_{d3}.ogg;vol={d2};pitch={d1}.{d2};loop={d1};crc={h8}\n",
    )
)
_RODATA_TEMPLATE = _compile_template(
    "[{e:SYS}] {A8}: failed to {a6} '%s' (code 0x{h4}, line %d)\0sc_{a5}_{a7}\0"
)


def _table_bytes(template: _Template, n: int, rng: random.Random) -> bytes:
    width = len(template.pattern)
    count = n // width + 1
    buf = bytearray(template.pattern * count)
    for group in template.groups:
        column = rng.randbytes(count)
        for pos, table in group:
            buf[pos::width] = column.translate(table)
    del buf[n:]
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# File specifications (hashable, so unchanged files are recognised between versions)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    data: bytes
    executable: bool = False


@dataclass(frozen=True)
class _Text:
    kind: str  # lua | ini | glsl | strings | doc
    key: str
    rev: int = 0
    lang: str = ""


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: str  # blob | table
    size: int
    key: str
    edits: tuple[int, ...] = ()  # in-place edit revisions, applied in order


@dataclass(frozen=True)
class _Pak:
    key: str
    entries: tuple[_Entry, ...]


@dataclass(frozen=True)
class _Blob:
    key: str
    size: int
    magic: bytes = b""


@dataclass(frozen=True)
class _Binary:
    key: str
    funcs: tuple[tuple[int, int], ...]  # (function id, revision) in layout order
    n_base: int  # call targets are drawn from function ids [0, n_base)
    n_hot: int  # ids [0, n_hot) are "runtime helpers" called from everywhere
    rodata: tuple[int, ...]  # sizes of string-table segments
    shared: bool = False


_Spec: TypeAlias = _Raw | _Text | _Pak | _Blob | _Binary
_Build: TypeAlias = dict[str, _Spec]


def _is_executable(spec: _Spec) -> bool:
    return isinstance(spec, _Binary) or (isinstance(spec, _Raw) and spec.executable)


# --------------------------------------------------------------------------------------------
# Text files
# --------------------------------------------------------------------------------------------

_COMMENT = {"lua": "--", "ini": ";", "glsl": "//", "strings": "#", "doc": ">"}


def _gen_lua(rng: random.Random) -> list[str]:
    mod = _ident(rng, 2)
    lines = [
        f"-- {mod}.lua: {_sentence(rng)}",
        "-- Star Courier gameplay script. Hot-reloadable; keep functions pure where possible.",
        "",
        'local log = require("core.log")',
        f'local {rng.choice(_NOUNS)} = require("{rng.choice(_NOUNS)}.{rng.choice(_NOUNS)}")',
        "",
        "local M = {}",
        "",
        "M.config = {",
    ]
    for _ in range(rng.randint(2, 8)):
        lines.append(f"  {rng.choice(_ADJS)}_{rng.choice(_NOUNS)} = {rng.randint(0, 5000) / 10},")
    lines += ["}", ""]
    for _ in range(rng.randint(1, 5)):
        noun, other = rng.choice(_NOUNS), rng.choice(_NOUNS)
        lines.append(f"function M.{_ident(rng, 2)}(self, {noun}, dt)")
        lines.append(f"  local {other} = self.{other} or {rng.randint(0, 999)}")
        for _ in range(rng.randint(1, 4)):
            pick = rng.randrange(4)
            if pick == 0:
                lines += [
                    f"  if {noun} and {noun}.{rng.choice(_NOUNS)} > {rng.randint(1, 900)} then",
                    f'    self:{rng.choice(_VERBS)}("{rng.choice(_NOUNS)}", {rng.random():.3f})',
                    "  end",
                ]
            elif pick == 1:
                lines.append(f"  {other} = {other} + dt * M.config.{rng.choice(_NOUNS)}_rate")
            elif pick == 2:
                lines.append(f'  log.debug("{_sentence(rng, 2, 6)}", {other})')
            else:
                lines += [
                    f"  for i = 1, {rng.randint(2, 64)} do",
                    f"    {noun}:{rng.choice(_VERBS)}(i, {other})",
                    "  end",
                ]
        lines += [f"  return {other}", "end", ""]
    lines.append("return M")
    return lines


def _gen_ini(rng: random.Random) -> list[str]:
    lines = [f"; {_sentence(rng)}", ""]
    for _ in range(rng.randint(1, 4)):
        lines.append(f"[{rng.choice(_NOUNS).capitalize()}{rng.choice(_NOUNS).capitalize()}]")
        for _ in range(rng.randint(2, 9)):
            value: object
            pick = rng.randrange(4)
            if pick == 0:
                value = rng.randint(0, 10000)
            elif pick == 1:
                value = f"{rng.random() * 100:.2f}"
            elif pick == 2:
                value = rng.choice(("true", "false"))
            else:
                value = rng.choice(_ADJS)
            lines.append(f"{rng.choice(_ADJS)}{rng.choice(_NOUNS).capitalize()}={value}")
        lines.append("")
    return lines


def _gen_glsl(rng: random.Random) -> list[str]:
    lines = [
        "#version 330 core",
        f"// {_sentence(rng)}",
        "in vec2 v_uv;",
        "out vec4 frag_color;",
        "uniform sampler2D u_albedo;",
    ]
    for _ in range(rng.randint(1, 5)):
        lines.append(f"uniform float u_{rng.choice(_NOUNS)}_{rng.choice(_ADJS)};")
    lines += ["", "void main() {", "    vec4 c = texture(u_albedo, v_uv);"]
    for _ in range(rng.randint(2, 10)):
        lines.append(
            f"    c.{rng.choice('rgb')} *= {rng.random() * 2:.4f} + "
            f"{rng.random():.3f} * v_uv.{rng.choice('xy')};"
        )
    lines += ["    frag_color = c;", "}"]
    return lines


def _translate_word(word: str, lang: str, rng: random.Random) -> str:
    if lang == "ja":
        return "".join(rng.choice(_KATAKANA) for _ in range(max(2, len(word) // 2)))
    suffix = {"de": "en", "fr": "e", "es": "o", "pt-BR": "ão", "it": "a"}.get(lang, "")
    return word + suffix


def _gen_strings(key: str, lang: str) -> list[str]:
    base = _rng(key, "strings")
    lines = [f"# Localised strings ({lang or 'en'}); KEY = text", ""]
    tr = _rng(key, "strings", lang)
    for _ in range(base.randint(120, 220)):
        ident = f"{base.choice(_NOUNS)}_{base.choice(_VERBS)}_{base.randrange(1000):03d}".upper()
        words = _sentence(base, 2, 9).rstrip(".").split()
        if lang not in ("", "en", "en-GB"):
            words = [_translate_word(w, lang, tr) for w in words]
        lines.append(f'{ident} = "{" ".join(words)}"')
    return lines


def _gen_doc(rng: random.Random) -> list[str]:
    lines: list[str] = []
    for _ in range(rng.randint(3, 8)):
        lines += [" ".join(_sentence(rng) for _ in range(rng.randint(2, 5))), ""]
    return lines


def _edit_lines(lines: list[str], kind: str, key: str, rev: int) -> list[str]:
    """Apply ``rev`` successive small edits; each revision differs a little from the previous."""
    lines = list(lines)
    for r in range(1, rev + 1):
        rng = _rng(key, "edit", r)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines))
            if re.search(r"\d", lines[i]):
                lines[i] = re.sub(r"\d+", str(rng.randint(0, 999)), lines[i], count=1)
            else:
                lines[i] = f"{lines[i]} {_COMMENT[kind]} r{r}" if lines[i] else lines[i]
        if rng.random() < 0.6:
            at = rng.randrange(len(lines) + 1)
            lines.insert(at, f"{_COMMENT[kind]} patch {r}: {_sentence(rng, 3, 8)}")
    return lines


@lru_cache(maxsize=8192)
def _render_text(spec: _Text) -> bytes:
    rng = _rng(spec.key, spec.kind)
    if spec.kind == "lua":
        lines = _gen_lua(rng)
    elif spec.kind == "ini":
        lines = _gen_ini(rng)
    elif spec.kind == "glsl":
        lines = _gen_glsl(rng)
    elif spec.kind == "strings":
        lines = _gen_strings(spec.key, spec.lang)
    elif spec.kind == "doc":
        lines = _gen_doc(rng)
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown text kind {spec.kind!r}")
    return ("\n".join(_edit_lines(lines, spec.kind, spec.key, spec.rev)) + "\n").encode()


# --------------------------------------------------------------------------------------------
# Packed asset files
# --------------------------------------------------------------------------------------------

_PAK_MAGIC = b"SCPAK\x00\x02\x00"
_PAK_HEADER = struct.Struct("<8sIIQQ32s")  # magic, count, flags, toc offset, toc size, pak id
_BLOB_MAGIC = {".dds": b"DDS |", ".ogg": b"OggS\x00\x02", ".bnk": b"BKHD", ".mdl": b"MDL2"}


def _entry_bytes(entry: _Entry) -> bytes:
    rng = _rng(entry.key, "data")
    ext = os.path.splitext(entry.name)[1]
    template = _TEMPLATES[_digest(entry.key)[0] % len(_TEMPLATES)]
    if entry.kind == "blob":
        dims = struct.pack("<II", entry.size, 1 << (8 + rng.randrange(5)))
        head = _BLOB_MAGIC.get(ext, b"BLOB") + dims
        data = bytearray((head + _randbytes(rng, entry.size))[: entry.size])
    else:
        data = bytearray(_table_bytes(template, entry.size, rng))
    width = len(template.pattern)
    for rev in entry.edits:
        erng = _rng(entry.key, "edit", rev)
        for _ in range(erng.randint(2, 4)):
            length = min(entry.size // 4, erng.randint(64, 4096))
            if length <= 0:
                continue
            at = erng.randrange(0, entry.size - length + 1)
            if entry.kind == "table":  # keep records aligned so the text stays well-formed
                at -= at % width
                length = max(width, length - length % width)
                if at + length > entry.size:
                    continue
                data[at : at + length] = _table_bytes(template, length, erng)
            else:
                data[at : at + length] = erng.randbytes(length)
    return bytes(data)


def _write_pak(f: BinaryIO, pak: _Pak) -> None:
    f.write(b"\0" * _PAK_HEADER.size)
    pos = _PAK_HEADER.size
    toc = bytearray()
    for entry in pak.entries:
        pad = _align(pos, 16) - pos
        f.write(b"\0" * pad)
        pos += pad
        data = _entry_bytes(entry)
        f.write(data)
        name = entry.name.encode()
        toc += struct.pack("<H", len(name)) + name
        toc += struct.pack("<QQI", pos, len(data), zlib.crc32(data))
        pos += len(data)
    f.write(toc)
    f.seek(0)
    f.write(_PAK_HEADER.pack(_PAK_MAGIC, len(pak.entries), 0, pos, len(toc), _digest(pak.key) * 2))


def _make_entries(
    key: str, budget: int, blob_frac: float, names: Sequence[tuple[str, str]], tag: str = "base"
) -> tuple[_Entry, ...]:
    """Entries summing to ``budget`` bytes; ``names`` are (directory, extension) choices."""
    rng = _rng(key, "entries", tag)
    avg = min(2 * MIB, max(4096, budget // 40))
    entries: list[_Entry] = []
    total = 0
    while total < budget:
        size = int(avg * (0.25 + 1.5 * rng.random()))
        if budget - total - size < avg // 4:
            size = budget - total
        folder, ext = rng.choice(names)
        i = len(entries)
        name = f"{folder}/{rng.choice(_ADJS)}_{rng.choice(_NOUNS)}_{tag}{i:04d}{ext}"
        kind = "blob" if rng.random() < blob_frac else "table"
        entries.append(_Entry(name, kind, max(size, 64), f"{key}/{tag}/{i}"))
        total += size
    return tuple(entries)


# --------------------------------------------------------------------------------------------
# Executable-like binaries
# --------------------------------------------------------------------------------------------


def _opcode_table() -> bytes:
    common = {0x00: 34, 0x48: 24, 0x89: 16, 0x8B: 16, 0xFF: 9, 0x0F: 8, 0x83: 8, 0x45: 10,
              0xC7: 5, 0x44: 5, 0x24: 6, 0x85: 4, 0xC0: 6, 0x74: 4, 0x75: 4, 0x01: 5, 0x8D: 6,
              0x4C: 5, 0xE8: 3, 0x31: 3, 0xC3: 2, 0x5D: 2, 0x41: 6}  # fmt: skip
    table = [b for b, n in common.items() for _ in range(n)]
    table += [(37 * i + 11) % 256 for i in range(256 - len(table))]
    return bytes(table[:256])


_OPCODES = _opcode_table()
_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SYMBOL = struct.Struct("<QIII")
_TEXT_OFFSET = 0x1000


def _fn_size(key: str, fid: int, rev: int) -> int:
    h = zlib.crc32(f"{key}/{fid}/{rev}".encode())
    if h & 0xF < 10:
        return 24 + (h >> 4) % 256
    return 96 + (h >> 4) % 2200


def _fn_name(key: str, fid: int) -> bytes:
    h = zlib.crc32(f"{key}/name/{fid}".encode())
    verb = _VERBS[h % len(_VERBS)]
    noun = _NOUNS[(h >> 8) % len(_NOUNS)]
    return f"sc_{verb}_{noun}_{fid:x}".encode()


def _fn_body(spec: _Binary, fid: int, rev: int, addr: int, addrs: dict[int, int],
             rodata_addr: int) -> bytes:  # fmt: skip
    size = _fn_size(spec.key, fid, rev)
    raw = hashlib.shake_128(f"{spec.key}/fn/{fid}/{rev}".encode()).digest(size + size // 8 + 16)
    body = bytearray(raw[:size].translate(_OPCODES))
    ctrl = raw[size:]
    body[:4] = b"\x55\x48\x89\xe5"  # push rbp; mov rbp, rsp
    body[-2:] = b"\xc9\xc3"  # leave; ret
    fallback = addrs.get(0, addr)
    span = spec.rodata[0]
    pos, ci, limit = 4, 0, size - 12
    while ci + 5 <= len(ctrl):
        pos += 12 + ctrl[ci] % 96
        if pos > limit:
            break
        kind = ctrl[ci + 1]
        t = ctrl[ci + 2] | ctrl[ci + 3] << 8 | ctrl[ci + 4] << 16
        ci += 5
        site = addr + pos
        if kind < 5:  # movabs rax, imm64: absolute address of a string
            struct.pack_into("<HQ", body, pos, 0xB848, rodata_addr + t % span)
        elif kind < 10:  # call a hot runtime helper (rel32)
            target = addrs.get(t % spec.n_hot, fallback)
            struct.pack_into("<Bi", body, pos, 0xE8, target - (site + 5))
        elif kind < 40:  # lea rax, [rip + rel32]: a string, relative
            rel = rodata_addr + t % span - (site + 7)
            struct.pack_into("<3si", body, pos, b"\x48\x8d\x05", rel)
        elif kind < 200:  # call any function (rel32)
            target = addrs.get(t * spec.n_base >> 24, fallback)
            struct.pack_into("<Bi", body, pos, 0xE8, target - (site + 5))
        else:  # short local jump: position independent
            struct.pack_into("<BB", body, pos, 0xEB, t & 0x7F)
    return bytes(body)


def _write_binary(f: BinaryIO, spec: _Binary) -> None:
    base = 0 if spec.shared else 0x400000
    layout: list[tuple[int, int, int, int]] = []  # fid, rev, addr, size
    addrs: dict[int, int] = {}
    off = _TEXT_OFFSET
    for fid, rev in spec.funcs:
        size = _fn_size(spec.key, fid, rev)
        layout.append((fid, rev, base + off, size))
        addrs[fid] = base + off
        off = _align(off + size, 16)
    text_end = off
    rodata_off = _align(text_end, 4096)
    rodata_addr = base + rodata_off
    rodata = b"".join(
        _table_bytes(_RODATA_TEMPLATE, n, _rng(spec.key, "rodata", i)) for i, n in enumerate(spec.rodata)
    )
    sym_off = _align(rodata_off + len(rodata), 16)
    symbols = bytearray()
    names = bytearray(b"\0")
    for fid, _rev, addr, size in layout:
        symbols += _SYMBOL.pack(addr, size, len(names), fid)
        names += _fn_name(spec.key, fid) + b"\0"
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    entry = addrs.get(spec.n_hot, base + _TEXT_OFFSET)
    header = _ELF_HEADER.pack(
        ident, 3 if spec.shared else 2, 0x3E, 1, entry, 64, sym_off, 0, 64, 56, 0, 64, 0, 0
    )
    sections = f"text={_TEXT_OFFSET:x}:{text_end:x} rodata={rodata_off:x} symtab={sym_off:x}\n"
    f.write((header + sections.encode()).ljust(_TEXT_OFFSET, b"\0"))
    pos = _TEXT_OFFSET
    chunk: list[bytes] = []
    for fid, rev, addr, size in layout:
        chunk.append(_fn_body(spec, fid, rev, addr, addrs, rodata_addr))
        pad = _align(size, 16) - size
        chunk.append(b"\xcc" * pad)
        pos += size + pad
        if len(chunk) >= 512:
            f.write(b"".join(chunk))
            chunk.clear()
    f.write(b"".join(chunk))
    f.write(b"\0" * (rodata_off - pos) + rodata)
    f.write(b"\0" * (sym_off - rodata_off - len(rodata)) + symbols + names)


def _new_binary(key: str, size: int, shared: bool = False) -> _Binary:
    """A binary of about ``size`` bytes: 74% code, 16% strings, the rest symbols."""
    funcs: list[tuple[int, int]] = []
    text = 0
    while text < size * 0.74 - _TEXT_OFFSET or len(funcs) < 24:
        text += _align(_fn_size(key, len(funcs), 0), 16) + 20  # + symbol entry and name
        funcs.append((len(funcs), 0))
    n_hot = max(4, min(64, len(funcs) // 50))
    return _Binary(key, tuple(funcs), len(funcs), n_hot, (max(1024, int(size * 0.16)),), shared)


def _recompile(spec: _Binary, tag: str, *, insert_at: float, insert: int, modify: int,
               remove: int = 0, grow_rodata: int = 0) -> _Binary:  # fmt: skip
    """New functions inserted at ``insert_at`` (fraction of the layout, after the hot helpers),
    ``modify`` functions with a new body, ``remove`` functions dropped."""
    rng = _rng(spec.key, "recompile", tag)
    funcs = list(spec.funcs)
    protected = spec.n_hot + 1  # hot helpers and the entry point stay
    for _ in range(min(remove, len(funcs) - protected - 1)):
        del funcs[rng.randrange(protected, len(funcs))]
    for _ in range(modify):
        i = rng.randrange(protected, len(funcs))
        fid, rev = funcs[i]
        funcs[i] = (fid, rev + 1)
    at = max(protected, int(len(funcs) * insert_at))
    first_new = (1 + (int.from_bytes(_digest(tag)[:2], "big") >> 4)) << 18
    funcs[at:at] = [(first_new + j, 0) for j in range(insert)]
    rodata = spec.rodata + ((grow_rodata,) if grow_rodata else ())
    return replace(spec, funcs=tuple(funcs), rodata=rodata)


def _recompile_near_end(spec: _Binary, tag: str, modify: int) -> _Binary:
    rng = _rng(spec.key, "hotfix", tag)
    funcs = list(spec.funcs)
    n = len(funcs)
    for _ in range(modify):
        i = rng.randrange(max(spec.n_hot + 1, n - max(4, n // 20)), n)
        fid, rev = funcs[i]
        funcs[i] = (fid, rev + 1)
    return replace(spec, funcs=tuple(funcs))


# --------------------------------------------------------------------------------------------
# Incompressible blobs (movies)
# --------------------------------------------------------------------------------------------


def _write_blob(f: BinaryIO, spec: _Blob) -> None:
    rng = _rng(spec.key, "blob")
    f.write(spec.magic)
    remaining = spec.size - len(spec.magic)
    while remaining > 0:
        n = min(MIB, remaining)
        f.write(rng.randbytes(n))
        remaining -= n


# --------------------------------------------------------------------------------------------
# The demo game
# --------------------------------------------------------------------------------------------

_GAME_TEMPLATE = '''#!/usr/bin/env python3
"""__TITLE__ __VERSION__: a tiny stand-in game for the launcher demo (Python 3, stdlib only).

Usage: python3 game.py [--save-dir DIR] [--play-seconds N]
Saves go to DIR, else $LAUNCHER_SAVE_DIR, else ./saves (relative to the working directory).
Started by the launcher, it reports achievements through the launcher's local API
($LAUNCHER_API_URL with the launch's $LAUNCHER_API_TOKEN); alone, it just plays.
"""

import argparse
import json
import os
import sys
import time
import urllib.request

PRODUCT_ID = __PRODUCT_ID__
TITLE = __TITLE_JSON__
VERSION = __VERSION_JSON__
SAVE_NAME = "slot1.sav"
ACHIEVEMENTS = __ACHIEVEMENTS_JSON__  # first session, sessions played, seconds played


def report(path, body=None):
    """Tell the launcher (if it started us); a game never fails because of this."""
    url, token = os.environ.get("LAUNCHER_API_URL"), os.environ.get("LAUNCHER_API_TOKEN")
    if not url or not token:
        return None
    req = urllib.request.Request(url + path, data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


def achievements(counter, played):
    if ACHIEVEMENTS.get("first"):
        report("/v1/achievements/" + ACHIEVEMENTS["first"] + "/unlock")
    if ACHIEVEMENTS.get("sessions"):
        report("/v1/achievements/" + ACHIEVEMENTS["sessions"] + "/progress", {"current": counter})
    if ACHIEVEMENTS.get("seconds") and played >= ACHIEVEMENTS.get("seconds_needed", 60):
        report("/v1/achievements/" + ACHIEVEMENTS["seconds"] + "/unlock")


def load(path):
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def store(path, state):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=2, sort_keys=True)
        fh.write("\\n")
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="game.py", description=TITLE + " " + VERSION)
    parser.add_argument("--save-dir", default=None, help="where slot1.sav lives")
    parser.add_argument("--play-seconds", type=float, default=1.0, help="how long to play")
    args = parser.parse_args(argv)
    save_dir = args.save_dir or os.environ.get("LAUNCHER_SAVE_DIR") or "saves"
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, SAVE_NAME)
    state = load(path)
    counter = state.get("counter")
    counter = counter + 1 if isinstance(counter, int) else 1
    played = state.get("seconds_played")
    played = played if isinstance(played, (int, float)) else 0
    state.update(product=PRODUCT_ID, version=VERSION, counter=counter, seconds_played=played)
    store(path, state)  # autosave on start, so a killed session still counts
    settings = os.path.join("settings", "player.ini")
    if not os.path.exists(settings):  # the player's settings: they follow the player too
        os.makedirs("settings", exist_ok=True)
        with open(settings, "w", encoding="utf-8") as fh:
            fh.write("[video]\\nfullscreen = true\\n[audio]\\nvolume = 80\\n")
    print(f"{TITLE} {VERSION}: session {counter} started, saving to {path}", flush=True)
    achievements(counter, played)
    time.sleep(max(0.0, args.play_seconds))
    state["seconds_played"] = round(played + max(0.0, args.play_seconds), 3)
    store(path, state)
    achievements(counter, state["seconds_played"])
    print(f"{TITLE} {VERSION}: session {counter} over", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

LAUNCHER_BUILD = {
    "launch": [
        {
            "name": "Play",
            "executable": "game.py",
            "arguments": ["--play-seconds", "1"],
            "working_dir": "",
            "environment": {"GAME_LAUNCHED_BY": "game-launcher"},
        }
    ],
    # saves, and the game's own settings, which sync like saves (the seed's "game settings")
    "saves": [{"root": "install", "path": "saves", "include": ["*.sav"], "exclude": []},
              {"root": "install", "path": "settings", "include": ["*.ini"], "exclude": []}],
}


# Achievement definitions published with each demo product (``backend.achievements``); the demo
# game reports them through the launcher (ids are what the game sends).
ACHIEVEMENTS: dict[str, list[dict[str, object]]] = {
    "star-courier": [
        {"id": "first-launch", "name": "First Launch",
         "description": "Start Star Courier for the first time.", "hidden": False,
         "progress_target": None},
        {"id": "frequent-flyer", "name": "Frequent Flyer",
         "description": "Play 5 sessions.", "hidden": False, "progress_target": 5},
        {"id": "long-haul", "name": "Long Haul",
         "description": "Play for 60 seconds in total.", "hidden": True,
         "progress_target": None},
    ],
    "tiny-tactics": [
        {"id": "first-battle", "name": "First Battle",
         "description": "Start Tiny Tactics for the first time.", "hidden": False,
         "progress_target": None},
    ],
}


# which of a product's achievements the demo game reports, and when
_GAME_ACHIEVEMENTS: dict[str, dict[str, object]] = {
    "star-courier": {"first": "first-launch", "sessions": "frequent-flyer", "seconds": "long-haul",
                     "seconds_needed": 60},
    "tiny-tactics": {"first": "first-battle"},
}


def _game_py(product_id: str, title: str, version: str) -> _Raw:
    src = (
        _GAME_TEMPLATE.replace("__PRODUCT_ID__", json.dumps(product_id))
        .replace("__TITLE_JSON__", json.dumps(title))
        .replace("__VERSION_JSON__", json.dumps(version))
        .replace("__ACHIEVEMENTS_JSON__", json.dumps(_GAME_ACHIEVEMENTS.get(product_id, {})))
        .replace("__TITLE__", title)
        .replace("__VERSION__", version)
    )
    return _Raw(src.encode(), executable=True)


def _launcher_build() -> _Raw:
    return _Raw((json.dumps(LAUNCHER_BUILD, indent=2) + "\n").encode())


def _notes(title: str, versions: Sequence[str], key: str) -> _Raw:
    lines = [f"{title} release notes", ""]
    for v in reversed(versions):
        rng = _rng(key, "notes", v)
        lines.append(f"== {v} ==")
        lines += [f"* {_sentence(rng, 4, 10)}" for _ in range(rng.randint(3, 8))]
        lines.append("")
    return _Raw("\n".join(lines).encode())


# --------------------------------------------------------------------------------------------
# Version plans
# --------------------------------------------------------------------------------------------


def _text_size(build: _Build) -> int:
    total = 0
    for spec in build.values():
        if isinstance(spec, _Text):
            total += len(_render_text(spec))
        elif isinstance(spec, _Raw):
            total += len(spec.data)
    return total


def _lib_size(total: int, share: float, cap: int) -> int:
    return max(20 * 1024, min(cap, int(total * share)))


def _pick(rng: random.Random, paths: Sequence[str], n: int) -> list[str]:
    return rng.sample(sorted(paths), min(n, len(paths)))


def _bump(build: _Build, path: str) -> None:
    spec = build[path]
    assert isinstance(spec, _Text)
    build[path] = replace(spec, rev=spec.rev + 1)


def _star_courier_plan(size: int, seed: int) -> list[tuple[str, _Build]]:
    """Builds of star-courier.

    1.0.0  base: 5 paks, movie, executable, 5 libs, ~330 text files, game.py, launcher-build.json.
    1.1.0  textures.pak edited in place (same size), levels.pak gets entries inserted in the
           middle, audio.pak gets entries appended; executable recompiled (functions inserted near
           the start, a few bodies changed: every absolute address moves); 8 text files edited,
           5 added, 4 removed, 4 renamed (same content) and lib/libphysics.so moved to
           lib/plugins/; libnet.so recompiled.
    1.2.0  hotfix: a few functions near the end of the executable changed (their sizes too, so
           calls into the tail move), config/economy.ini and the release notes edited.
    2.0.0  big update: data/outer_rim.pak added, data/world.pak removed, half of ui.pak replaced,
           textures.pak edited and appended, levels.pak reshuffled; executable heavily recompiled;
           lib/libvr.so added, lib/libui.so removed, libaudio.so recompiled; scripts/vehicles/
           renamed to scripts/ships/, a new mission act and a new locale added, ~25 files edited,
           ~10 removed.
    """
    pid, title = "star-courier", "Star Courier"
    key = f"{pid}/{seed}"
    versions = ("1.0.0", "1.1.0", "1.2.0", "2.0.0")
    rng = _rng(key, "plan")
    b: _Build = {}

    # --- small files -----------------------------------------------------------------------
    b["game.py"] = _game_py(pid, title, versions[0])
    b["launcher-build.json"] = _launcher_build()
    b["README.txt"] = _Text("doc", f"{key}/readme")
    b["LICENSE.txt"] = _Text("doc", f"{key}/license")
    b["docs/Release Notes.txt"] = _notes(title, versions[:1], key)
    b["docs/modding/guide.txt"] = _Text("doc", f"{key}/modding")
    b["config/overrides.ini"] = _Raw(b"")  # an empty file
    for name in ("engine", "graphics", "audio", "input", "network", "gameplay", "ui", "economy",
                 "ships", "missions", "ai", "physics", "camera", "telemetry", "accessibility",
                 "difficulty", "controls", "hud"):  # fmt: skip
        b[f"config/{name}.ini"] = _Text("ini", f"{key}/config/{name}")
    b["config/platform/linux.ini"] = _Text("ini", f"{key}/config/linux")
    b["config/platform/windows.ini"] = _Text("ini", f"{key}/config/windows")
    script_dirs = {
        "core": 14, "ui": 10, "ui/widgets": 16, "ai": 8, "ai/behaviours": 22, "vehicles": 12,
        "economy": 10, "missions/act1": 18, "missions/act2": 18, "missions/act3": 16,
        "missions/side": 20, "world/sectors": 24, "world/events": 12, "net": 6,
    }  # fmt: skip
    for folder, count in script_dirs.items():
        for i in range(count):
            name = f"{rng.choice(_VERBS)}_{rng.choice(_NOUNS)}_{i:02d}"
            b[f"scripts/{folder}/{name}.lua"] = _Text("lua", f"{key}/lua/{folder}/{i}")
    for i in range(28):
        name = f"{rng.choice(_ADJS)}_{rng.choice(_NOUNS)}_{i:02d}.{('vert', 'frag')[i % 2]}"
        b[f"shaders/{name}.glsl"] = _Text("glsl", f"{key}/glsl/{i}")
    for lang in ("en", "de", "fr", "es", "ja", "pt-BR"):
        b[f"locale/{lang}/strings.txt"] = _Text("strings", f"{key}/strings", lang=lang)
        b[f"locale/{lang}/subtitles/intro.txt"] = _Text("strings", f"{key}/subs", lang=lang)
    b["locale/en-GB/strings.txt"] = b["locale/en/strings.txt"]  # duplicate content

    # --- binaries -----------------------------------------------------------------------------
    b["bin/star-courier"] = _new_binary(f"{key}/exe", int(size * 0.10))
    libs = {"libphysics": (0.012, 480), "libaudio": (0.008, 350), "libnet": (0.005, 220),
            "libscript": (0.015, 500), "libui": (0.003, 96)}  # fmt: skip
    for name, (share, cap_kb) in libs.items():
        lib_size = _lib_size(size, share, cap_kb * 1024)
        b[f"lib/{name}.so"] = _new_binary(f"{key}/{name}", lib_size, shared=True)
    movie = int(size * 0.08)
    b["movies/intro.bik"] = _Blob(f"{key}/movie", movie, b"BIKi")

    # --- paks fill the rest ---------------------------------------------------------------------
    fixed = _text_size(b) + movie + int(size * 0.10)
    fixed += sum(_lib_size(size, s, c * 1024) for s, c in libs.values())
    paks = max(size - fixed, 256 * 1024)
    shares = {
        "textures": (0.40, 0.92, [("textures/ships", ".dds"), ("textures/env", ".dds")]),
        "audio": (0.22, 0.95, [("sfx", ".ogg"), ("music", ".ogg"), ("banks", ".bnk")]),
        "levels": (0.18, 0.15, [("levels/sectors", ".lvl"), ("levels/nav", ".nav")]),
        "world": (0.12, 0.50, [("world/props", ".mdl"), ("world/spawns", ".tbl")]),
        "ui": (0.08, 0.40, [("ui/layouts", ".xml"), ("ui/icons", ".dds")]),
    }
    for name, (share, blob_frac, names) in shares.items():
        pkey = f"{key}/pak/{name}"
        b[f"data/{name}.pak"] = _Pak(pkey, _make_entries(pkey, int(paks * share), blob_frac, names))
    plan: list[tuple[str, _Build]] = [(versions[0], b)]

    # --- 1.1.0 --------------------------------------------------------------------------------
    b = dict(b)
    rng = _rng(key, "1.1.0")
    b["game.py"] = _game_py(pid, title, "1.1.0")
    b["docs/Release Notes.txt"] = _notes(title, versions[:2], key)
    pak = b["data/textures.pak"]
    assert isinstance(pak, _Pak)
    edited = set(rng.sample(range(len(pak.entries)), min(3, len(pak.entries))))
    b["data/textures.pak"] = replace(pak, entries=tuple(
        replace(e, edits=(*e.edits, 1)) if i in edited else e for i, e in enumerate(pak.entries)
    ))  # fmt: skip
    pak = b["data/levels.pak"]
    assert isinstance(pak, _Pak)
    mid = len(pak.entries) // 2
    extra = _make_entries(pak.key, int(paks * 0.18 * 0.06), 0.15, shares["levels"][2], "v110")
    b["data/levels.pak"] = replace(pak, entries=pak.entries[:mid] + extra + pak.entries[mid:])
    pak = b["data/audio.pak"]
    assert isinstance(pak, _Pak)
    extra = _make_entries(pak.key, int(paks * 0.22 * 0.04), 0.95, shares["audio"][2], "v110")
    b["data/audio.pak"] = replace(pak, entries=pak.entries + extra)
    exe = b["bin/star-courier"]
    assert isinstance(exe, _Binary)
    b["bin/star-courier"] = _recompile(exe, "1.1.0", insert_at=0.03, insert=4, modify=6)
    lib = b["lib/libnet.so"]
    assert isinstance(lib, _Binary)
    b["lib/libnet.so"] = _recompile(lib, "1.1.0", insert_at=0.5, insert=2, modify=2)
    b["lib/plugins/libphysics.so"] = b.pop("lib/libphysics.so")
    scripts = [p for p in b if p.startswith("scripts/") and p.endswith(".lua")]
    chosen = _pick(rng, scripts, 15)
    edits = [*chosen[:6], "config/gameplay.ini", "locale/de/strings.txt"]
    for p in edits:
        _bump(b, p)
    for p in chosen[6:10]:
        del b[p]
    for i, p in enumerate(chosen[10:14]):
        folder = "scripts/legacy" if i % 2 else os.path.dirname(p)
        b[f"{folder}/renamed_{os.path.basename(p)}"] = b.pop(p)
    for i in range(4):
        b[f"scripts/missions/side/courier_run_{i:02d}.lua"] = _Text("lua", f"{key}/lua/v110/{i}")
    b["config/events.ini"] = _Text("ini", f"{key}/config/events")
    plan.append(("1.1.0", b))

    # --- 1.2.0: hotfix --------------------------------------------------------------------------
    b = dict(b)
    b["game.py"] = _game_py(pid, title, "1.2.0")
    exe = b["bin/star-courier"]
    assert isinstance(exe, _Binary)
    b["bin/star-courier"] = _recompile_near_end(exe, "1.2.0", modify=2)
    b["docs/Release Notes.txt"] = _notes(title, versions[:3], key)
    _bump(b, "config/economy.ini")
    plan.append(("1.2.0", b))

    # --- 2.0.0: big update ----------------------------------------------------------------------
    b = dict(b)
    rng = _rng(key, "2.0.0")
    b["game.py"] = _game_py(pid, title, "2.0.0")
    b["docs/Release Notes.txt"] = _notes(title, versions, key)
    _bump(b, "README.txt")
    del b["data/world.pak"]
    okey = f"{key}/pak/outer_rim"
    b["data/outer_rim.pak"] = _Pak(okey, _make_entries(
        okey, int(paks * 0.14), 0.6, [("outer_rim/textures", ".dds"), ("outer_rim/maps", ".lvl")]
    ))  # fmt: skip
    pak = b["data/ui.pak"]
    assert isinstance(pak, _Pak)
    fresh = _make_entries(pak.key, int(paks * 0.08 * 0.5), 0.4, shares["ui"][2], "v200")
    b["data/ui.pak"] = replace(pak, entries=pak.entries[::2] + fresh)
    pak = b["data/textures.pak"]
    assert isinstance(pak, _Pak)
    edited = set(rng.sample(range(len(pak.entries)), min(4, len(pak.entries))))
    extra = _make_entries(pak.key, int(paks * 0.40 * 0.05), 0.92, shares["textures"][2], "v200")
    b["data/textures.pak"] = replace(pak, entries=tuple(
        replace(e, edits=(*e.edits, 2)) if i in edited else e for i, e in enumerate(pak.entries)
    ) + extra)  # fmt: skip
    pak = b["data/levels.pak"]
    assert isinstance(pak, _Pak)
    entries = list(pak.entries)
    for j, at in enumerate((len(entries) // 4, 3 * len(entries) // 4)):
        entries[at:at] = _make_entries(
            pak.key, int(paks * 0.18 * 0.03), 0.15, shares["levels"][2], f"v200{j}"
        )
    del entries[len(entries) // 2]
    b["data/levels.pak"] = replace(pak, entries=tuple(entries))
    exe = b["bin/star-courier"]
    assert isinstance(exe, _Binary)
    exe = _recompile(exe, "2.0.0a", insert_at=0.02, insert=len(exe.funcs) // 30,
                     modify=len(exe.funcs) // 10, remove=len(exe.funcs) // 50,
                     grow_rodata=exe.rodata[0] // 20)  # fmt: skip
    b["bin/star-courier"] = _recompile(exe, "2.0.0b", insert_at=0.6, insert=20, modify=0)
    lib = b["lib/libaudio.so"]
    assert isinstance(lib, _Binary)
    b["lib/libaudio.so"] = _recompile(lib, "2.0.0", insert_at=0.1, insert=8, modify=5)
    del b["lib/libui.so"]
    b["lib/libvr.so"] = _new_binary(f"{key}/libvr", _lib_size(size, 0.004, 160 * 1024), True)
    for p in [p for p in b if p.startswith("scripts/vehicles/")]:
        b["scripts/ships/" + p.removeprefix("scripts/vehicles/")] = b.pop(p)
    scripts = [p for p in b if p.startswith("scripts/") and p.endswith(".lua")]
    chosen = _pick(rng, scripts, 32)
    for p in chosen[:20]:
        _bump(b, p)
    for p in chosen[20:30]:
        del b[p]
    for p in ("config/engine.ini", "config/graphics.ini", "config/ui.ini", "config/hud.ini"):
        _bump(b, p)
    _bump(b, "locale/fr/strings.txt")
    for i in range(24):
        b[f"scripts/missions/act4/{_ident(rng, 2)}_{i:02d}.lua"] = _Text("lua", f"{key}/act4/{i}")
    b["locale/it/strings.txt"] = _Text("strings", f"{key}/strings", lang="it")
    b["locale/it/subtitles/intro.txt"] = _Text("strings", f"{key}/subs", lang="it")
    b["config/vr.ini"] = _Text("ini", f"{key}/config/vr")
    plan.append(("2.0.0", b))
    return plan


def _tiny_tactics_plan(size: int, seed: int) -> list[tuple[str, _Build]]:
    """Builds of tiny-tactics: 1.0.0, then 1.0.1 with one small edit (config/balance.ini)."""
    pid, title = "tiny-tactics", "Tiny Tactics"
    key = f"{pid}/{seed}"
    rng = _rng(key, "plan")
    b: _Build = {
        "game.py": _game_py(pid, title, "1.0.0"),
        "launcher-build.json": _launcher_build(),
        "README.txt": _Text("doc", f"{key}/readme"),
    }
    for name in ("balance", "video", "audio", "controls", "maps"):
        b[f"config/{name}.ini"] = _Text("ini", f"{key}/config/{name}")
    for folder, count in {"units": 10, "maps": 8, "ai": 6, "ui": 6}.items():
        for i in range(count):
            name = f"{rng.choice(_VERBS)}_{rng.choice(_NOUNS)}_{i:02d}"
            b[f"scripts/{folder}/{name}.lua"] = _Text("lua", f"{key}/lua/{folder}/{i}")
    for lang in ("en", "de", "fr"):
        b[f"locale/{lang}/strings.txt"] = _Text("strings", f"{key}/strings", lang=lang)
    b["bin/tiny-tactics"] = _new_binary(f"{key}/exe", int(size * 0.10))
    lib_size = _lib_size(size, 0.05, 200 * 1024)
    b["lib/libtiny.so"] = _new_binary(f"{key}/libtiny", lib_size, shared=True)
    paks = max(size - _text_size(b) - int(size * 0.10) - lib_size, 64 * 1024)
    for name, share, blob_frac, names in (
        ("assets", 0.7, 0.85, [("sprites", ".dds"), ("sounds", ".ogg")]),
        ("maps", 0.3, 0.2, [("maps", ".lvl")]),
    ):
        pkey = f"{key}/pak/{name}"
        b[f"data/{name}.pak"] = _Pak(pkey, _make_entries(pkey, int(paks * share), blob_frac, names))
    plan: list[tuple[str, _Build]] = [("1.0.0", b)]
    b = dict(b)
    b["game.py"] = _game_py(pid, title, "1.0.1")
    _bump(b, "config/balance.ini")
    plan.append(("1.0.1", b))
    return plan


_PRODUCTS: tuple[tuple[str, str, float, Callable[[int, int], list[tuple[str, _Build]]]], ...] = (
    ("star-courier", "Star Courier", 1.0, _star_courier_plan),
    ("tiny-tactics", "Tiny Tactics", 1 / 8, _tiny_tactics_plan),
)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass
class _Job:
    path: str  # absolute target path
    spec: _Spec
    copy_from: str | None = None
    mtime: int = 0
    weight: int = 0  # rough generation cost, to schedule the big files first


def _spec_weight(spec: _Spec) -> int:
    if isinstance(spec, _Pak):
        return sum(e.size for e in spec.entries)
    if isinstance(spec, _Blob):
        return spec.size
    if isinstance(spec, _Binary):
        return len(spec.funcs) * 700
    return 1024


def _write_file(path: str, spec: _Spec, copy_from: str | None, mtime: int) -> None:
    if copy_from is not None:
        shutil.copyfile(copy_from, path)
    elif isinstance(spec, (_Raw, _Text)):
        data = spec.data if isinstance(spec, _Raw) else _render_text(spec)
        with open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            if isinstance(spec, _Pak):
                _write_pak(f, spec)
            elif isinstance(spec, _Binary):
                _write_binary(f, spec)
            else:
                _write_blob(f, spec)
    os.chmod(path, 0o755 if _is_executable(spec) else 0o644)
    os.utime(path, (mtime, mtime))


def _run_job(job: _Job) -> None:
    _write_file(job.path, job.spec, job.copy_from, job.mtime)


def _version_jobs(
    target: Path, build: _Build, previous: tuple[Path, _Build] | None, mtime: int
) -> tuple[list[_Job], set[Path]]:
    """Jobs writing one build into ``target``, and the directories it needs."""
    jobs: list[_Job] = []
    dirs = {target, target / "mods"}
    for rel, spec in sorted(build.items()):
        path = target / rel
        dirs.update(path.parents[: len(Path(rel).parents) - 1])
        copy_from = None
        if previous is not None and previous[1].get(rel) == spec:
            copy_from = str(previous[0] / rel)
        jobs.append(_Job(str(path), spec, copy_from, mtime, _spec_weight(spec)))
    return jobs, dirs


def _run_jobs(jobs: list[_Job], pool: ProcessPoolExecutor | None) -> None:
    """Generate every file that is not a copy (heavy ones in the pool), then do the copies in
    order: a copy's source is a file of an earlier version, generated or copied before it."""
    fresh = [j for j in jobs if j.copy_from is None]
    heavy = sorted((j for j in fresh if j.weight > MIB), key=lambda j: -j.weight)
    futures = [pool.submit(_run_job, j) for j in heavy] if pool is not None else []
    submitted = {id(j) for j in heavy} if pool is not None else set()
    for job in fresh:
        if id(job) not in submitted:
            _run_job(job)
    for fut in futures:
        fut.result()
    for job in jobs:
        if job.copy_from is not None:
            _run_job(job)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise generators working on the same product (a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _marker_ok(product_dir: Path, marker: Path, versions: Sequence[str]) -> bool:
    try:
        info = json.loads(marker.read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(info, dict)
        and info.get("generator") == GENERATOR_VERSION
        and all((product_dir / v).is_dir() for v in versions)
    )


def _prepare_product(
    dest: Path, product_id: str, plan: list[tuple[str, _Build]], size_mb: float, seed: int
) -> tuple[list[_Job], list[tuple[Path, set[Path], int]]] | None:
    """Clean up a product folder and list what to write, or None if it is already complete."""
    product_dir = dest / product_id
    versions = [v for v, _ in plan]
    if _marker_ok(product_dir, product_dir / marker_name(size_mb, seed), versions):
        return None
    for stale in product_dir.glob(".generated-*"):
        stale.unlink()
    for child in product_dir.iterdir():
        if child.is_dir() and (child.name in versions or child.name.startswith(".tmp-")):
            shutil.rmtree(child)
    jobs: list[_Job] = []
    targets: list[tuple[Path, set[Path], int]] = []
    previous: tuple[Path, _Build] | None = None
    for index, (version, build) in enumerate(plan):
        tmp = product_dir / f".tmp-{version}"
        mtime = _EPOCH + index * _VERSION_STEP
        version_jobs, dirs = _version_jobs(tmp, build, previous, mtime)
        jobs += version_jobs
        targets.append((tmp, dirs, mtime))
        previous = (tmp, build)
    return jobs, targets


def _finish_product(product_dir: Path, plan: list[tuple[str, _Build]], size_mb: float, seed: int) -> None:
    """Move the finished temporary folders in place and write the marker."""
    versions = [v for v, _ in plan]
    for version in versions:
        os.replace(product_dir / f".tmp-{version}", product_dir / version)
    info = {"generator": GENERATOR_VERSION, "size_mb": size_mb, "seed": seed,
            "versions": versions}  # fmt: skip
    tmp_marker = product_dir / ".marker.tmp"
    tmp_marker.write_text(json.dumps(info) + "\n", "utf-8")
    os.replace(tmp_marker, product_dir / marker_name(size_mb, seed))


def _pool_context() -> multiprocessing.context.BaseContext | None:
    """A fork context when forking is safe (several CPUs, POSIX, no other threads), else None.

    Fork (rather than spawn) keeps ``generate`` usable from scripts without a ``__main__``
    guard; forking a multi-threaded process is unsafe, so such callers just run serially.
    """
    if (os.cpu_count() or 1) < 2 or threading.active_count() > 1:
        return None
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    return multiprocessing.get_context("fork")


def _plans(size_mb: float, seed: int) -> list[tuple[str, str, list[tuple[str, _Build]]]]:
    if not size_mb > 0:
        raise ValueError(f"size_mb must be positive, got {size_mb!r}")
    size = int(size_mb * MIB)
    return [(pid, title, plan_fn(max(1, int(size * share)), seed))
            for pid, title, share, plan_fn in _PRODUCTS]


def describe(*, size_mb: float = 8, seed: int = 1) -> list[DemoProduct]:
    """The demo products (ids, titles, versions) without writing anything, smallest first."""
    plans = _plans(size_mb, seed)
    share = {pid: s for pid, _t, s, _f in _PRODUCTS}
    return sorted((DemoProduct(pid, title, tuple(v for v, _ in plan)) for pid, title, plan in plans),
                  key=lambda p: share[p.product_id])


def generate(dest: Path, *, size_mb: float = 8, seed: int = 1,
             only: Iterable[str] | None = None) -> list[DemoProduct]:
    """Write the demo catalog under ``dest`` (``only`` these products, if given) and describe it.

    ``dest/<product_id>/<version>/`` is a complete build folder. One version of star-courier is
    about ``size_mb`` MiB, tiny-tactics about an eighth of it. Output depends only on the
    arguments; a product already generated with the same arguments is left as it is.
    """
    dest = Path(dest)
    wanted = None if only is None else set(only)
    plans = [p for p in _plans(size_mb, seed) if wanted is None or p[0] in wanted]
    products = [DemoProduct(pid, title, tuple(v for v, _ in plan)) for pid, title, plan in plans]
    with contextlib.ExitStack() as stack:
        todo = []
        jobs: list[_Job] = []
        dirs: list[tuple[Path, set[Path], int]] = []
        for pid, _title, plan in plans:
            (dest / pid).mkdir(parents=True, exist_ok=True)
            stack.enter_context(_locked(dest / pid / ".lock"))
            prepared = _prepare_product(dest, pid, plan, size_mb, seed)
            if prepared is not None:
                todo.append((pid, plan))
                jobs += prepared[0]
                dirs += prepared[1]
        if not todo:
            return products
        for _root, needed, _mtime in dirs:
            for d in sorted(needed):
                d.mkdir(parents=True, exist_ok=True)
        fresh = sum(j.weight for j in jobs if j.copy_from is None)
        context = _pool_context() if fresh > _PARALLEL_THRESHOLD else None
        if context is not None:
            with ProcessPoolExecutor(min(4, os.cpu_count() or 1), mp_context=context) as pool:
                _run_jobs(jobs, pool)
        else:
            _run_jobs(jobs, None)
        for _root, needed, mtime in dirs:
            for d in sorted(needed, key=lambda p: -len(p.parts)):
                os.chmod(d, 0o755)
                os.utime(d, (mtime, mtime))
        for pid, plan in todo:
            _finish_product(dest / pid, plan, size_mb, seed)
    return products
