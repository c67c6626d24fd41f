"""The engine's file-system rules at their smallest: a rename that never replaces, and a mode
change that never follows a link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.core.errors import EngineError, ErrorCode
from engine.io import fsops
from engine.io.fsops import rename_noreplace, set_mode


@pytest.mark.parametrize("what", ["file", "empty folder", "link"])
def test_rename_noreplace_leaves_whatever_stands_at_the_destination(tmp_path: Path,
                                                                    what: str) -> None:
    src, dest = tmp_path / "staged", tmp_path / "game"
    src.mkdir()
    (src / "a.pak").write_bytes(b"game")
    if what == "file":
        dest.write_bytes(b"mine")
    elif what == "empty folder":
        dest.mkdir()  # os.rename of a folder onto an empty folder would replace it
    else:
        dest.symlink_to(tmp_path / "nowhere")
    assert rename_noreplace(src, dest) is False
    assert (src / "a.pak").read_bytes() == b"game"
    if what == "file":
        assert dest.read_bytes() == b"mine"
    elif what == "empty folder":
        assert list(dest.iterdir()) == []
    else:
        assert dest.is_symlink()


def test_rename_noreplace_moves_when_nothing_is_there(tmp_path: Path) -> None:
    src = tmp_path / "staged"
    src.write_bytes(b"game")
    assert rename_noreplace(src, tmp_path / "game") is True
    assert (tmp_path / "game").read_bytes() == b"game" and not src.exists()


def test_rename_noreplace_without_renameat2_looks_first(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where libc has no renameat2 (another system), a look before the rename stands in."""
    monkeypatch.setattr(fsops, "_RENAMEAT2", [None])
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"2")
    assert rename_noreplace(tmp_path / "a", tmp_path / "b") is False
    assert rename_noreplace(tmp_path / "a", tmp_path / "c") is True
    assert (tmp_path / "b").read_bytes() == b"2" and (tmp_path / "c").read_bytes() == b"1"


def test_set_mode_changes_a_file_and_refuses_a_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.bin"
    target.write_bytes(b"x")
    target.chmod(0o600)
    game = tmp_path / "run.sh"
    game.write_bytes(b"x")
    set_mode(game, 0o755)
    assert game.stat().st_mode & 0o777 == 0o755
    link = tmp_path / "link.sh"
    link.symlink_to(target)
    with pytest.raises(EngineError) as err:
        set_mode(link, 0o755)
    assert err.value.code is ErrorCode.UNSAFE_PATH
    assert target.stat().st_mode & 0o777 == 0o600
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(EngineError, match="not a regular file"):
        set_mode(tmp_path / "pipe", 0o755)
