"""``launcher``: the desktop application (PySide6) on the engine daemon.

    launcher [--data DIR] [--backend URL]

Starts the engine daemon for the data dir when none runs, connects through the light client
and keeps reconnecting; one asyncio loop (qasync) runs on Qt's event loop, so the window never
waits on the network or the disk. ``--screenshots DIR`` renders every page into PNGs and exits
(for docs and visual checks; works offscreen). ``--version`` prints the version and exits.

Installed from the bundle (ROOT/versions/<v>/launcher), a start first lets the self-update pick
the build to run (launcher/selfupdate.py): a staged new build starts as a trial under this one,
which takes over again if the new build does not come up. ``--self-update`` stages the chosen
channel's latest build through the engine and exits (what the window does in the background).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

STARTED = time.monotonic()  # for the start-up probe: as early as the module loads


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from engine.api.client import default_data_dir

    ap = argparse.ArgumentParser(prog="launcher", description=__doc__.splitlines()[0])
    ap.add_argument("--data", dest="data_dir", type=Path, help="engine data folder")
    ap.add_argument("--backend", dest="backend_url",
                    help="backend URL for a daemon this starts (default: the engine's setting)")
    ap.add_argument("--screenshots", type=Path, help="save every page as PNG here and exit")
    ap.add_argument("--hidden", action="store_true",
                    help="start in the tray without showing the window (start with the system)")
    ap.add_argument("--no-daemon", action="store_true", help="connect only; never start one")
    ap.add_argument("--lang", choices=["en", "ru"], help="language (default: saved, else the system's)")
    ap.add_argument("--probe", type=Path, help="bench/ui.py: write start-up, loop lag, RSS here")
    ap.add_argument("--probe-seconds", type=float, default=5.0)
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    ap.add_argument("--self-update", action="store_true",
                    help="fetch, verify and stage the channel's latest launcher through the engine "
                         "(used at the next start), print the outcome as JSON and exit")
    ap.add_argument("--channel", choices=["stable", "beta"],
                    help="the launcher's update channel (kept for later starts)")
    args = ap.parse_args(argv)
    args.data_dir = (args.data_dir or default_data_dir()).expanduser().absolute()
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.version:
        from launcher.version import app_version

        print(f"launcher {app_version()}")
        return 0
    from launcher.selfupdate import managed_layout

    layout = managed_layout()
    if args.channel or args.self_update:
        from launcher.selfupdate import run_self_update

        return run_self_update(layout, args.data_dir, args.backend_url, args.channel,
                               stage=args.self_update)
    if layout is not None and args.screenshots is None:
        from launcher.selfupdate import supervise
        from launcher.version import app_version

        other = supervise(layout, app_version(), argv)
        if other is not None:  # another build ran (and has ended)
            return other
    import qasync
    from PySide6.QtWidgets import QApplication

    from ui.i18n import chosen_language, use_language
    from ui.link import EngineLink
    from ui.window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("game-launcher")
    app.setApplicationName("Game Launcher")
    use_language(chosen_language(args.lang))
    instance = None
    if args.probe is None and args.screenshots is None:
        from ui.instance import SingleInstance

        instance = SingleInstance()
        if not instance.acquire():
            print("the launcher is already running: its window was brought forward",
                  file=sys.stderr)
            return 0
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    link = EngineLink(args.data_dir, args.backend_url, start_daemon=not args.no_daemon, loop=loop)
    window = MainWindow(link)
    if not (args.hidden and window.tray is not None):  # no tray: a hidden window could not be found
        window.show()
    if instance is not None:
        instance.activated.connect(window.bring_forward)
    link.start()
    from PySide6.QtCore import QTimer

    from launcher.selfupdate import clear_trial_marker, stage_in_background

    # up: the window exists and the event loop turns. A trial of this build is confirmed now.
    QTimer.singleShot(0, clear_trial_marker)
    if layout is not None and args.probe is None:
        stage_in_background(layout, args.data_dir, args.backend_url)
    if args.probe is not None:
        from ui.probe import run_probe

        code_: int = loop.run_until_complete(
            run_probe(window, args.probe, STARTED, args.probe_seconds))
        loop.run_until_complete(link.close())
        return code_
    if args.screenshots is not None:
        from ui.screens import save_screenshots

        code: int = loop.run_until_complete(save_screenshots(window, args.screenshots))
        return code
    with loop:
        loop.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
