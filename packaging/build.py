"""Build the desktop bundle (launcher.spec) and, on Linux, the tarball a player unpacks.

    .venv/bin/python packaging/build.py [--dist dist] [--work build/pyinstaller] [--no-tarball] [--json]

Output: ``DIST/launcher/`` (the one-folder bundle, also what ``launcher-backend publish`` takes as
a launcher build: no links, see below) and ``DIST/game-launcher-<v>-linux-<arch>.tar.gz``:

    game-launcher/launcher, launcher-engine    start scripts: run ``current/launcher``
    game-launcher/current -> versions/<v>      switched by the self-update
    game-launcher/versions/<v>/                the bundle
    game-launcher/share/game-launcher.desktop, share/icons/game-launcher.png
    game-launcher/install-desktop-entry.sh     puts the menu entry and icon in ~/.local/share

The same spec builds on Windows and macOS (docs/packaging.md); only the tarball step is Linux's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = "game-launcher"

START_SCRIPT = """#!/bin/sh
# Starts the launcher build the self-update chose (ROOT/current; launcher/selfupdate.py).
here=$(dirname "$(readlink -f "$0")")
exec "$here/current/launcher" {extra}"$@"
"""
DESKTOP = """[Desktop Entry]
Type=Application
Name=Game Launcher
Name[ru]=Игровой лаунчер
Comment=Downloads and plays your games
Comment[ru]=Скачивает игры и запускает их
Exec={exec} %U
Icon={icon}
Terminal=false
Categories=Game;
StartupWMClass=launcher
"""
INSTALL_ENTRY = """#!/bin/sh
# Adds Game Launcher to the desktop's menu (for this user): the .desktop file and its icon.
set -eu
here=$(dirname "$(readlink -f "$0")")
data=${XDG_DATA_HOME:-$HOME/.local/share}
mkdir -p "$data/applications" "$data/icons/hicolor/256x256/apps"
cp "$here/share/icons/game-launcher.png" "$data/icons/hicolor/256x256/apps/game-launcher.png"
sed "s|^Exec=.*|Exec=\\"$here/launcher\\" %U|" "$here/share/game-launcher.desktop" \\
  > "$data/applications/game-launcher.desktop"
echo "Game Launcher added to the menu ($data/applications/game-launcher.desktop)"
"""


# what a bundled engine imports on its way to an install's first byte
WARM = ("import importlib\n"
        "import engine.cli.main, engine.api.service, engine.api.daemon\n"
        "from engine.jobs.install import PIPELINE\n"
        "for name in PIPELINE:\n"
        "    importlib.import_module(name)\n"
        "from engine import codecache\n"
        "print(codecache.cache_path())\n")


def make_dataclass_cache(work: Path) -> Path | None:
    """The compiled methods of the engine's dataclasses (``engine.codecache``), made here and
    carried in the bundle: a frozen engine never writes its own (PyInstaller turns bytecode
    writing off), so without it every bundled start would compile them again (~28 ms)."""
    prefix = work / "codecache"
    shutil.rmtree(prefix, ignore_errors=True)  # this build's methods only, none of an older one
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(prefix)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    out = subprocess.run([sys.executable, "-c", WARM], env=env, cwd=ROOT, check=False,
                         capture_output=True, text=True)
    if out.returncode != 0:  # the bundle works without it: it compiles them at each start
        print(f"warning: no dataclass cache for the bundle:\n{out.stderr[-2000:]}",
              file=sys.stderr)
        return None
    path = Path(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else None
    return path if path is not None and path.is_file() else None


def run_pyinstaller(dist: Path, work: Path) -> Path:
    env = dict(os.environ)
    env.pop("LAUNCHER_DATACLASS_CACHE", None)  # only the one made here
    cache = make_dataclass_cache(work)
    if cache is not None:  # launcher.spec carries it beside the bundled engine's modules
        env["LAUNCHER_DATACLASS_CACHE"] = str(cache)
    subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean",
                    "--log-level", "WARN", "--distpath", str(dist), "--workpath", str(work),
                    str(ROOT / "launcher.spec")], check=True, cwd=ROOT, env=env)
    return dist / "launcher"


def remove_links(bundle: Path) -> int:
    """PyInstaller 6 puts links to the shared libraries of subfolders at the top of _internal/
    (for lookups by LD_LIBRARY_PATH). Every Qt library and plugin finds its own by RUNPATH, so
    they are redundant; and the publisher refuses links (a build is files), so they go. A link
    elsewhere is replaced by a copy of its target. Returns how many links were removed."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(bundle):
        for name in [*filenames, *dirnames]:
            p = Path(dirpath) / name
            if not p.is_symlink():
                continue
            target = p.resolve()
            top_level = p.parent.name == "_internal" and target.is_relative_to(bundle)
            p.unlink()
            if not top_level:
                if target.is_dir():
                    shutil.copytree(target, p)
                else:
                    shutil.copy2(target, p)
            removed += 1
    return removed


def bundle_version(bundle: Path) -> str:
    exe = bundle / ("launcher.exe" if sys.platform == "win32" else "launcher")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True,
                         timeout=120)
    return out.stdout.split()[-1]


def tree_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def make_tarball(bundle: Path, version: str, dist: Path) -> Path:
    """The Linux tarball: an install root as launcher/selfupdate.py lays it out."""
    stage = dist / f".{APP}-tarball"
    shutil.rmtree(stage, ignore_errors=True)
    top = stage / APP
    (top / "versions").mkdir(parents=True)
    shutil.copytree(bundle, top / "versions" / version, symlinks=True)
    os.symlink(Path("versions") / version, top / "current")
    for name, extra in (("launcher", ""), ("launcher-engine", "engine ")):
        (top / name).write_text(START_SCRIPT.format(extra=extra))
        (top / name).chmod(0o755)
    (top / "share" / "icons").mkdir(parents=True)
    shutil.copy2(ROOT / "resources" / f"{APP}.png", top / "share" / "icons" / f"{APP}.png")
    (top / "share" / f"{APP}.desktop").write_text(DESKTOP.format(exec="launcher", icon=APP))
    (top / "install-desktop-entry.sh").write_text(INSTALL_ENTRY)
    (top / "install-desktop-entry.sh").chmod(0o755)
    out = dist / f"{APP}-{version}-linux-{platform.machine()}.tar.gz"
    with tarfile.open(out, "w:gz", compresslevel=9) as tar:
        tar.add(top, arcname=APP)
    shutil.rmtree(stage)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dist", type=Path, default=ROOT / "dist")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller")
    ap.add_argument("--no-tarball", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    args = ap.parse_args(argv)
    started = time.monotonic()
    bundle = run_pyinstaller(args.dist.absolute(), args.work.absolute())
    links = remove_links(bundle)
    version = bundle_version(bundle)
    report: dict[str, object] = {"bundle": str(bundle), "version": version, "linksRemoved": links,
                                 "bundleBytes": tree_bytes(bundle)}
    if sys.platform.startswith("linux") and not args.no_tarball:
        tarball = make_tarball(bundle, version, args.dist.absolute())
        report.update(tarball=str(tarball), tarballBytes=tarball.stat().st_size)
    report["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:14} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
