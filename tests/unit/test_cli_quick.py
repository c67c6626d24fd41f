"""The quick path's own rules (engine.cli.quick): which data folder a line names, what it sends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.cli.quick import command_line, data_dir_of, forward


@pytest.fixture(autouse=True)
def default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LAUNCHER_ENGINE_DATA_DIR", str(tmp_path / "default"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "default"


@pytest.mark.parametrize(("argv", "expected"), [
    (["status"], "default"),
    (["--data", "d1", "status"], "d1"),
    (["--data=d1", "status"], "d1"),
    (["--data", "d1", "status", "--data", "d2"], "d2"),  # after the command wins, as in argparse
    (["--data", "", "status"], "default"),  # an empty value is none to the settings
    (["--data", "/abs/d", "status"], "/abs/d"),
    (["queue", "list", "--", "--data", "d1"], "default"),  # after "--" it is not an option
])
def test_the_data_folder_of_a_line(argv: list[str], expected: str, tmp_path: Path) -> None:
    assert data_dir_of(argv) == os.path.abspath(tmp_path / expected)


def test_a_data_option_without_its_value_is_left_to_the_parser() -> None:
    assert data_dir_of(["status", "--data"]) is None


def test_the_line_sends_the_settings_but_not_the_password(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("LAUNCHER_ENGINE_CONNECTIONS", "4")
    monkeypatch.setenv("LAUNCHER_ENGINE_PASSWORD", "secret")
    monkeypatch.setenv("UNRELATED", "x")
    line = command_line(["status"], str(tmp_path))
    assert line["cwd"] == str(tmp_path) and line["argv"] == ["status"]
    assert "LAUNCHER_ENGINE_CONNECTIONS=4" in line["env"]
    assert not any(e.startswith(("LAUNCHER_ENGINE_PASSWORD=", "UNRELATED=")) for e in line["env"])


@pytest.mark.parametrize("argv", [[], ["--help"], ["install", "-h"], ["serve"],
                                  ["login", "player"], ["status"]])
def test_lines_without_a_daemon_or_for_this_process_run_here(argv: list[str]) -> None:
    """No daemon runs for the (empty) default folder, and help, serve and login never go."""
    assert forward(argv) is None


def test_an_empty_data_variable_is_the_default_folder_for_the_settings_too(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from engine.io.config import load_settings

    monkeypatch.setenv("LAUNCHER_ENGINE_DATA_DIR", "")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_settings({}).data_dir == tmp_path / "xdg" / "game-launcher"
    assert data_dir_of(["status"]) == str(tmp_path / "xdg" / "game-launcher")
