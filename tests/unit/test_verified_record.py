"""The verified-metadata record (engine.io.verifiedmeta) read from whatever a damaged or edited
file holds: anything but a record of the right shape counts as no record (files are hashed),
never an exception that stops a verify, an update or its switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.io.verifiedmeta import RECORD_DIR, VerifiedRecord
from engine.io.verify import remember_verified
from patcher.manifest import FileEntry, Manifest


def write_record(data_dir: Path, text: str) -> Path:
    path = data_dir / RECORD_DIR / "game.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("text", [
    "[]", "null", "3", '"text"',
    '{"format": 1, "installDir": "%s", "files": []}',
    '{"format": 1, "installDir": "%s", "files": {"a": 5}}',
    '{"format": 1, "installDir": "%s", "files": {"a": ["sha", [1, 2]]}}',
    '{"format": 1, "installDir": "%s", "fullVerifyAt": "soon", "files": {}}',
    "[" * 100_000 + "]" * 100_000,  # deeper than the JSON decoder recurses
    "{not json",
])
def test_a_record_of_the_wrong_shape_counts_as_none(tmp_path: Path, text: str) -> None:
    game = tmp_path / "game"
    write_record(tmp_path, text.replace("%s", str(game)) if "%s" in text else text)
    record = VerifiedRecord.load(tmp_path, "game", game)
    assert record.entries == {} and record.full_verify_at is None


def test_remembering_over_a_record_of_the_wrong_shape_replaces_it(tmp_path: Path) -> None:
    """The switch of an update calls remember_verified: a record it cannot read must not stop
    the switch (it used to raise AttributeError there, leaving the game dirty)."""
    game = tmp_path / "game"
    game.mkdir()
    (game / "a.bin").write_bytes(b"abc")
    path = write_record(tmp_path, "[]")
    manifest = Manifest("game", "1", (FileEntry("a.bin", 3, 0o644, "f" * 64, ()),), (), {})
    remember_verified(tmp_path, game, manifest)
    doc = json.loads(path.read_text())
    assert doc["installDir"] == str(game) and list(doc["files"]) == ["a.bin"]
