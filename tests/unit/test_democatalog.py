"""The deterministic demo catalog: layout, sizes, determinism, version deltas, runnable game."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.democatalog import LAUNCHER_BUILD, DemoProduct, generate, marker_name

SIZE_MB = 3
SEED = 7
MIB = 1024 * 1024
PAK_HEADER = struct.Struct("<8sIIQQ32s")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[DemoProduct]]:
    root = tmp_path_factory.mktemp("catalog")
    return root, generate(root, size_mb=SIZE_MB, seed=SEED)


@pytest.fixture(scope="module")
def root(catalog: tuple[Path, list[DemoProduct]]) -> Path:
    return catalog[0]


def hashes(build: Path) -> dict[str, str]:
    return {
        p.relative_to(build).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(build.rglob("*"))
        if p.is_file()
    }


def tree(base: Path) -> dict[str, tuple[str, int]]:
    """Every file and directory under base: sha256 (or "dir") and permission bits."""
    out = {}
    for p in sorted(base.rglob("*")):
        digest = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        out[p.relative_to(base).as_posix()] = (digest, p.stat().st_mode & 0o777)
    return out


@dataclass
class Delta:
    unchanged: set[str]
    modified: set[str]
    removed: set[str]
    added: set[str]
    renamed: dict[str, str]  # old path -> new path, same content


def delta(old: Path, new: Path) -> Delta:
    a, b = hashes(old), hashes(new)
    common = a.keys() & b.keys()
    only_old, only_new = a.keys() - b.keys(), b.keys() - a.keys()
    by_hash = {b[p]: p for p in sorted(only_new)}
    renamed = {p: by_hash[a[p]] for p in sorted(only_old) if a[p] in by_hash}
    return Delta(
        unchanged={p for p in common if a[p] == b[p]},
        modified={p for p in common if a[p] != b[p]},
        removed=only_old - renamed.keys(),
        added=only_new - set(renamed.values()),
        renamed=renamed,
    )


def pak_entries(data: bytes) -> list[tuple[str, int, int]]:
    """Parse a pak (header, TOC) and check every entry's CRC; returns (name, offset, size)."""
    magic, count, _flags, toc_offset, toc_size, _pak_id = PAK_HEADER.unpack_from(data)
    assert magic.startswith(b"SCPAK")
    assert toc_offset + toc_size == len(data)
    entries = []
    pos = toc_offset
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2 : pos + 2 + name_len].decode()
        offset, size, crc = struct.unpack_from("<QQI", data, pos + 2 + name_len)
        pos += 2 + name_len + 20
        assert zlib.crc32(data[offset : offset + size]) == crc, name
        entries.append((name, offset, size))
    assert pos == len(data)
    return entries


def build_size(build: Path) -> int:
    return sum(p.stat().st_size for p in build.rglob("*") if p.is_file())


def test_products_and_versions(catalog: tuple[Path, list[DemoProduct]]) -> None:
    root, products = catalog
    assert products == [
        DemoProduct("star-courier", "Star Courier", ("1.0.0", "1.1.0", "1.2.0", "2.0.0")),
        DemoProduct("tiny-tactics", "Tiny Tactics", ("1.0.0", "1.0.1")),
    ]
    for product in products:
        assert (root / product.product_id / marker_name(SIZE_MB, SEED)).is_file()
        for version in product.versions:
            assert (root / product.product_id / version).is_dir()
    assert marker_name(8, 1) == ".generated-8-1"
    assert marker_name(2.5, 3) == ".generated-2.5-3"


def test_same_arguments_give_byte_identical_catalogs(root: Path, tmp_path: Path) -> None:
    generate(tmp_path, size_mb=SIZE_MB, seed=SEED)
    for product in ("star-courier", "tiny-tactics"):
        for build in sorted(p for p in (root / product).iterdir() if p.is_dir()):
            other = tmp_path / product / build.name
            assert tree(build) == tree(other), build.name
            assert build.stat().st_mtime == other.stat().st_mtime


def test_regenerating_skips_unless_arguments_change(tmp_path: Path) -> None:
    generate(tmp_path, size_mb=1, seed=1)
    first = hashes(tmp_path / "star-courier" / "1.0.0")
    sentinel = tmp_path / "star-courier" / "1.0.0" / "sentinel"
    sentinel.write_text("left alone")
    generate(tmp_path, size_mb=1, seed=1)  # marker present: nothing is touched
    assert sentinel.exists()
    generate(tmp_path, size_mb=1, seed=2)  # other seed: rebuilt
    assert not sentinel.exists()
    markers = sorted(p.name for p in (tmp_path / "star-courier").glob(".generated-*"))
    assert markers == [".generated-1-2"]
    second = hashes(tmp_path / "star-courier" / "1.0.0")
    assert first["data/textures.pak"] != second["data/textures.pak"]
    assert first["launcher-build.json"] == second["launcher-build.json"]
    assert not list((tmp_path / "star-courier").glob(".tmp-*"))


def test_rejects_non_positive_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, size_mb=0)


@pytest.mark.parametrize(
    ("product", "version"),
    [("star-courier", v) for v in ("1.0.0", "1.1.0", "1.2.0", "2.0.0")]
    + [("tiny-tactics", v) for v in ("1.0.0", "1.0.1")],
)
def test_build_layout(root: Path, product: str, version: str) -> None:
    build = root / product / version
    mods = build / "mods"
    assert mods.is_dir()
    assert list(mods.iterdir()) == []
    exe = build / "bin" / product
    assert exe.read_bytes()[:4] == b"\x7fELF"
    assert exe.stat().st_mode & 0o777 == 0o755
    assert (build / "game.py").is_file()
    assert (
        json.loads((build / "launcher-build.json").read_text())
        == LAUNCHER_BUILD
        == {
            "launch": [
                {
                    "name": "Play",
                    "executable": "game.py",
                    "arguments": ["--play-seconds", "1"],
                    "working_dir": "",
                    "environment": {"GAME_LAUNCHED_BY": "game-launcher"},
                }
            ],
            "saves": [{"root": "install", "path": "saves", "include": ["*.sav"], "exclude": []},
                      {"root": "install", "path": "settings", "include": ["*.ini"],
                       "exclude": []}],
        }
    )
    paks = sorted((build / "data").glob("*.pak"))
    assert len(paks) >= 2
    for pak in paks:
        assert pak_entries(pak.read_bytes())
    libs = list((build / "lib").rglob("*.so"))
    assert libs
    for lib in libs:
        assert lib.read_bytes()[:4] == b"\x7fELF"
        assert 20 * 1024 <= lib.stat().st_size <= 500 * 1024
    files = hashes(build)
    texts = [p for p in files if p.endswith((".ini", ".lua", ".txt", ".glsl"))]
    assert any(p.startswith("config/") and p.endswith(".ini") for p in texts)
    assert any(p.startswith("locale/") and p.endswith("/strings.txt") for p in texts)
    assert any(p.count("/") >= 2 and p.endswith(".lua") for p in texts)  # nested scripts
    if product == "star-courier":
        assert len(texts) >= 250
        assert (build / "config/overrides.ini").stat().st_size == 0
        assert files["locale/en/strings.txt"] == files["locale/en-GB/strings.txt"]
        assert (build / "docs/Release Notes.txt").read_text().count(f"== {version} ==") == 1
    for path in files:
        assert "\\" not in path and not path.startswith("/")


def test_sizes(root: Path) -> None:
    for version in ("1.0.0", "1.1.0", "1.2.0", "2.0.0"):
        build = root / "star-courier" / version
        total = build_size(build)
        assert 0.75 * SIZE_MB * MIB <= total <= 1.25 * SIZE_MB * MIB, version
        paks = sum(p.stat().st_size for p in (build / "data").glob("*.pak"))
        assert paks >= 0.5 * total
        assert 0.06 * total <= (build / "bin/star-courier").stat().st_size <= 0.14 * total
    for version in ("1.0.0", "1.0.1"):
        total = build_size(root / "tiny-tactics" / version)
        assert 0.75 * SIZE_MB * MIB / 8 <= total <= 1.25 * SIZE_MB * MIB / 8


def test_paks_are_partly_compressible(root: Path) -> None:
    build = root / "star-courier" / "1.0.0"
    ratios = {}
    for name in ("textures", "levels"):
        data = (build / "data" / f"{name}.pak").read_bytes()
        ratios[name] = len(data) / len(zlib.compress(data, 1))
    assert ratios["textures"] < 1.3  # mostly already-compressed blobs
    assert 1.6 < ratios["levels"] < 4  # mostly text-like records


def test_1_1_0_changes(root: Path) -> None:
    old, new = root / "star-courier/1.0.0", root / "star-courier/1.1.0"
    d = delta(old, new)
    assert len(d.unchanged) >= 200
    assert {"data/world.pak", "data/ui.pak", "movies/intro.bik", "lib/libscript.so"} <= d.unchanged
    assert {
        "data/textures.pak",
        "data/levels.pak",
        "data/audio.pak",
        "bin/star-courier",
        "game.py",
        "lib/libnet.so",
    } <= d.modified
    assert len([p for p in d.modified if p.endswith((".lua", ".ini", ".txt"))]) >= 8
    assert d.renamed["lib/libphysics.so"] == "lib/plugins/libphysics.so"
    assert len([p for p in d.renamed if p.endswith(".lua")]) == 4
    assert len(d.removed) == 4
    assert len(d.added) == 5

    # textures.pak: edited in place (same size, a few scattered blocks differ)
    a, b = (old / "data/textures.pak").read_bytes(), (new / "data/textures.pak").read_bytes()
    assert len(a) == len(b)
    blocks = range(0, len(a), 4096)
    changed = sum(a[i : i + 4096] != b[i : i + 4096] for i in blocks)
    assert 2 <= changed <= 0.2 * len(blocks)

    # audio.pak: entries appended, the old data is a prefix of the new
    a, b = (old / "data/audio.pak").read_bytes(), (new / "data/audio.pak").read_bytes()
    old_entries, new_entries = pak_entries(a), pak_entries(b)
    assert new_entries[: len(old_entries)] == old_entries
    toc = PAK_HEADER.unpack_from(a)[3]
    assert len(b) > len(a) and b[PAK_HEADER.size : toc] == a[PAK_HEADER.size : toc]

    # levels.pak: entries inserted in the middle, the second half shifts
    a, b = (old / "data/levels.pak").read_bytes(), (new / "data/levels.pak").read_bytes()
    old_entries, new_entries = pak_entries(a), pak_entries(b)
    mid = len(old_entries) // 2
    assert new_entries[:mid] == old_entries[:mid]
    name, offset, size = old_entries[-1]
    moved = {n: o for n, o, _ in new_entries}
    assert moved[name] > offset
    assert b[moved[name] : moved[name] + size] == a[offset : offset + size]
    assert len(new_entries) > len(old_entries)


def test_recompiled_executable_defeats_chunk_reuse(root: Path) -> None:
    old = (root / "star-courier/1.0.0/bin/star-courier").read_bytes()
    new = (root / "star-courier/1.1.0/bin/star-courier").read_bytes()
    assert len(new) > len(old)
    # Functions were inserted near the start: addresses move, so bytes change every few KB over
    # the whole code section and almost no 4 KiB block of old code survives anywhere in the new.
    text = old[0x1000 : int(len(old) * 0.7)]
    blocks = [text[i : i + 4096] for i in range(0, len(text) - 4096, 4096)]
    survivors = sum(block in new for block in blocks)
    assert survivors <= 0.1 * len(blocks)
    bsdiff4 = pytest.importorskip("bsdiff4")
    assert len(bsdiff4.diff(old, new)) < 0.1 * len(new)


def test_1_2_0_is_a_small_hotfix(root: Path) -> None:
    d = delta(root / "star-courier/1.1.0", root / "star-courier/1.2.0")
    assert not d.added and not d.removed and not d.renamed
    assert d.modified == {
        "bin/star-courier",
        "game.py",
        "config/economy.ini",
        "docs/Release Notes.txt",
    }


def test_2_0_0_is_a_big_update(root: Path) -> None:
    d = delta(root / "star-courier/1.2.0", root / "star-courier/2.0.0")
    assert "data/world.pak" in d.removed
    assert "data/outer_rim.pak" in d.added
    assert "lib/libui.so" in d.removed and "lib/libvr.so" in d.added
    assert {"data/textures.pak", "data/levels.pak", "data/ui.pak", "bin/star-courier"} <= (
        d.modified
    )
    ships = {o: n for o, n in d.renamed.items() if o.startswith("scripts/vehicles/")}
    assert ships and all(n.startswith("scripts/ships/") for n in ships.values())
    assert len(d.added) >= 20 and len(d.removed) >= 10 and len(d.modified) >= 25
    assert {"data/audio.pak", "movies/intro.bik"} <= d.unchanged


def test_tiny_tactics_1_0_1_is_one_small_edit(root: Path) -> None:
    d = delta(root / "tiny-tactics/1.0.0", root / "tiny-tactics/1.0.1")
    assert d.modified == {"config/balance.ini", "game.py"}
    assert not d.added and not d.removed and not d.renamed


def run_game(build: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "game.py", *args],
        cwd=build,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_game_runs_and_saves(root: Path, tmp_path: Path) -> None:
    saves = tmp_path / "saves"
    build = root / "star-courier" / "1.0.0"
    out = run_game(build, "--save-dir", str(saves), "--play-seconds", "0")
    assert "Star Courier 1.0.0" in out
    state = json.loads((saves / "slot1.sav").read_text())
    assert state["counter"] == 1 and state["version"] == "1.0.0"
    out = run_game(root / "star-courier" / "2.0.0", "--save-dir", str(saves), "--play-seconds", "0")
    assert "2.0.0" in out
    state = json.loads((saves / "slot1.sav").read_text())
    assert state["counter"] == 2 and state["version"] == "2.0.0"
    env_saves = tmp_path / "from-env"
    run_game(build, "--play-seconds", "0", env={"LAUNCHER_SAVE_DIR": str(env_saves)})
    assert json.loads((env_saves / "slot1.sav").read_text())["counter"] == 1
    assert not (build / "saves").exists()
