"""The library page's wishlist and family-sharing views against the real engine daemon (started
by the window) and the real backend on loopback, Qt offscreen: a member sees the owner's games
with a "Family" badge and the owner's name, borrows one, installs it, is told in words that the
owner is playing it when Play is refused; the wishlist in priority order, its priority changed,
a game removed and one added, all reaching the backend through the engine; then the same views
in Russian."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("qasync")

from PySide6.QtCore import Qt
from PySide6.QtGui import QImage

from tests.ui.test_launcher import (  # noqa: F401
    launcher_window,
    loop,
    select,
    until,
)
from ui.models import ProductRole

FAMILY = "/api/v1/library/family"
WISHLIST = "/api/v1/library/wishlist/items"
PLAY = "/api/v1/library/playtime/sessions"


def shown(window: Any) -> list[str]:
    """The products the library view shows, in its order."""
    model = window.library_page.view.model()
    return [str(model.index(r, 0).data(ProductRole)) for r in range(model.rowCount())]


def show_kind(window: Any, kind: str) -> None:
    combo = window.library_page.filter
    combo.setCurrentIndex(combo.findData(kind))


def accessible(window: Any, product: str) -> str:
    model = window.library_page.view.model()
    row = shown(window).index(product)
    return str(model.index(row, 0).data(Qt.ItemDataRole.AccessibleTextRole))


def test_family_games_and_the_wishlist_in_the_library(backend: Any, tmp_path: Path,
                                                     loop: Any) -> None:  # noqa: F811
    from testing.enginekit import EngineCli
    from ui.i18n import RU
    from ui.screens import save_store_screenshots

    owner_name, owner_token = backend.new_user(products=["star-courier", "tiny-tactics"])
    member_name, member_token = backend.new_user()
    backend.grant(member_name, "comet-cafe", title="Comet Cafe")  # her own (no build yet)
    backend.grant(backend.new_user()[0], "moon-miner", title="Moon Miner")  # a store game
    with backend.client(owner_token) as o, backend.client(member_token) as m:
        r = o.post(f"{FAMILY}/members", json={"data": {"type": "familyMemberCreation",
                                                       "attributes": {"username": member_name}}})
        assert r.status_code == 201, r.text
        for product, priority in (("moon-miner", 3), ("star-courier", 7)):
            r = m.post(WISHLIST, json={"data": {"type": "wishlistItemCreation", "attributes": {
                "product_id": product, "priority": priority}}})
            assert r.status_code == 201, r.text
    data = tmp_path / "engine"
    EngineCli(data, backend.url).login(member_name, "secret-pw")

    async def scenario() -> None:
        async with launcher_window(data, backend.url, loop) as (window, link):
            page = window.library_page
            await until(lambda: window.library.rowCount() == 4,
                        "her game, the family's games and the wishlist")
            assert shown(window) == ["comet-cafe"]  # "All games": the member's own only
            # the family's games, with the badge and the owner's name
            show_kind(window, "family")
            assert sorted(shown(window)) == ["star-courier", "tiny-tactics"]
            select(window, "tiny-tactics")
            assert page.state.text() == f"Shared by {owner_name}"
            assert accessible(window, "tiny-tactics").startswith("Tiny Tactics — Family: ")
            assert owner_name in page.store.family.text()
            assert page.store.borrow.isVisible() and page.store.borrow.isEnabled()
            assert not page.play.isVisible() and not page.install.isVisible()
            page.primary_action()  # Enter (or a double click) on a game of the family borrows it
            await until(lambda: (i := window.library.item_of("tiny-tactics")) is not None
                        and not window.library.is_store(i), "the borrowed game")
            # now among the player's games: installed like a bought one
            show_kind(window, "all")
            assert shown(window) == ["comet-cafe", "tiny-tactics"]
            select(window, "tiny-tactics")
            assert f"Family: shared by {owner_name}" in page.store.family.text()
            assert not page.store.borrow.isVisible()
            assert page.install.isEnabled()
            page.install.click()
            page.install_dialog.folder.setText(str(tmp_path / "games" / "tiny"))
            page.install_dialog.accept()
            await until(lambda: page.state.text() == "Installed", "installed", 120)

            # the owner plays: Play is refused, in words naming the owner; nothing starts
            with backend.client(owner_token) as o:
                r = o.post(f"{PLAY}/start", json={"data": {"type": "playtimeSessionStart",
                                                          "attributes": {
                                                              "product_id": "tiny-tactics"}}})
                assert r.status_code == 201, r.text
                assert page.play.isEnabled()
                page.play.click()
                await until(lambda: getattr(window, "family_box", None) is not None
                            and window.family_box.isVisible(), "the refusal")
                box = window.family_box
                assert box.text().startswith(f"{owner_name} is playing Tiny Tactics now.")
                assert box.detailedText().startswith("FAMILY_ACCESS_RESTRICTED")
                assert await link.call("games") == []
                box.close()
                await until(lambda: "is playing it now" in page.store.family.text(),
                            "the panel saying the owner plays")
                await until(lambda: page.play.isEnabled() and page.play.text() == "Play",
                            "Play again")

            # the wishlist: priority order, a new priority, a removal, an addition
            show_kind(window, "all")
            select(window, "comet-cafe")  # bought, not wished, not shared: no store panel
            assert not page.store.isVisible()
            page.search.setText("moon")  # straight from that game to a wished one: panel again
            show_kind(window, "wishlist")
            assert shown(window) == ["moon-miner"]
            assert page.store.isVisible() and page.store.priority.isVisible()
            page.search.setText("")
            assert shown(window) == ["star-courier", "moon-miner"]
            select(window, "moon-miner")
            assert page.state.text() == "On your wishlist"
            assert page.store.priority.isVisible() and page.store.priority.value() == 3
            assert page.store.wish.text() == "Remove from wishlist"
            page.store.priority.setValue(9)
            page.store.priority.editingFinished.emit()
            await until(lambda: shown(window) == ["moon-miner", "star-courier"], "the new order")
            entries = await link.call("wishlist")
            assert [(e["productId"], e["priority"]) for e in entries] == [
                ("moon-miner", 9), ("star-courier", 7)]
            select(window, "star-courier")
            page.store.wish.click()
            await until(lambda: shown(window) == ["moon-miner"], "star-courier off the wishlist")
            show_kind(window, "family")  # still the family's: only off the wishlist
            assert "star-courier" in shown(window)
            select(window, "tiny-tactics")  # borrowed, not bought: it can be wished
            assert page.store.wish.text() == "Add to wishlist"
            page.store.wish.click()
            await until(lambda: page.store.wish.text() == "Remove from wishlist",
                        "tiny-tactics on the wishlist")
            assert [e["productId"] for e in await link.call("wishlist")] == [
                "moon-miner", "tiny-tactics"]

            # the views as a player sees them, in English and in Russian
            shots = tmp_path / "shots"
            names = await save_store_screenshots(window, shots)
            assert names == ["library-wishlist.png", "library-family.png"]
            for name in names:
                assert not QImage(str(shots / name)).isNull()
            window.settings_page.language.setCurrentIndex(
                window.settings_page.language.findData("ru"))
            await until(lambda: page.filter.itemText(page.filter.findData("family"))
                        == RU["Family sharing"], "Russian")
            show_kind(window, "family")
            select(window, "tiny-tactics")
            assert page.store.family.text().startswith(
                RU["Family: shared by {0}"].format(owner_name))
            assert accessible(window, "tiny-tactics").startswith("Tiny Tactics — Семья: ")
            assert page.store.wish.text() == RU["Remove from wishlist"]
            await save_store_screenshots(window, shots / "ru")
            page.view_mode.setChecked(True)  # the list's icons are small: the badge in words
            show_kind(window, "family")
            row = shown(window).index("tiny-tactics")
            assert page.view.model().index(row, 0).data() == "Tiny Tactics  ·  Семья"
            page.view_mode.setChecked(False)
            assert page.view.model().index(row, 0).data() == "Tiny Tactics"
            window.settings_page.language.setCurrentIndex(
                window.settings_page.language.findData("en"))
            await asyncio.sleep(0)

    loop.run_until_complete(scenario())
