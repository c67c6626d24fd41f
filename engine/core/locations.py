"""Where the engine lives by default: one place for the names every entry point resolves."""

from __future__ import annotations

APP_NAME = "game-launcher"  # the platformdirs application name of the data folder
ENV_PREFIX = "LAUNCHER_ENGINE_"  # environment overrides: LAUNCHER_ENGINE_<SETTING>
DEFAULT_BACKEND_URL = "http://127.0.0.1:8700"
