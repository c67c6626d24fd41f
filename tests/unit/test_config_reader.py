"""The config file's fast reader (engine.io.config.read_simple_toml) against tomllib: it reads
what ``save_setting`` writes for most players exactly as tomllib does, and hands everything else
to tomllib (None), never a different answer."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.errors import EngineError
from engine.io.config import _toml_literal, read_config_file, read_simple_toml
from testing.processes import REPO, subprocess_env

KEYS = st.text("abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=12)
SCALARS = (st.text(max_size=20) | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.booleans() | st.floats(allow_nan=False, allow_infinity=False))
VALUES = SCALARS | st.lists(SCALARS, max_size=3)


def typed(doc: dict[str, Any]) -> dict[str, tuple[type, Any]]:
    return {k: (type(v), v) for k, v in doc.items()}


def written(doc: dict[str, Any]) -> bytes:
    """The file as save_setting writes it."""
    return "".join(f"{k} = {_toml_literal(v)}\n" for k, v in sorted(doc.items())).encode()


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_what_the_writer_writes_reads_as_tomllib_reads_it(doc: dict[str, Any]) -> None:
    try:
        data = written(doc)
    except (ValueError, UnicodeEncodeError):  # the writer refuses these (lone surrogates)
        return
    fast = read_simple_toml(data)
    # types too: True == 1 for ==, and a flag read as a number would be a different setting
    assert fast is None or typed(fast) == typed(tomllib.loads(data.decode()))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS, st.text(st.characters(min_codepoint=0x20, blacklist_characters='"\\\x7f',
                                                   blacklist_categories=("Cs",)), max_size=20)
                       | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.booleans(),
                       max_size=6))
def test_plain_strings_numbers_and_flags_take_the_fast_path(doc: dict[str, Any]) -> None:
    data = written(doc)
    fast = read_simple_toml(data)
    assert fast is not None and typed(fast) == typed(tomllib.loads(data.decode())) == typed(doc)


@pytest.mark.parametrize("text", [
    'username = "a\\tb"\n',  # an escape
    'a = 1.5\n',  # a float
    'a = [1, 2]\n',  # a list
    '# comment\na = 1\n',
    'a = 1\n\nb = 2\n',  # a blank line
    '[table]\na = 1\n',
    'a = 1\r\n',  # CRLF
    'a = +1\n',
    'a = 1_000\n',
    'a = 0x10\n',
    'a=1\n',
    '  a = 1\n',
    '"a" = 1\n',
    'a = "tab\there"\n',
    'a = 9223372036854775808\n',  # past int64 (the settings' bounds then refuse it)
])
def test_anything_else_goes_to_tomllib(text: str) -> None:
    assert read_simple_toml(text.encode()) is None
    tomllib.loads(text)  # valid TOML all the same: tomllib reads it


@pytest.mark.parametrize("data", [
    b'a = 1\na = 2\n',  # a key given twice
    b'a = 01\n',  # a leading zero
    b'a = "open\n',
    b'a = \xff\n',  # not UTF-8
    b'a = tru\n',
    b'a = ' + b'9' * 5000 + b'\n',  # past int()'s digit limit: tomllib's ValueError
])
def test_bad_files_are_refused_by_tomllib_naming_the_file(tmp_path: Path, data: bytes) -> None:
    assert read_simple_toml(data) is None
    path = tmp_path / "config.toml"
    path.write_bytes(data)
    with pytest.raises(EngineError) as err:
        read_config_file(path)
    assert err.value.code.value == "CONFIG_INVALID" and str(path) in err.value.message


def test_a_missing_file_is_empty_and_a_folder_is_refused(tmp_path: Path) -> None:
    assert read_config_file(tmp_path / "none.toml") == {}
    (tmp_path / "file").write_text("")
    with pytest.raises(EngineError) as err:  # a data folder that is a file: said, not ignored
        read_config_file(tmp_path / "file" / "config.toml")
    assert err.value.code.value == "CONFIG_INVALID" and "file/config.toml" in err.value.message
    with pytest.raises(EngineError) as err:
        read_config_file(tmp_path)
    assert err.value.code.value == "CONFIG_INVALID" and str(tmp_path) in err.value.message


def test_a_logged_in_players_command_does_not_import_tomllib(tmp_path: Path) -> None:
    """What the fast path is for: settings load without the TOML parser's import."""
    (tmp_path / "config.toml").write_text('username = "игрок"\nconnections = 8\n', "utf-8")
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from engine.io.config import load_settings\n"
            f"s = load_settings({{'data_dir': Path({str(tmp_path)!r})}}, environ={{}})\n"
            "assert s.username == 'игрок' and s.connections == 8, s\n"
            "print('tomllib' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=subprocess_env(), cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out
