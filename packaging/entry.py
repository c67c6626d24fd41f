"""The frozen bundle's one executable: the launcher, and the engine behind ``engine``.

    launcher [ARGS]                   the desktop application (launcher.app)
    launcher engine [ARGS]            launcher-engine: the daemon (``engine serve``) and the CLI
    launcher-engine [ARGS]            the same, when started under that name (a link or a copy)

One executable instead of two keeps one copy of the Python archive in the bundle and lets the
frozen launcher start its daemon with ``sys.executable`` (launcher/frozen.py: engine_command).
This script lives outside the ``launcher`` and ``ui`` packages on purpose: the app may reach
the engine only through its light client (an import-linter contract), while the bundle has to
carry the engine's CLI as well — the same split pyproject's two console scripts make.
"""

from __future__ import annotations

import multiprocessing
import os
import sys


def main() -> int:
    # the publisher's patch builder spawns processes; a frozen child must not re-run main()
    multiprocessing.freeze_support()
    argv = sys.argv[1:]
    name = os.path.basename(sys.argv[0]).lower()
    if name.startswith("launcher-engine") or argv[:1] == ["engine"]:
        words = argv if name.startswith("launcher-engine") else argv[1:]
        from engine.cli.quick import forward

        code = forward(words)  # a running daemon runs the line (engine.cli.quick)
        if code is not None:
            return code
        from engine.cli.main import main as engine_main

        sys.argv = ["launcher-engine", *words]
        return engine_main(words)
    from launcher.app import main as launcher_main

    return launcher_main(argv)


if __name__ == "__main__":
    sys.exit(main())
