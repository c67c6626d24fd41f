"""Small launcher builds for the self-update tests: real executables (a Python script with the
real self-update code: supervise, the start marker, --self-update through the real engine CLI),
each with a payload of a few MB like a bundle's libraries, without building with PyInstaller.

    fake_bundle(folder, version, behaviour)   behaviour: ok | crash | hang
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """#!{python}
# a fake launcher build {version} ({behaviour}) for tests/packaging
import sys
sys.path.insert(0, {repo!r})
from tests.packaging.fakebundle import main
sys.exit(main({version!r}, {behaviour!r}, sys.argv[1:]))
"""


def fake_bundle(folder: Path, version: str, behaviour: str = "ok") -> Path:
    folder.mkdir(parents=True)
    exe = folder / "launcher"
    exe.write_text(SCRIPT.format(python=sys.executable, repo=str(REPO), version=version,
                                 behaviour=behaviour))
    exe.chmod(0o755)
    lib = folder / "_internal"
    lib.mkdir()
    rng = random.Random(7)  # the same "libraries" in every version: an update reuses them
    (lib / "libbig.so").write_bytes(rng.randbytes(3 << 20))
    (lib / "version.txt").write_text(f"{version}\n")
    return folder


def main(version: str, behaviour: str, argv: list[str]) -> int:
    """What launcher/app.py does around its window, with the window replaced by a line in
    ROOT/runs.log (which build ran) and the behaviour of a broken build."""
    import argparse

    from launcher.selfupdate import clear_trial_marker, managed_layout, run_self_update, supervise

    if argv[:1] == ["--version"]:
        print(f"launcher {version}")
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path)
    ap.add_argument("--backend")
    ap.add_argument("--channel")
    ap.add_argument("--self-update", action="store_true")
    args = ap.parse_args(argv)
    layout = managed_layout(Path(sys.argv[0]).resolve().parent)  # the script's own folder
    if args.channel or args.self_update:
        assert args.data is not None
        return run_self_update(layout, args.data, args.backend, args.channel,
                               stage=args.self_update)
    if layout is not None:
        other = supervise(layout, version, argv)
        if other is not None:
            return other
    if behaviour == "crash":  # e.g. a library missing from the build: it dies at start
        print(f"launcher {version}: cannot start", file=sys.stderr)
        return 3
    if behaviour == "hang":  # never gets its window up
        import time

        if layout is not None:  # past its own start (supervise): a test may now kill it
            (layout.root / f"hanging-{version}").write_text(f"{os.getpid()}\n")
        time.sleep(600)
        return 0
    clear_trial_marker()  # the window is up
    if layout is not None:
        with (layout.root / "runs.log").open("a") as fh:
            fh.write(f"{version}\n")
    return 0
