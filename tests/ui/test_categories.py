"""Categories and hidden games from the launcher, persisted on the backend through the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("PySide6")

from testing.enginekit import EngineCli
from tests.ui.test_launcher import launcher_window, loop, select, until  # noqa: F401
from ui.models import ProductRole


def test_categories_and_hiding_persist_on_the_backend(backend: Any, tmp_path: Path,
                                                      loop: Any) -> None:  # noqa: F811
    name, token = backend.new_user(products=["star-courier", "tiny-tactics"])
    data = tmp_path / "engine"
    EngineCli(data, backend.url).login(name, "secret-pw")

    async def scenario() -> None:
        async with launcher_window(data, backend.url, loop) as (window, _link):
            page = window.library_page
            await until(lambda: window.library.rowCount() == 2, "the library")
            select(window, "tiny-tactics")
            page.edit_categories()
            dialog = page.categories_dialog
            dialog.new_name.setText("Strategy")
            dialog.create_category()
            await until(lambda: dialog.list.count() == 1, "the new category")
            dialog.save()
            # "All categories", "Strategy", "Not in: Strategy"
            await until(lambda: page.category.count() == 3, "the category filter")
            page.category.setCurrentIndex(1)
            assert page.proxy.rowCount() == 1  # only tiny-tactics is in "Strategy"
            assert page.proxy.index(0, 0).data(ProductRole) == "tiny-tactics"
            page.category.setCurrentIndex(2)  # the exclusion
            assert page.proxy.rowCount() == 1
            assert page.proxy.index(0, 0).data(ProductRole) == "star-courier"
            # a saved view brings the exclusion back after the filters changed
            page.save_view("Not strategy")
            page.category.setCurrentIndex(0)
            assert page.proxy.rowCount() == 2
            page.apply_view(page.views.itemData(page.views.findText("Not strategy")))
            assert page.proxy.rowCount() == 1
            page.category.setCurrentIndex(0)
            # a favourite goes on top whatever the sort (star-courier < tiny-tactics by name)
            assert page.proxy.index(0, 0).data(ProductRole) == "star-courier"
            select(window, "tiny-tactics")
            page.toggle_favourite()
            await until(lambda: page.proxy.index(0, 0).data(ProductRole) == "tiny-tactics",
                        "the favourite on top")
            assert page.proxy.index(0, 0).data() == "★ Tiny Tactics"
            select(window, "tiny-tactics")
            assert page.favourite.isChecked()
            select(window, "star-courier")
            page.toggle_hidden()
            await until(lambda: page.proxy.rowCount() == 1, "star-courier hidden")
            page.filter.setCurrentIndex(page.filter.findData("hidden"))
            assert page.proxy.rowCount() == 1
            # on the backend, not just in the window
            with backend.client(token) as c:
                items = {i["attributes"]["product_id"]: i["attributes"]
                         for i in c.get("/api/v1/library/items").json()["data"]}
            assert items["star-courier"]["is_hidden"] is True
            assert len(items["tiny-tactics"]["category_ids"]) == 2  # "Strategy", "Favourites"
            with backend.client(token) as c:
                names = {c["attributes"]["name"] for c in
                         c.get("/api/v1/library/categories").json()["data"]}
            assert names == {"Strategy", "Favourites"}

    loop.run_until_complete(scenario())
