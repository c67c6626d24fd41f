"""The frozen bundle (launcher.spec via packaging/build.py): its executable as the launcher,
the engine CLI and the daemon; a headless install against the backend on loopback; the window
offscreen; the self-update of frozen builds through the engine, with a rollback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.api.client import read_info
from launcher.selfupdate import Layout, load_state
from launcher.version import app_version
from testing.enginekit import tree
from testing.processes import REPO
from tests.conftest import cli

pytestmark = pytest.mark.bundle
STABLE = "game-launcher-stable"
# system libraries a desktop has and the bundle does not carry (Wayland's own client libraries)
SYSTEM_ONLY = re.compile(r"^libwayland-")


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("LAUNCHER_BUNDLE_DIR")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(REPO / "packaging" / "build.py"), "--dist", str(out),
                    "--work", str(out / "work")], check=True, cwd=REPO, timeout=1800)
    return out


@pytest.fixture(scope="session")
def bundle(dist: Path) -> Path:
    return dist / "launcher"


def frozen_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"  # never the developer's
    env["QT_QPA_PLATFORM"] = "offscreen"
    env.update(extra)
    return env


def run(exe: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env=frozen_env(), cwd="/", check=False)


def stop_daemon(data_dir: Path) -> None:
    info = read_info(data_dir)
    if info is not None:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.kill(info.pid, 15)


def test_frozen_versions_come_from_pyproject(bundle: Path) -> None:
    assert run(bundle / "launcher", "--version").stdout.strip() == f"launcher {app_version()}"
    out = run(bundle / "launcher", "engine", "--version")
    assert out.stdout.strip() == f"launcher-engine {app_version()}", out.stderr


def test_bundle_carries_the_engines_compiled_dataclass_methods(bundle: Path) -> None:
    """A frozen engine never writes its own ``engine.codecache`` (PyInstaller turns bytecode
    writing off): the build makes it, where the frozen module looks, and it is read."""
    from engine import codecache

    caches = list((bundle / "_internal" / "engine" / "__pycache__").glob("dataclass-code.*.bin"))
    assert [c.name for c in caches] == [codecache.cache_path().name]
    # what the frozen engine reads: this interpreter's format, CRC-checked, whole (the frozen
    # module's own path resolves there: engine/codecache.pyc beside engine/__pycache__/)
    assert len(codecache._load(caches[0])) > 300
    out = run(bundle / "launcher", "engine", "--version")  # starts with the cache in place
    assert out.returncode == 0, out.stderr


def test_bundle_has_no_links_and_every_qt_library_resolves(bundle: Path) -> None:
    links = [p for p in bundle.rglob("*") if p.is_symlink()]
    assert links == []  # the publisher ships files only
    missing = []
    for lib in (bundle / "_internal" / "PySide6").rglob("*.so*"):
        out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, check=False,
                             env={"PATH": os.environ["PATH"]})  # no LD_LIBRARY_PATH: RUNPATH only
        missing += [f"{lib.name}: {line.split()[0]}" for line in out.stdout.splitlines()
                    if "not found" in line and not SYSTEM_ONLY.match(line.strip())]
    assert missing == []
    plugins = {p.parent.name + "/" + p.name for p in
               (bundle / "_internal" / "PySide6" / "Qt" / "plugins").rglob("*.so")}
    assert "platforms/libqxcb.so" in plugins and "platforms/libqoffscreen.so" in plugins
    assert not any(p.startswith(("sqldrivers/", "qmltooling/", "printsupport/")) for p in plugins)
    assert not list((bundle / "_internal" / "PySide6").glob("QtQml*"))


def test_tarball_is_an_install_root_with_a_desktop_entry(dist: Path) -> None:
    tarballs = list(dist.glob("game-launcher-*-linux-*.tar.gz"))
    assert len(tarballs) == 1
    with tarfile.open(tarballs[0]) as tar:
        members = {m.name: m for m in tar.getmembers()}
    version = app_version()
    assert members["game-launcher/current"].issym()
    assert members["game-launcher/current"].linkname == f"versions/{version}"
    assert f"game-launcher/versions/{version}/launcher" in members
    for name in ("launcher", "launcher-engine", "install-desktop-entry.sh",
                 "share/game-launcher.desktop", "share/icons/game-launcher.png"):
        assert f"game-launcher/{name}" in members, name


def test_frozen_headless_install_against_the_backend(bundle: Path, backend: Any,
                                                     published_store: Any, tmp_path: Path) -> None:
    product = published_store.main
    name, _ = backend.new_user(products=[product.product_id])
    data = tmp_path / "data"
    engine = [str(bundle / "launcher"), "engine", "--data", str(data), "--backend", backend.url,
              "--json"]
    login = subprocess.run([*engine, "login", name, "--password", "secret-pw"],
                           capture_output=True, text=True, env=frozen_env(), timeout=120)
    assert login.returncode == 0, login.stderr
    target = tmp_path / "game"
    proc = subprocess.run([*engine, "install", product.product_id, "--version",
                           product.versions[0], "--target", str(target)], capture_output=True,
                          text=True, env=frozen_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["result"] == "completed"
    assert tree(target) == tree(published_store.builds / product.product_id / product.versions[0])


@pytest.fixture()
def launcher_data(backend: Any, bundle: Path, tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    """An engine data dir logged in as a player who owns the launcher products; the daemon the
    frozen launcher starts is stopped afterwards."""
    name, _ = backend.new_user(products=[STABLE])
    data = tmp_path / "data"
    login = subprocess.run([str(bundle / "launcher"), "engine", "--data", str(data), "--backend",
                            backend.url, "login", name, "--password", "secret-pw"],
                           capture_output=True, text=True, env=frozen_env(), timeout=120)
    assert login.returncode == 0, login.stderr
    yield data, backend
    stop_daemon(data)


def test_frozen_window_runs_offscreen_and_exits_cleanly(bundle: Path, launcher_data: Any,
                                                        tmp_path: Path) -> None:
    data, backend = launcher_data
    probe = tmp_path / "probe.json"
    proc = run(bundle / "launcher", "--data", str(data), "--backend", backend.url, "--probe",
               str(probe), "--probe-seconds", "3")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(probe.read_text())
    assert report["probe_ticks"] > 0  # the event loop ran with the window up
    assert read_info(data) is not None  # the frozen launcher started its engine daemon


def _frozen_build(bundle: Path, dest: Path, version: str, broken: bool = False) -> Path:
    """A copy of the bundle that says ``version`` (its distribution metadata: what --version and
    the About box read); ``broken``: QtWidgets left out, as a bad build would, so it dies at
    start."""
    shutil.copytree(bundle, dest)
    metas = [*(dest / "_internal").glob("game_launcher*.dist-info/METADATA"),
             *(dest / "_internal").glob("game_launcher*.egg-info/PKG-INFO")]
    assert metas
    for meta in metas:
        text = re.sub(r"(?m)^Version: .*$", f"Version: {version}", meta.read_text())
        meta.write_text(text)
    if broken:
        for lib in (dest / "_internal" / "PySide6").glob("QtWidgets*"):
            lib.unlink()
    return dest


def test_frozen_self_update_and_rollback(bundle: Path, launcher_data: Any,
                                         tmp_path: Path) -> None:
    data, backend = launcher_data
    builds = tmp_path / "builds"
    for version, broken in (("1.1.0", False), ("1.2.0", True)):
        _frozen_build(bundle, builds / version, version, broken)
    root = tmp_path / "game-launcher"
    _frozen_build(bundle, root / "versions" / "1.0.0", "1.0.0")
    os.symlink("versions/1.0.0", root / "current")
    layout = Layout(root)
    exe = root / "current" / "launcher"
    common = ("--data", str(data), "--backend", backend.url)

    def publish(version: str) -> None:
        cli("publish", "--store", str(backend.store_dir), "--product", STABLE, "--version",
            version, str(builds / version), timeout=900)

    def restart() -> subprocess.CompletedProcess[str]:
        return run(exe, *common, "--probe", str(tmp_path / "probe.json"), "--probe-seconds", "1")

    publish("1.1.0")
    out = run(exe, *common, "--self-update", timeout=900)
    staged = json.loads(out.stdout.splitlines()[-1])
    assert (staged["result"], staged["version"]) == ("stage", "1.1.0"), (staged, out.stderr)
    assert run(exe, "--version").stdout.strip() == "launcher 1.0.0"  # not switched yet
    proc = restart()
    assert proc.returncode == 0, proc.stderr
    assert load_state(layout).current == "1.1.0"
    assert run(exe, "--version").stdout.strip() == "launcher 1.1.0"

    publish("1.2.0")
    out = run(exe, *common, "--self-update", timeout=900)
    staged = json.loads(out.stdout.splitlines()[-1])
    assert (staged["result"], staged["version"]) == ("stage", "1.2.0"), (staged, out.stderr)
    # an update of a build already installed moves the changes only
    assert staged["downloadedBytes"] < 5_000_000, staged
    proc = restart()
    assert proc.returncode == 0, proc.stderr  # 1.1 took over after 1.2 failed
    assert "QtWidgets" in proc.stderr  # 1.2 did start, and died on the missing library
    state = load_state(layout)
    assert state.current == "1.1.0" and "1.2.0" in state.rejected
    assert run(exe, "--version").stdout.strip() == "launcher 1.1.0"
