"""Screenshots of every page and dialog (``launcher --screenshots DIR``): for the docs and for
looking at what a player sees. Waits until the library is populated, then grabs the library
(grid and list, an installed game selected), downloads, settings, the game's achievements and
cloud saves, the login dialog, an error and a save conflict; and the wishlist and family-sharing
views of the library when the player has such games (``save_store_screenshots``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QMessageBox, QWidget

from ui.game_dialogs import AchievementsDialog, ConflictDialog, SavesDialog
from ui.i18n import tr
from ui.models import ProductRole
from ui.window import FRIENDLY, LoginDialog, MainWindow


async def _settle(seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)


def _save(widget: QWidget, path: Path) -> None:
    widget.grab().save(str(path))


def _select_installed(window: MainWindow) -> str | None:
    view = window.library_page.view
    model = view.model()
    for row in range(model.rowCount()):
        idx = model.index(row, 0)
        item = window.library.item_of(str(idx.data(ProductRole)))
        if item is not None and item["installed"]:
            view.setCurrentIndex(idx)
            return str(idx.data(ProductRole))
    return None


STORE_VIEWS = (("wishlist", "library-wishlist.png"), ("family", "library-family.png"))


async def save_store_screenshots(window: MainWindow, folder: Path) -> list[str]:
    """The library's wishlist and family views, the first game of each selected; a view with no
    game is left out. The names saved; the library shows all games again after."""
    folder.mkdir(parents=True, exist_ok=True)
    page = window.library_page
    window.nav.setCurrentRow(0)
    saved = []
    for kind, name in STORE_VIEWS:
        page.filter.setCurrentIndex(page.filter.findData(kind))
        if not page.proxy.rowCount():
            continue
        page.view.setCurrentIndex(page.proxy.index(0, 0))
        await _settle()
        _save(window, folder / name)
        saved.append(name)
    page.filter.setCurrentIndex(page.filter.findData("all"))
    return saved


async def save_screenshots(window: MainWindow, folder: Path, timeout_s: float = 30) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while window.library.rowCount() == 0 and loop.time() < deadline:
        await asyncio.sleep(0.1)
    cover_deadline = loop.time() + 20
    while len(window.library.covers) < window.library.rowCount() and loop.time() < cover_deadline:
        await asyncio.sleep(0.1)  # cover art arrives asynchronously
    await _settle(0.5)  # task rows settle
    pid = _select_installed(window)
    await _settle()
    for i, name in enumerate(("library", "downloads", "settings")):
        window.nav.setCurrentRow(i)
        await _settle(1.0 if name == "downloads" else 0.3)  # a few graph samples
        _save(window, folder / f"{name}.png")
    window.library_page.view_mode.setChecked(True)
    window.nav.setCurrentRow(0)
    await _settle()
    _save(window, folder / "library-list.png")
    window.library_page.view_mode.setChecked(False)
    if pid is not None:
        link = window.link
        rows: Any = await link.call("achievements", {"productId": pid})
        dialog: QWidget = AchievementsDialog(window.library_page.title_of(pid), rows, window)
        dialog.show()
        await _settle()
        _save(dialog, folder / "achievements.png")
        dialog.close()
        status: Any = await link.call("saves", {"productId": pid})
        dialog = SavesDialog(link, window.library_page.title_of(pid), status, window)
        dialog.show()
        await _settle()
        _save(dialog, folder / "saves.png")
        dialog.close()
        dialog = ConflictDialog(window.library_page.title_of(pid),
                                "SAVEGAME_VERSION_CONFLICT: install:saves%2Fslot1.sav", window)
        dialog.show()
        await _settle()
        _save(dialog, folder / "conflict.png")
        dialog.close()
    login = LoginDialog(window.link, window)
    login.user.setText("demo")
    login.show()
    await _settle()
    _save(login, folder / "login.png")
    login.close()
    error = QMessageBox(QMessageBox.Icon.Warning, tr("Something went wrong"),
                        tr(FRIENDLY["CDN_UNREACHABLE"]), QMessageBox.StandardButton.Ok, window)
    error.setDetailedText("CDN_UNREACHABLE: every edge failed: connection refused")
    error.show()
    await _settle()
    _save(error, folder / "error.png")
    error.close()
    await save_store_screenshots(window, folder)
    return 0 if window.library.rowCount() else 1
