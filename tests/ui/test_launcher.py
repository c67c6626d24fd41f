"""The launcher window against the real engine daemon (started by the window itself, as for a
player) and the real backend on loopback; Qt offscreen, asyncio on Qt's loop (qasync).

Each scenario runs inside one ``loop.run_until_complete``: pytest-qt processes Qt events
between test phases, and an asyncio step must never run outside the running loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("PySide6")
qasync = pytest.importorskip("qasync")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from engine.api.client import daemon_running, read_info  # noqa: E402
from testing.daemon import stop_daemon_of  # noqa: E402
from ui.link import EngineLink  # noqa: E402
from ui.models import ProductRole  # noqa: E402
from ui.window import MainWindow  # noqa: E402


@pytest.fixture
def loop(qapp: QApplication) -> Iterator[Any]:
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    ev = qasync.QEventLoop(qapp)
    asyncio.set_event_loop(ev)
    yield ev
    asyncio.set_event_loop(None)
    ev.close()


FAILURES: list[tuple[str, str, str]] = []


async def until(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            windows = [(type(w).__name__, getattr(getattr(w, "connection", None), "text",
                                                 lambda: "")()) for w in QApplication.topLevelWidgets()
                       if w.isVisible()]
            raise AssertionError(f"timed out waiting for {what}; visible: {windows}; "
                                 f"engine refusals: {FAILURES}")
        await asyncio.sleep(0.05)


def select(window: MainWindow, product: str) -> None:
    view = window.library_page.view
    for row in range(view.model().rowCount()):
        idx = view.model().index(row, 0)
        if idx.data(ProductRole) == product:
            view.setCurrentIndex(idx)
            return
    raise AssertionError(f"{product} not in the library")


@contextlib.asynccontextmanager
async def launcher_window(data: Path, url: str, loop: Any) -> AsyncIterator[tuple[MainWindow,
                                                                                 EngineLink]]:
    """The window as a player opens it (it starts the daemon); closed and stopped after."""
    link = EngineLink(data, url, loop=loop)
    link.failed.connect(lambda *f: FAILURES.append(f))
    window = MainWindow(link)
    window.show()
    link.start()
    try:
        yield window, link
    finally:
        await link.close()
        window.close()
        stop_daemon_of(data)


def visible_message_box() -> QMessageBox | None:
    return next((w for w in QApplication.topLevelWidgets()
                 if isinstance(w, QMessageBox) and w.isVisible()), None)


def test_login_library_install_limit_errors_and_reconnect(backend: Any, tmp_path: Path,
                                                          loop: Any) -> None:
    name, _ = backend.new_user(products=["star-courier", "tiny-tactics"])
    data = tmp_path / "engine"

    async def scenario() -> None:
        async with launcher_window(data, backend.url, loop) as (window, link):
            seen: list[Any] = []
            link.eventReceived.connect(seen.append)
            # the window starts the daemon, connects, and asks for a login (nobody logged in)
            await until(lambda: window.login_dialog is not None and window.login_dialog.isVisible(),
                        "the login dialog")
            assert link.is_connected and "Connected" in window.connection.text()
            dialog = window.login_dialog
            assert dialog is not None
            dialog.user.setText(name)
            dialog.password.setText("wrong")
            dialog.submit()
            await until(lambda: "Wrong" in dialog.message.text(), "the wrong-password message")
            assert dialog.isVisible()
            dialog.password.setText("secret-pw")
            dialog.submit()
            await until(lambda: window.library.rowCount() == 2, "the library")
            assert not dialog.isVisible()
            # search and filter act on the model
            window.library_page.search.setText("tiny")
            assert window.library_page.proxy.rowCount() == 1
            window.library_page.search.setText("")
            # install from the game panel; progress reaches the library and the queue
            select(window, "tiny-tactics")
            assert window.library_page.install.isEnabled()
            window.library_page.install.click()
            install = window.library_page.install_dialog
            assert install.isVisible() and "free there" in install.space.text()
            install.folder.setText(str(tmp_path / "games" / "tiny"))
            install.accept()
            await until(lambda: window.library_page.state.text() == "Installed", "installed", 120)
            assert window.library_page.current_product() == "tiny-tactics"  # kept on reload
            kinds = [(type(e).__name__, getattr(e, "status", None)) for e in seen]
            assert ("TaskStatus", "completed") in kinds and ("ItemProgress", "completed") in kinds
            assert not window.library_page.install.isEnabled()
            assert window.library_page.verify.isEnabled()
            assert window.library_page.play.isVisible()
            # the files of the finished task, on demand, from the downloads page
            window.downloads_page.history.setChecked(True)
            await until(lambda: window.tasks.rowCount() == 1, "the finished task")
            window.downloads_page.table.setCurrentIndex(window.tasks.index(0, 0))
            window.downloads_page.buttons["files"].click()
            files = window.downloads_page.files_dialog
            assert files.table.rowCount() > 1
            paths = {files.table.item(r, 0).text() for r in range(files.table.rowCount())}
            assert "game.py" in paths
            files.close()
            games = await link.call("installed")
            assert [g["productId"] for g in games] == ["tiny-tactics"]
            # the speed limit set on the downloads page reaches the engine
            window.downloads_page.limit.setValue(3)
            window.downloads_page.set_limit()
            await asyncio.sleep(0.3)
            assert (await link.call("status"))["globalLimitBps"] == 3_000_000
            # and the download schedule, from the same page
            window.downloads_page.schedule.setText("22:00-06:00")
            window.downloads_page.set_schedule()
            await asyncio.sleep(0.3)
            assert (await link.call("status"))["schedule"] == ["22:00-06:00"]
            window.downloads_page.schedule.setText("")
            window.downloads_page.set_schedule()
            await asyncio.sleep(0.3)
            assert (await link.call("status"))["schedule"] == []
            # an engine refusal shows a dialog with the code in its details
            link.request("pause", {"taskId": "no-such-task"})
            await until(lambda: visible_message_box() is not None, "the error dialog")
            box = visible_message_box()
            assert box is not None and "TASK_NOT_FOUND" in box.detailedText()
            box.close()
            # the daemon dies: the window says so, starts a new one and reconnects by itself
            info = read_info(data)
            assert info is not None
            os.kill(info.pid, signal.SIGKILL)
            await until(lambda: not link.is_connected, "the disconnect", 15)

            def reconnected() -> bool:
                running = daemon_running(data)
                return link.is_connected and running is not None and running.pid != info.pid

            await until(reconnected, "the reconnect", 30)
            await until(lambda: "Connected" in window.connection.text(), "the status line", 10)
            assert window.library.rowCount() == 2

    loop.run_until_complete(scenario())


def test_settings_reach_the_engine_and_the_language_switches_live(backend: Any, tmp_path: Path,
                                                                 loop: Any) -> None:
    from testing.enginekit import EngineCli
    from ui import autostart
    from ui.i18n import RU

    name, _ = backend.new_user(products=["tiny-tactics"])
    data = tmp_path / "engine"
    EngineCli(data, backend.url).login(name, "secret-pw")

    async def scenario() -> None:
        async with launcher_window(data, backend.url, loop) as (window, link):
            page = window.settings_page
            await until(lambda: window.library.rowCount() == 1, "the library")
            await until(lambda: bool(page.values), "the engine's settings")
            assert page.auto_update.isChecked()
            page.concurrent.setValue(3)
            page.auto_update.setChecked(False)
            page.gameplay.setCurrentIndex(page.gameplay.findData("pause"))
            page.library_dir.setText(str(tmp_path / "Games"))
            page.autostart.setChecked(True)
            page.save()
            await until(lambda: page.values.get("max_concurrent_tasks") == 3, "the saved settings")
            values = (await link.call("settings"))["settings"]
            assert values["auto_update"] is False and values["gameplay_downloads"] == "pause"
            assert values["library_dir"] == str(tmp_path / "Games")
            assert (await link.call("status"))["libraryDir"] == str(tmp_path / "Games")
            entry = autostart.autostart_file().read_text()
            assert "--hidden" in entry and str(data) in entry
            page.autostart.setChecked(False)
            page.save()
            assert not autostart.autostart_file().exists()
            # a refused value: a dialog names it, the engine keeps the old one
            link.request("settings", {"key": "gameplay_downloads", "value": "sometimes"})
            await until(lambda: visible_message_box() is not None, "the refusal")
            box = visible_message_box()
            assert box is not None and "gameplay_downloads" in box.text()
            box.close()
            assert (await link.call("settings"))["settings"]["gameplay_downloads"] == "pause"
            # the language switches at once, without a restart, and back
            select(window, "tiny-tactics")
            window.library_page.view_mode.setChecked(True)
            page.language.setCurrentIndex(page.language.findData("ru"))
            await until(lambda: window.nav.item(0).text() == "Библиотека", "Russian")
            assert window.library_page.install.text() == "Установить"
            assert window.library_page.state.text() == RU["Not installed"]
            assert window.library_page.view_mode.text() == RU["Grid view"]
            assert window.library_page.filter.itemText(0) == RU["All games"]
            assert window.tasks.headerData(0, Qt.Orientation.Horizontal) == "Игра"
            assert window.connection.text().startswith("Подключено к движку")
            assert window.library_page.current_product() == "tiny-tactics"  # nothing was lost
            page.language.setCurrentIndex(page.language.findData("en"))
            await until(lambda: window.library_page.install.text() == "Install", "English")
            assert window.connection.text().startswith("Connected to the engine")

    loop.run_until_complete(scenario())


def test_the_window_speaks_russian(qapp: QApplication, tmp_path: Path, loop: Any) -> None:
    from ui.i18n import RU, translator_for

    translator = translator_for("ru")
    assert translator is not None
    qapp.installTranslator(translator)
    try:
        window = MainWindow(EngineLink(tmp_path / "engine", None, start_daemon=False, loop=loop))
        pages = [window.nav.item(i).text() for i in range(window.nav.count())]
        assert pages == ["Библиотека", "Загрузки", "Настройки"]
        assert window.library_page.install.text() == "Установить"
        header = window.tasks.headerData(0, Qt.Orientation.Horizontal)
        assert header == "Игра"
        assert window.connection.text() == RU["Connecting to the engine…"]
        window.close()
    finally:
        qapp.removeTranslator(translator)


def test_offline_start_still_shows_the_installed_games(backend_factory: Any, tmp_path: Path,
                                                       loop: Any) -> None:
    from testing.enginekit import EngineCli

    server = backend_factory()
    name, _ = server.new_user(products=["tiny-tactics"])
    data = tmp_path / "engine"
    cli = EngineCli(data, server.url)
    cli.login(name, "secret-pw")
    cli.ok("install", "tiny-tactics", "--target", str(tmp_path / "tiny"))
    server.stop()  # the store is unreachable from now on

    async def scenario() -> None:
        async with launcher_window(data, server.url, loop) as (window, _link):
            await until(lambda: window.library.rowCount() == 1, "the installed game")
            assert "Offline" in window.connection.text()
            select(window, "tiny-tactics")
            assert window.library_page.state.text() == "Installed"
            assert window.library_page.verify.isEnabled()

    loop.run_until_complete(scenario())


def test_dragging_a_download_reorders_the_engines_queue(backend: Any, tmp_path: Path,
                                                        loop: Any) -> None:
    from testing.enginekit import EngineCli
    from ui.models import NO_PARENT

    name, _ = backend.new_user(products=["star-courier", "tiny-tactics"])
    data = tmp_path / "engine"
    cli = EngineCli(data, backend.url)
    cli.login(name, "secret-pw")
    cli.ok("limit", "50K")  # slow enough that both stay in the queue
    first = cli.ok("install", "star-courier", "--no-wait", "--target", str(tmp_path / "a"))
    second = cli.ok("install", "tiny-tactics", "--no-wait", "--target", str(tmp_path / "b"))
    second_id = second[-1]["task"]["taskId"]

    async def scenario() -> None:
        async with launcher_window(data, backend.url, loop) as (window, link):
            tasks = window.tasks
            await until(lambda: tasks.rowCount() == 2, "the queue")
            assert [t["taskId"] for t in tasks.tasks][1] == second_id
            # a drop of row 1 above row 0 (what the view does on drag and drop)
            mime = tasks.mimeData([tasks.index(1, 0)])
            assert tasks.dropMimeData(mime, Qt.DropAction.MoveAction, 0, 0, NO_PARENT) is False
            await until(lambda: tasks.task_at(0) is not None
                        and tasks.task_at(0)["taskId"] == second_id, "the new order")  # type: ignore[index]
            queue = await link.call("tasks", {})
            assert queue[0]["taskId"] == second_id  # the engine's queue, not just the view
            assert first[-1]["task"]["taskId"] in [t["taskId"] for t in queue]

    loop.run_until_complete(scenario())


def test_the_game_panel_states_what_an_update_downloads(backend: Any, published_store: Any,
                                                        tmp_path: Path, loop: Any) -> None:
    from testing.enginekit import EngineCli

    name, _ = backend.new_user(products=["star-courier"])
    data = tmp_path / "engine"
    cli = EngineCli(data, backend.url)
    cli.login(name, "secret-pw")
    first = published_store.product("star-courier").versions[0]
    cli.ok("install", "star-courier", "--version", first, "--target", str(tmp_path / "sc"))
    cli.ok("settings", "auto_update", "false")  # else the daemon starts the update at once

    async def scenario() -> None:
        async with launcher_window(data, backend.url, loop) as (window, _link):
            await until(lambda: "Update to" in window.library_page.info.text(), "the update line")
            page = window.library_page
            assert page.state.text() == "Update available" and page.update_button.isEnabled()
            assert "download" in page.info.text() and "full download" in page.info.text()

    loop.run_until_complete(scenario())


def _upload_cloud_save(backend: Any, token: str, product: str, slot: str, data: bytes) -> None:
    """Another device's save, straight through the backend's API (upload-url → PUT → confirm)."""
    import hashlib

    import httpx

    with backend.client(token) as c:
        slots = c.get("/api/v1/library/savegames", params={"product_id": product}).json()["data"]
        latest = next(s["attributes"]["latest_version"] for s in slots
                      if s["attributes"]["slot"] == slot)
        grant = c.post("/api/v1/library/savegames/upload-url", json={"data": {
            "type": "savegameUploadRequest", "attributes": {
                "product_id": product, "save_slot_name": slot, "file_size_bytes": len(data),
                "file_hash_sha256": hashlib.sha256(data).hexdigest(),
                "base_version": latest}}}).json()["data"]["attributes"]
        assert httpx.put(grant["upload_url"], content=data,
                         headers=grant["headers"]).status_code < 300
        assert c.post("/api/v1/library/savegames/confirm-upload", json={"data": {
            "type": "savegameUploadConfirmation",
            "attributes": {"internal_save_id": grant["internal_save_id"]}}}).status_code == 200


def test_play_from_the_window_with_saves_achievements_and_a_conflict(backend: Any,
                                                                     tmp_path: Path,
                                                                     loop: Any) -> None:
    from testing.enginekit import EngineCli

    name, token = backend.new_user(products=["tiny-tactics"])
    data = tmp_path / "engine"
    cli = EngineCli(data, backend.url)
    cli.login(name, "secret-pw")
    cli.ok("install", "tiny-tactics", "--target", str(tmp_path / "tiny"))
    save = tmp_path / "tiny" / "saves" / "slot1.sav"

    async def scenario() -> None:
        async with launcher_window(data, backend.url, loop) as (window, link):
            page = window.library_page
            await until(lambda: window.library.rowCount() == 1, "the library")
            select(window, "tiny-tactics")
            assert page.play.isVisible() and page.play.isEnabled()
            assert not page.install.isVisible()
            seen: list[Any] = []
            link.eventReceived.connect(seen.append)
            page.play.click()
            await until(lambda: any(getattr(e, "status", "") == "running" for e in seen),
                        "the game running")
            assert not page.play.isEnabled()  # one instance of a game at a time
            await until(lambda: any(getattr(e, "status", "") == "exited" for e in seen),
                        "the game's end", 60)
            await until(lambda: page.play.isEnabled(), "Play again")
            await until(lambda: any(getattr(e, "uploaded", 0) == 2 for e in seen),
                        "the save and the settings uploaded after the game")
            assert save.exists()
            rows = await link.call("playtime", {"productId": "tiny-tactics"})
            assert rows[0]["localSeconds"] >= 0.9
            # the cloud saves dialog lists the save the game wrote (synced after it exited)
            page.act("saves")
            await until(lambda: getattr(page, "saves_dialog", None) is not None
                        and page.saves_dialog.isVisible(), "the saves dialog")
            dialog = page.saves_dialog
            assert dialog.table.rowCount() == 2  # the save and the game's settings file
            assert dialog.table.item(0, 0).text() == "saves/slot1.sav"
            assert dialog.table.item(0, 2).text() == "v1"
            dialog.close()
            page.act("achievements")
            await until(lambda: getattr(page, "achievements_dialog", None) is not None,
                        "the achievements")
            assert page.achievements_dialog.table.rowCount() == 1  # tiny-tactics: first-battle
            page.achievements_dialog.close()
            # another device saved meanwhile, and this one changed its save too: Play asks
            _upload_cloud_save(backend, token, "tiny-tactics", "install:saves%2Fslot1.sav",
                               b'{"counter": 41}')
            save.write_text('{"counter": 7}')
            page.play.click()
            await until(lambda: getattr(window, "conflict_dialog", None) is not None
                        and window.conflict_dialog.isVisible(), "the conflict question")
            assert save.read_text() == '{"counter": 7}'  # nothing overwritten while asking
            seen.clear()
            window.conflict_dialog.cloud.click()
            await until(lambda: any(getattr(e, "status", "") == "exited" for e in seen),
                        "the game after the choice", 60)
            assert json.loads(save.read_text())["counter"] == 42  # played on the cloud's save

    loop.run_until_complete(scenario())
