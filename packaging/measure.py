"""The packaging figures of docs/benchmarks.md: bundle and tarball size, the launcher update
download for a one-line code change, and the frozen launcher's start-up to its window.

    .venv/bin/python packaging/measure.py [--dist DIST] [--runs 5] [--json]

Builds the bundle from this tree (or takes DIST/launcher from packaging/build.py) and a second
one from a copy of the tree with one line of launcher/version.py changed; publishes both as
game-launcher-stable 1.0.0 and 1.1.0 to a backend on loopback; the engine installs 1.0.0 and
updates it to 1.1.0 (its downloadedBytes is the figure). Start-up: the frozen launcher starts
offscreen with a start marker, as a trial would; the time until it deletes the marker (window
shown, event loop turning) is measured from outside, median of --runs, the daemon running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testing.enginekit import EngineCli  # noqa: E402  (a checkout tool, never shipped)

CHANGED_LINE = ('        return "0+unknown"\n', '        return "0+unknown-source"\n')


def build(tree: Path, dist: Path, tarball: bool) -> dict[str, object]:
    args = [sys.executable, str(tree / "packaging" / "build.py"), "--dist", str(dist), "--work",
            str(dist / "work"), "--json", *([] if tarball else ["--no-tarball"])]
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=tree)
    report: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def one_line_changed_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    version_py = dest / "launcher" / "version.py"
    text = version_py.read_text()
    assert CHANGED_LINE[0] in text
    version_py.write_text(text.replace(*CHANGED_LINE))
    (dest / "game_launcher.egg-info").mkdir(exist_ok=True)  # the metadata copy_metadata reads
    for meta in (ROOT / "game_launcher.egg-info").iterdir():
        shutil.copy2(meta, dest / "game_launcher.egg-info" / meta.name)
    return dest


def startup_seconds(bundle: Path, data: Path, backend_url: str, runs: int) -> list[float]:
    times = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(QT_QPA_PLATFORM="offscreen", PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    for i in range(runs + 1):  # the first run also starts the daemon: not counted
        marker = data.parent / f"marker-{i}"
        marker.write_text("")
        probe = data.parent / f"probe-{i}.json"
        started = time.perf_counter()
        proc = subprocess.Popen([str(bundle / "launcher"), "--data", str(data), "--backend",
                                 backend_url, "--probe", str(probe), "--probe-seconds", "1"],
                                env={**env, "GAME_LAUNCHER_TRIAL_MARKER": str(marker)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while marker.exists() and proc.poll() is None:
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        proc.wait(timeout=120)
        if marker.exists():
            raise RuntimeError("the frozen launcher ended without showing its window")
        if i:
            times.append(elapsed)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dist", type=Path, help="a packaging/build.py output (else built here)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from tests.conftest import _start_backend

    with tempfile.TemporaryDirectory(prefix="launcher-measure-") as tmp_name:
        tmp = Path(tmp_name)
        if args.dist is None:
            report_a = build(ROOT, tmp / "a", tarball=True)
            dist_a = tmp / "a"
        else:
            dist_a = args.dist
            tar = next(dist_a.glob("game-launcher-*.tar.gz"), None)
            report_a = {"bundleBytes": sum(p.lstat().st_size for p in (dist_a / "launcher")
                                           .rglob("*") if p.is_file()),
                        "tarballBytes": tar.stat().st_size if tar else None}
        build(one_line_changed_copy(tmp / "tree-b"), tmp / "b", tarball=False)
        exe_a = (dist_a / "launcher" / "launcher").read_bytes()
        exe_b = (tmp / "b" / "launcher" / "launcher").read_bytes()
        assert exe_a != exe_b, "the second build did not take the changed line"
        server = _start_backend(tmp / "backend", None, None)
        try:
            product = "game-launcher-stable"
            for version, dist in (("1.0.0", dist_a), ("1.1.0", tmp / "b")):
                subprocess.run([sys.executable, "-m", "backend.cli", "publish", "--store",
                                str(server.store_dir), "--product", product, "--version",
                                version, str(dist / "launcher")], check=True, cwd=ROOT,
                               capture_output=True)
            os.environ.setdefault("LAUNCHER_BCRYPT_ROUNDS", "4")
            server.add_user("measure", "secret-pw")
            server.grant("measure", product)
            engine = EngineCli(tmp / "engine", server.url,
                               {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})
            engine.login("measure", "secret-pw")
            slot = tmp / "slot"
            install = engine.ok("install", product, "--version", "1.0.0", "--target", str(slot))
            update = engine.ok("update", product, "--version", "1.1.0")
            full = install[-1]["task"]["downloadedBytes"]
            delta = update[-1]["task"]["downloadedBytes"]
            times = startup_seconds(dist_a / "launcher", tmp / "gui-data", server.url, args.runs)
        finally:
            from engine.api.client import read_info

            info = read_info(tmp / "gui-data")
            if info is not None:
                os.kill(info.pid, 15)
            server.stop()
    result = {"bundleBytes": report_a["bundleBytes"], "tarballBytes": report_a["tarballBytes"],
              "fullInstallDownloadBytes": full, "updateDownloadBytes": delta,
              "startupToWindowSeconds": [round(t, 3) for t in times],
              "startupMedianSeconds": round(statistics.median(times), 3)}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:26} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
