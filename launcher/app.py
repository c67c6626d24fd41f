"""``launcher``: the desktop application (PySide6).

The GUI is not built yet (no issue has asked for it so far); the engine, its daemon and the
headless CLI are. This entry point says so clearly rather than failing with an import error.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("The desktop launcher is not built yet. Run the engine daemon with "
          "`launcher-engine serve` and drive it with `launcher-engine` (see README.md).",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
