"""Engine settings: config file < environment < command-line flags.

The file is ``<data dir>/config.toml`` (flat ``key = value``); environment variables are
``LAUNCHER_ENGINE_<KEY>`` (upper case). A bad value is refused with an error naming the key and
where it came from.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from engine.errors import EngineError

APP_NAME = "game-launcher"
ENV_PREFIX = "LAUNCHER_ENGINE_"


@dataclass(frozen=True)
class Settings:
    backend_url: str = "http://127.0.0.1:8700"
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir(APP_NAME)))
    library_dir: Path | None = None  # where games install; default <data_dir>/library
    max_concurrent_tasks: int = 1
    connections: int = 6  # parallel range requests per task
    max_range_bytes: int = 16 * 1024 * 1024
    max_gap_bytes: int = 256 * 1024  # fetch a gap this small rather than a second request
    inflight_bytes: int = 48 * 1024 * 1024  # bound on downloaded-but-unwritten data
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
    username: str | None = None

    @property
    def library(self) -> Path:
        return self.library_dir if self.library_dir is not None else self.data_dir / "library"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.toml"


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(key: str, value: Any, origin: str) -> Any:
    f = _FIELDS.get(key)
    if f is None:
        raise EngineError("CONFIG_INVALID", f"unknown setting {key!r} in {origin}")
    kind = str(f.type)
    try:
        if value is None or (isinstance(value, str) and value == "" and "None" in kind):
            return None
        if kind.startswith("Path"):
            return Path(value).expanduser()
        if kind.startswith("int"):
            if isinstance(value, bool):
                raise ValueError("boolean where a number belongs")
            number = int(value)
            if number < 0:
                raise ValueError("must not be negative")
            return number
        if kind.startswith("float"):
            number_f = float(value)
            if number_f <= 0:
                raise ValueError("must be positive")
            return number_f
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError("expected true or false")
            return text in ("1", "true", "yes")
        if kind.startswith("tuple"):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(";") if v.strip())
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of strings")
            return tuple(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise EngineError("CONFIG_INVALID", f"{key} = {value!r} in {origin}: {exc}") from exc


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
        raise EngineError("CONFIG_INVALID", f"{path}: {exc}") from exc


def load_settings(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Merge defaults, the config file, the environment and flags (later wins)."""
    env = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    values: dict[str, Any] = {}
    data_dir = flags.get("data_dir") or env.get(ENV_PREFIX + "DATA_DIR")
    base = Settings() if data_dir is None else Settings(data_dir=Path(data_dir).expanduser())
    for key, value in read_config_file(base.config_file).items():
        values[key] = _coerce(key, value, str(base.config_file))
    for key in _FIELDS:
        if ENV_PREFIX + key.upper() in env:
            values[key] = _coerce(key, env[ENV_PREFIX + key.upper()], ENV_PREFIX + key.upper())
    for key, value in flags.items():
        values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    values["data_dir"] = base.data_dir
    settings = dataclasses.replace(base, **values)
    if settings.connections < 1 or settings.max_concurrent_tasks < 1:
        raise EngineError("CONFIG_INVALID", "connections and max_concurrent_tasks must be >= 1")
    return settings


def save_setting(settings: Settings, key: str, value: Any) -> Settings:
    """Persist one setting in the config file (validated first) and return the new settings."""
    coerced = _coerce(key, value, "command")
    current = read_config_file(settings.config_file)
    current[key] = _toml_value(coerced)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} = {_toml_literal(v)}" for k, v in sorted(current.items()) if v is not None]
    tmp = settings.config_file.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, settings.config_file)
    return dataclasses.replace(settings, **{key: coerced})


def _toml_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
