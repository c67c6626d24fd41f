"""Start with the system: the freedesktop autostart entry (``~/.config/autostart``), which
GNOME, KDE, Xfce and most other Linux desktops read at login. The launcher then starts in the
tray (``--hidden``), as Steam does. Windows (the ``Run`` registry key) and macOS (a LaunchAgent
plist) take the same command line; the packaging issue wires those up with the bundle."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

ENTRY_NAME = "game-launcher.desktop"


def autostart_file() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "autostart" / ENTRY_NAME


def launch_command(data_dir: Path | None = None) -> list[str]:
    """The command that starts this launcher in the tray: the frozen bundle's own executable,
    else this Python running the launcher module."""
    base = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m",
                                                                    "launcher.app"]
    return base + (["--data", str(data_dir)] if data_dir else []) + ["--hidden"]


def desktop_entry(command: list[str]) -> str:
    return "\n".join([
        "[Desktop Entry]", "Type=Application", "Name=Game Launcher",
        "Comment=Downloads and plays your games",
        f"Exec={shlex.join(command)}", "Icon=game-launcher", "Terminal=false",
        "X-GNOME-Autostart-enabled=true", ""])


def is_enabled() -> bool:
    return autostart_file().is_file()


def set_enabled(enabled: bool, data_dir: Path | None = None) -> None:
    """Write (atomically) or remove our entry; any other file there is never touched."""
    path = autostart_file()
    if not enabled:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(desktop_entry(launch_command(data_dir)), encoding="utf-8")
    os.replace(tmp, path)
