"""Screenshots of every page (``launcher --screenshots DIR``): for the docs and for looking at
what a player sees. Waits until the library is populated, then grabs each page."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ui.window import MainWindow


async def save_screenshots(window: MainWindow, folder: Path, timeout_s: float = 30) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while window.library.rowCount() == 0 and loop.time() < deadline:
        await asyncio.sleep(0.1)
    cover_deadline = loop.time() + 5
    while len(window.library.covers) < window.library.rowCount() and loop.time() < cover_deadline:
        await asyncio.sleep(0.1)  # cover art arrives asynchronously
    await asyncio.sleep(0.5)  # task rows settle
    for i, name in enumerate(("library", "downloads", "settings")):
        window.nav.setCurrentRow(i)
        await asyncio.sleep(0.2)
        window.grab().save(str(folder / f"{name}.png"))
    window.library_page.view_mode.setChecked(True)
    window.nav.setCurrentRow(0)
    await asyncio.sleep(0.2)
    window.grab().save(str(folder / "library-list.png"))
    return 0 if window.library.rowCount() else 1
