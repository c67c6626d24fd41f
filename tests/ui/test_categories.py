"""Categories and hidden games from the launcher, persisted on the backend through the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("PySide6")

from testing.daemon import stop_daemon_of
from testing.enginekit import EngineCli
from tests.ui.test_launcher import loop, select, until  # noqa: F401
from ui.link import EngineLink
from ui.window import MainWindow


def test_categories_and_hiding_persist_on_the_backend(backend: Any, tmp_path: Path,
                                                      loop: Any) -> None:  # noqa: F811
    name, token = backend.new_user(products=["star-courier", "tiny-tactics"])
    data = tmp_path / "engine"
    EngineCli(data, backend.url).login(name, "secret-pw")

    async def scenario() -> None:
        link = EngineLink(data, backend.url, loop=loop)
        window = MainWindow(link)
        window.show()
        link.start()
        page = window.library_page
        try:
            await until(lambda: window.library.rowCount() == 2, "the library")
            select(window, "tiny-tactics")
            page.edit_categories()
            dialog = page.categories_dialog
            dialog.new_name.setText("Strategy")
            dialog.create_category()
            await until(lambda: dialog.list.count() == 1, "the new category")
            dialog.save()
            await until(lambda: page.category.count() == 2, "the category filter")
            page.category.setCurrentIndex(1)
            assert page.proxy.rowCount() == 1  # only tiny-tactics is in "Strategy"
            page.category.setCurrentIndex(0)
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
            assert len(items["tiny-tactics"]["category_ids"]) == 1
        finally:
            await link.close()
            window.close()
            stop_daemon_of(data)

    loop.run_until_complete(scenario())
