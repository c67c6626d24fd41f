"""verify --quick through the verified-metadata record: the real engine CLI against the real
backend. A quick verify right after an install (or a full verify) re-hashes nothing and says
so; a file written since — even with its mtime put back and its size kept — is re-hashed and
its damage found; an update re-stamps what it switched in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from testing.enginekit import EngineCli, assert_same_tree
from tests.e2e.conftest import build_dir

PRODUCT = "star-courier"


def _verify(engine: EngineCli, *args: str) -> dict[str, Any]:
    code, lines, _ = engine.run("verify", PRODUCT, *args)
    report: dict[str, Any] = lines[-1]["verify"]
    assert code == (0 if report["ok"] else 7), (code, report)
    return report


def test_quick_verify_trusts_only_unchanged_metadata(engine: EngineCli, published_store: Any,
                                                     tmp_path: Path) -> None:
    version = published_store.product(PRODUCT).versions[0]
    target = tmp_path / "game"
    engine.ok("install", PRODUCT, "--version", version, "--target", str(target))
    files = [p for p in target.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)

    quick = _verify(engine, "--quick")  # the install stamped every file it committed
    assert quick["ok"] and quick["quick"]
    assert quick["unchangedFiles"] == len(files) and quick["unchangedBytes"] == total
    assert quick["bytesChecked"] == 0

    # same size, mtime put back: only ctime tells; the quick verify must re-hash and find it
    pak = max(target.rglob("*.pak"), key=lambda p: p.stat().st_size)
    before = pak.stat()
    with pak.open("r+b") as fh:
        fh.seek(before.st_size // 3)
        fh.write(b"\x00" * 4096)
    os.utime(pak, ns=(before.st_atime_ns, before.st_mtime_ns))
    damaged = _verify(engine, "--quick")
    assert not damaged["ok"]
    assert [d["path"] for d in damaged["damaged"]] == [pak.relative_to(target).as_posix()]
    assert damaged["unchangedFiles"] == len(files) - 1
    assert damaged["bytesChecked"] == before.st_size
    # a damaged file never gets back into the record: asked again, it is hashed again
    assert not _verify(engine, "--quick")["ok"]

    assert engine.ok("verify", PRODUCT, "--repair")[-1]["verify"]["ok"]
    full = _verify(engine)  # a full verify hashes everything and refreshes the record
    assert full["ok"] and full["bytesChecked"] == total and full["unchangedFiles"] == 0
    again = _verify(engine, "--quick")
    assert again["ok"] and again["unchangedFiles"] == len(files) and again["bytesChecked"] == 0


def test_quick_verify_after_an_update(engine: EngineCli, published_store: Any,
                                      tmp_path: Path) -> None:
    versions = published_store.product(PRODUCT).versions
    target = tmp_path / "game"
    engine.ok("install", PRODUCT, "--version", versions[0], "--target", str(target))
    engine.ok("update", PRODUCT, "--version", versions[1])
    files = [p for p in target.rglob("*") if p.is_file()]
    quick = _verify(engine, "--quick")
    assert quick["ok"] and quick["unchangedFiles"] == len(files) and quick["bytesChecked"] == 0
    # a replaced file (another inode) is never taken from the record
    victim = max(target.rglob("*.pak"), key=lambda p: p.stat().st_size)
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data)
    again = _verify(engine, "--quick")
    assert again["ok"] and again["unchangedFiles"] == len(files) - 1
    assert again["bytesChecked"] == len(data)


def test_a_damaged_record_only_costs_hashing(engine: EngineCli, published_store: Any,
                                             tmp_path: Path) -> None:
    version = published_store.product(PRODUCT).versions[0]
    target = tmp_path / "game"
    engine.ok("install", PRODUCT, "--version", version, "--target", str(target))
    total = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    (engine.data_dir / "verified" / f"{PRODUCT}.json").write_text('{"format": 1, "files": [')
    quick = _verify(engine, "--quick")
    assert quick["ok"] and quick["unchangedFiles"] == 0 and quick["bytesChecked"] == total
    assert _verify(engine, "--quick")["unchangedFiles"] > 0  # rewritten by that scan


def test_repair_right_after_a_verify_hashes_only_what_changed(
        engine: EngineCli, published_store: Any, tmp_path: Path) -> None:
    version = published_store.product(PRODUCT).versions[0]
    target = tmp_path / "game"
    engine.ok("install", PRODUCT, "--version", version, "--target", str(target))
    pak = max(target.rglob("*.pak"), key=lambda p: p.stat().st_size)
    with pak.open("r+b") as fh:
        fh.seek(pak.stat().st_size // 2)
        fh.write(b"\xee" * 5000)
    code, lines, err = engine.run("verify", PRODUCT, "--repair", "-v")
    assert code == 0, (lines[-2:], err[-2000:])
    assert lines[-1]["verify"]["ok"] is True
    # the repair took the files the verify had just proved from the record, the damaged one not
    files = sum(1 for p in target.rglob("*") if p.is_file())
    assert f"repair of {PRODUCT}: {files - 1} file(s) proven by the verify" in err, err[-3000:]
    assert_same_tree(target, build_dir(published_store, version))
