"""Engine settings: config file < environment < command-line flags.

The file is ``<data dir>/config.toml`` (flat ``key = value``); environment variables are
``LAUNCHER_ENGINE_<KEY>`` (upper case). Every value, whatever its origin (file, environment,
flag, the ``settings`` command), is checked in one place, ``_coerce`` with the ``BOUNDS`` table
next to ``Settings``: a bad value is refused with ``CONFIG_INVALID`` naming the key, the value
and where it came from, and nothing is written. ``save_setting`` writes the file atomically
(temporary file, fsync, rename, fsync of the folder) and only text that reads back to the same
values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.core.errors import EngineError, ErrorCode
from engine.core.locations import APP_NAME, DEFAULT_BACKEND_URL, ENV_PREFIX
from engine.core.text import INT64_MAX, check_text, show

# platformdirs, tempfile, the storage-error translation, the TOML parser (when there is a file)
# and the schedule's rules (datetime: when a schedule is set) are imported where used: every CLI
# command (the daemon's light client too) reads its settings, and these are 20-30 ms of a start
# that seldom needs them (the data folder named on the command line, nothing written)

MAX_WINDOWS = 32


def _default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME))


@dataclass(frozen=True)
class Settings:
    """The engine's settings (each field a setting: ``config.toml`` key, environment
    variable, flag)."""

    backend_url: str = DEFAULT_BACKEND_URL
    data_dir: Path = field(default_factory=lambda: _default_data_dir())
    library_dir: Path | None = None  # where games install; default <data_dir>/library
    max_concurrent_tasks: int = 1
    connections: int = 6  # parallel range requests per task
    max_range_bytes: int = 16 * 1024 * 1024
    max_gap_bytes: int = 256 * 1024  # fetch a gap this small rather than a second request
    global_limit_bps: int | None = None
    stall_timeout_s: float = 15.0
    connect_timeout_s: float = 10.0
    max_attempts: int = 6
    token_refresh_margin_s: float = 60.0
    progress_interval_s: float = 0.25
    schedule: tuple[str, ...] = ()
    use_keyring: bool = True
    keep_free_bytes: int = 0  # refuse installs that would leave less free space than this
    qa_switch_delay_s: float | None = None  # QA fault injection: pause between switch renames
    auto_update: bool = True  # queue updates of installed games when the backend has them
    gameplay_downloads: str = "throttle"  # while a game runs: pause | throttle | continue
    # staged files written past the page cache (O_DIRECT): auto (games from 2 GiB) | on | off
    direct_writes: str = "auto"
    gameplay_limit_bps: int = 2_000_000  # the rate of "throttle"
    preferred_cdn: str | None = None  # an edge id tried first (the fastest healthy one otherwise)
    heartbeat_interval_s: float = 60.0  # playtime heartbeats while a game runs
    username: str | None = None

    @property
    def library(self) -> Path:
        return self.library_dir if self.library_dir is not None else self.data_dir / "library"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.toml"


# Inclusive ranges of the numeric settings (an optional one may also be unset: None).
BOUNDS: dict[str, tuple[float, float]] = {
    "max_concurrent_tasks": (1, 16),
    "connections": (1, 64),
    "max_range_bytes": (64 * 1024, 1 << 30),
    "max_gap_bytes": (0, 64 << 20),
    "global_limit_bps": (1, INT64_MAX),  # unset (empty value) = unlimited
    "stall_timeout_s": (0.1, 3600.0),
    "connect_timeout_s": (0.1, 600.0),
    "max_attempts": (1, 100),
    "token_refresh_margin_s": (0.1, 3600.0),
    "progress_interval_s": (0.01, 60.0),
    "keep_free_bytes": (0, INT64_MAX),
    "qa_switch_delay_s": (0.0, 600.0),
    "gameplay_limit_bps": (1, INT64_MAX),
    "heartbeat_interval_s": (0.05, 3600.0),
}
CHOICES: dict[str, tuple[str, ...]] = {"gameplay_downloads": ("pause", "throttle", "continue"),
                                       "direct_writes": ("auto", "on", "off")}

_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
def _convert(kind: str, value: Any) -> Any:
    """The value as the field's type (ValueError/TypeError when it is not one)."""
    if kind.startswith("Path"):
        if not isinstance(value, str | os.PathLike):
            raise TypeError("expected a path")
        return Path(check_text(os.fspath(value))).expanduser()
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError("expected a whole number")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("expected a whole number")
            return int(value)
        return int(value.strip()) if isinstance(value, str) else value
    if kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError("expected a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError("expected true or false")
        return text in ("1", "true", "yes")
    if kind.startswith("tuple"):
        if isinstance(value, str):
            return tuple(v.strip() for v in check_text(value).split(";") if v.strip())
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TypeError("expected a list of strings")
        return tuple(check_text(v).strip() for v in value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError("expected a string")
    return check_text(str(value))


def _validate(key: str, value: Any) -> None:
    """Per-key rules beyond the type: ranges, URL shape, schedule windows."""
    if key in BOUNDS:
        low, high = BOUNDS[key]
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}" if isinstance(low, float)
                             else f"must be between {low} and {high}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError("expected one of " + ", ".join(CHOICES[key]))
    if key == "backend_url":
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
    if key == "schedule":
        if len(value) > MAX_WINDOWS:
            raise ValueError(f"at most {MAX_WINDOWS} windows")
        for window in value:
            if ";" in window:
                raise ValueError(f"window {window!r} contains ';'")
            from engine.core.schedule import parse_window

            parse_window(window)


def _coerce(key: str, value: Any, origin: str) -> Any:
    """The one place a setting is checked: type, range and content, whatever its origin."""
    f = _FIELDS.get(key)
    if f is None:
        raise EngineError(ErrorCode.CONFIG_INVALID, f"unknown setting {show(key)} in {origin}", item=key)
    kind = str(f.type)
    try:
        if value is None or (isinstance(value, str) and value == "" and "None" in kind):
            if "None" not in kind:
                raise ValueError("a value is required")
            return None
        converted = _convert(kind, value)
        _validate(key, converted)
        return converted
    except (TypeError, ValueError, OverflowError) as exc:
        raise EngineError(ErrorCode.CONFIG_INVALID, f"{key} = {show(value)} in {origin}: {exc}",
                          item=key) from exc


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise EngineError(ErrorCode.CONFIG_INVALID, f"{path}: {exc}") from exc
    simple = read_simple_toml(data)
    if simple is not None:
        return simple
    import tomllib

    try:
        return tomllib.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, bad UTF-8, a 5,000-digit int
        raise EngineError(ErrorCode.CONFIG_INVALID, f"{path}: {exc}") from exc


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def read_simple_toml(data: bytes) -> dict[str, Any] | None:
    """The config file as ``save_setting`` writes it for most players, read without tomllib
    (importing it is ~6 ms of every command's start, a logged-in player's file holding at least
    the username): one ``key = value`` per line, the value a string with no escape or control
    character, a decimal integer within int64, ``true`` or ``false``. None for anything else
    (escapes, floats, lists, comments, blank lines, tables, a key given twice, CRLF, bad
    UTF-8): tomllib reads those, and says what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    out: dict[str, Any] = {}
    for line in lines:
        key, sep, value = line.partition(" = ")
        if not sep or not key or not _BARE_KEY.issuperset(key) or key in out:
            return None
        if value in ("true", "false"):
            out[key] = value == "true"
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            inner = value[1:-1]
            if '"' in inner or "\\" in inner or any(ch < " " or ch == "\x7f" for ch in inner):
                return None
            out[key] = inner
        else:
            digits = value[1:] if value.startswith("-") else value
            if not (digits.isascii() and digits.isdigit()) or (len(digits) > 1 and digits[0] == "0") \
                    or len(digits) > 19:  # past int64 (and before int()'s digit limit)
                return None
            number = int(value)
            if not -INT64_MAX - 1 <= number <= INT64_MAX:
                return None
            out[key] = number
    return out


def load_settings(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Merge defaults, the config file, the environment and flags (later wins)."""
    env = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    values: dict[str, Any] = {}
    # an empty value is none (the default folder), as the daemon's clients look it up
    data_dir = flags.get("data_dir") or env.get(ENV_PREFIX + "DATA_DIR") or None
    base = Settings() if data_dir is None else Settings(
        data_dir=_coerce("data_dir", data_dir, "--data" if "data_dir" in flags
                         else ENV_PREFIX + "DATA_DIR"))
    for key, value in read_config_file(base.config_file).items():
        values[key] = _coerce(key, value, str(base.config_file))
    for key in _FIELDS:
        if ENV_PREFIX + key.upper() in env:
            values[key] = _coerce(key, env[ENV_PREFIX + key.upper()], ENV_PREFIX + key.upper())
    for key, value in flags.items():
        values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    values["data_dir"] = base.data_dir
    return dataclasses.replace(base, **values)


def save_setting(settings: Settings, key: str, value: Any, origin: str = "settings") -> Settings:
    """Persist one setting in the config file (validated first) and return the new settings.

    A refused value leaves the file untouched. The file is rewritten whole, from validated
    values, and only if its text reads back to exactly those values.
    """
    coerced = _coerce(key, value, origin)
    path = settings.config_file
    current = {k: _coerce(k, v, str(path)) for k, v in read_config_file(path).items()}
    current[key] = coerced
    document = {k: _toml_value(v) for k, v in sorted(current.items()) if v is not None}
    import tomllib

    try:
        text = "".join(f"{k} = {_toml_literal(v)}\n" for k, v in document.items())
        if tomllib.loads(text) != document:
            raise ValueError("the written text would not read back to the same values")
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise EngineError(ErrorCode.CONFIG_INVALID, f"{key} = {show(value)}: cannot be written to "
                          f"{path}: {exc}", item=key) from exc
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode("utf-8"))
    except OSError as exc:
        from engine.io.fsops import storage_error

        raise storage_error(exc, f"writing {path}", settings.data_dir) from exc
    return dataclasses.replace(settings, **{key: coerced})


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file, never a mix:
    a temporary file in the same folder, fsync, rename over, fsync of the folder."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _toml_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string for any text a UTF-8 file can hold (ValueError for lone surrogates)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"lone surrogate U+{code:04X} cannot be written as UTF-8")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise ValueError(f"{value} does not fit a TOML integer")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return _toml_string(value)
    raise ValueError(f"cannot write a {type(value).__name__} to the config file")
