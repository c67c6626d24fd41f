"""The launcher's main window: Library, Downloads and Settings pages over one ``EngineLink``.

Widgets are thin: they show models and forward actions to the link; every answer and event
comes back through its signals on the Qt thread. A language switch re-shows every string in
place (``retranslate``): nothing is rebuilt, nothing the player was doing is lost.
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QEvent, QSettings, Qt, QTimer, QUrl
from PySide6.QtGui import QCloseEvent, QImage, QKeySequence, QPixmap, QShortcut
from PySide6.QtNetwork import QNetworkAccessManager, QNetworkReply, QNetworkRequest
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMainWindow,
    QMenu,
    QMessageBox,
    QStackedWidget,
    QSystemTrayIcon,
    QWidget,
)

from engine.api.protocol import (
    AchievementUnlocked,
    Event,
    GameSession,
    ItemProgress,
    LibraryChanged,
    SaveSyncStatus,
    TaskStatus,
    UpdatePlanned,
)
from ui.downloads_page import DownloadsPage
from ui.game_dialogs import ConflictDialog
from ui.i18n import Texts, tr, use_language
from ui.library_page import LibraryPage
from ui.link import EngineLink
from ui.models import COVER_SIZE, LibraryModel, TasksModel
from ui.settings_page import SettingsPage
from ui.speedgraph import SpeedGraph

RELOAD_DEBOUNCE_MS = 1500  # library changes announced by the backend, gathered
RECHECK_MS = 5000  # how soon a library with games still being published is asked again

FRIENDLY = {
    "INSUFFICIENT_DISK_SPACE": "There is not enough free disk space.",
    "CDN_UNREACHABLE": "The download servers cannot be reached. Check the connection and retry.",
    "FILE_HASH_MISMATCH": "Downloaded data was damaged on every server. Retry later.",
    "TARGET_NOT_EMPTY": "The chosen folder already holds files. Choose an empty or new folder.",
    "AUTH_REQUIRED": "Please log in.",
    "UNAUTHENTICATED": "Your session has expired; please log in again.",
    "INVALID_CREDENTIALS": "Wrong user name or password.",
    "PERMISSION_DENIED": "This account does not own the game.",
    "DAEMON_UNREACHABLE": "The download engine is not running; reconnecting.",
    "CONFIG_INVALID": "That setting was refused: {0}",
    "GAME_RUNNING": "The game is running; close it first.",
    "PATH_CONFLICT": "Something else is already at that place: {0}",
    "GAME_BUSY": "The game is being installed or updated; it can start when that is done.",
    "GAME_DAMAGED": "Some of the game's files are damaged. Verify and repair it first.",
    "NO_LAUNCH_ENTRY": "This game does not say how to start it. Contact its publisher.",
    "LAUNCH_FAILED": "The game could not be started: {0}",
    "FAMILY_ACCESS_RESTRICTED": "The family member who shares this game is playing it now, or "
                                "no longer shares it. It can be played when they stop.",
    "GAME_NOT_FOUND_IN_WISHLIST": "That game is no longer on your wishlist.",
    "WISHLIST_LIMIT_REACHED": "Your wishlist is full. Remove a game from it to add another.",
}
QUIET = ("wishlist", "family")  # background loads: a failure leaves those views empty, no dialog


class LoginDialog(QDialog):
    def __init__(self, link: EngineLink, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.setWindowTitle(tr("Log in"))
        self.user = QLineEdit()
        self.user.setAccessibleName(tr("User name"))
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.password.setAccessibleName(tr("Password"))
        self.message = QLabel()
        self.message.setWordWrap(True)
        form = QFormLayout(self)
        self.server = QLabel(link.status.get("backend") or link.backend_url or "")
        form.addRow(tr("Server:"), self.server)
        form.addRow(tr("User name:"), self.user)
        form.addRow(tr("Password:"), self.password)
        form.addRow(self.message)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                               | QDialogButtonBox.StandardButton.Cancel)
        box.accepted.connect(self.submit)
        box.rejected.connect(self.reject)
        form.addRow(box)
        self.resize(420, self.sizeHint().height())

    def submit(self) -> None:
        self.message.setText(tr("Logging in…"))
        self.link.request("login", {"username": self.user.text(), "password": self.password.text()},
                          lambda _r: self.accept())


class MainWindow(QMainWindow):
    PAGES = ("Library", "Downloads", "Settings")

    def __init__(self, link: EngineLink) -> None:
        super().__init__()
        self.link = link
        t = self.texts = Texts()
        t(self.setWindowTitle, "Game Launcher")
        self.library = LibraryModel(self)
        self.tasks = TasksModel(self)
        self.nav = QListWidget()
        t(self.nav.setAccessibleName, "Pages")
        self.nav.addItems(["", "", ""])
        for i, name in enumerate(self.PAGES):
            t(self.nav.item(i).setText, name)
        self.nav.setFixedWidth(170)
        self.nav.setStyleSheet("QListWidget { font-size: 12pt; border: none; }"
                               "QListWidget::item { padding: 10px 12px; }")
        self.pages = QStackedWidget()
        self.library_page = LibraryPage(link, self.library)
        self.downloads_page = DownloadsPage(link, self.tasks, SpeedGraph())
        self.settings_page = SettingsPage(link)
        for page in (self.library_page, self.downloads_page, self.settings_page):
            self.pages.addWidget(page)
        self.nav.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.nav.setCurrentRow(0)
        for i, key in enumerate(("Ctrl+1", "Ctrl+2", "Ctrl+3")):
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.activated.connect(lambda i=i: self.nav.setCurrentRow(i))
        QShortcut(QKeySequence.StandardKey.Find, self).activated.connect(self.focus_search)
        central = QWidget()
        row = QHBoxLayout(central)
        row.addWidget(self.nav)
        row.addWidget(self.pages, 1)
        self.setCentralWidget(central)
        self.connection = QLabel()
        self._connection_text: tuple[str, tuple[Any, ...]] = ("Connecting to the engine…", ())
        self.set_connection("Connecting to the engine…")
        self.statusBar().addWidget(self.connection, 1)
        self.resize(1100, 720)
        self._written: dict[str, tuple[float, int]] = {}
        self.network = QNetworkAccessManager(self)
        self._covers_requested: set[str] = set()
        self.login_dialog: LoginDialog | None = None
        self._launching: str | None = None
        self._recheck_pending = False
        self._library_reload = QTimer(self, singleShot=True, interval=RELOAD_DEBOUNCE_MS)
        self._library_reload.timeout.connect(self.refresh_library)
        self._recheck = QTimer(self, singleShot=True, interval=RECHECK_MS)
        self._recheck.timeout.connect(self._recheck_library)
        self.downloads_page.history.toggled.connect(lambda _on: self.refresh_tasks())
        self.library_page.changed.connect(self.refresh_library)
        self.library_page.store.storeChanged.connect(self.refresh_wishlist)
        self.library_page.playRequested.connect(self.play)
        self.settings_page.languageChosen.connect(self.switch_language)
        link.connected.connect(self.on_connected)
        link.disconnected.connect(lambda why: self.set_connection("Engine unavailable: {0}", why))
        link.eventReceived.connect(self.on_event)
        link.failed.connect(self.on_failed)
        self._setup_tray()

    # -- language -----------------------------------------------------------------------------
    def switch_language(self, language: str) -> None:
        """The player chose a language: remembered, and shown at once."""
        QSettings().setValue("language", language)
        use_language(language)  # Qt sends LanguageChange to every window → changeEvent

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.LanguageChange:
            self.retranslate()
        super().changeEvent(event)

    def retranslate(self) -> None:
        self.texts.apply()
        self.set_connection(self._connection_text[0], *self._connection_text[1])
        for page in (self.library_page, self.downloads_page, self.settings_page):
            page.retranslate()
        self.library.refresh_texts()
        self.tasks.refresh_texts()
        self._setup_tray_menu()

    def set_connection(self, source: str, *args: Any) -> None:
        """The status line (kept as source and arguments, so it can be shown again translated)."""
        self._connection_text = (source, args)
        self.connection.setText(tr(source).format(*args))

    def focus_search(self) -> None:
        self.nav.setCurrentRow(0)
        self.library_page.search.setFocus()
        self.library_page.search.selectAll()

    def bring_forward(self) -> None:
        self.showNormal()
        self.raise_()
        self.activateWindow()

    def _setup_tray(self) -> None:
        """Progress in the tray tooltip, a notice when a game is ready or failed; closing the
        window then only hides it (downloads go on; the daemon runs either way)."""
        self.tray: QSystemTrayIcon | None = None
        if not QSystemTrayIcon.isSystemTrayAvailable():
            return
        self.tray = QSystemTrayIcon(self.windowIcon(), self)
        self._setup_tray_menu()
        self.tray.activated.connect(lambda _reason: self.bring_forward())
        self.tray.show()

    def _setup_tray_menu(self) -> None:
        if self.tray is None:
            return
        menu = QMenu(self)
        menu.addAction(tr("Show"), self.bring_forward)
        menu.addAction(tr("Pause all downloads"), lambda: self.downloads_page.act_all("pause_all"))
        menu.addAction(tr("Quit"), QApplication.quit)
        old = self.tray.contextMenu()
        self.tray.setContextMenu(menu)
        if old is not None:
            old.deleteLater()
        self.tray.setToolTip(tr("Game Launcher"))

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.tray is not None and self.tray.isVisible():
            self.hide()
            event.ignore()
            return
        for timer in (self._library_reload, self._recheck):  # nothing fires after the window
            timer.stop()
        super().closeEvent(event)

    def notify(self, title: str, text: str) -> None:
        if self.tray is not None:
            self.tray.showMessage(title, text)

    def on_connected(self, status: dict[str, Any]) -> None:
        self.set_connection("Connected to the engine · {0}", status["backend"])
        self.settings_page.load(status)
        self.downloads_page.schedule.setText("; ".join(status.get("schedule", [])))
        limit = status.get("globalLimitBps")
        self.downloads_page.limit.setValue(int(limit // 1_000_000) if limit else 0)
        self.refresh_tasks()
        if status.get("loggedIn"):
            self.refresh_library()
        else:
            self.ask_login()

    def ask_login(self) -> None:
        if self.login_dialog is None:
            self.login_dialog = LoginDialog(self.link, self)
            self.login_dialog.accepted.connect(self.refresh_library)
        self.login_dialog.open()

    def refresh_library(self) -> None:
        self.link.request("library", {}, self._library_loaded)

    def offline_library(self) -> None:
        """No backend: show what is installed (it stays playable); say so."""
        self.set_connection("Offline: the store cannot be reached; showing installed games")
        self.link.request("installed", {}, self.library.set_offline)

    def _library_loaded(self, items: list[dict[str, Any]]) -> None:
        self.library.set_library(items)
        if any(not i["libraryItem"].get("latest_version_id") for i in items) \
                and not self._recheck_pending:
            self._recheck_pending = True  # a game still being published: look again soon
            self._recheck.start()
        self.link.request("categories", {}, self.library_page.set_categories)
        self.link.request("playtime", {}, self._playtime_loaded)
        if any(i["installed"] for i in items):
            self.link.request("checkUpdates", {}, self._updates_checked)
        for item in items:
            attrs = item["libraryItem"]
            self.fetch_cover(str(attrs.get("product_id")), attrs.get("cover_image_url"))
        self.refresh_wishlist()
        self.refresh_family()

    def fetch_cover(self, product_id: str, url: Any) -> None:
        """Cover art, fetched once by Qt's own asynchronous networking."""
        if url and product_id not in self._covers_requested:
            self._covers_requested.add(product_id)
            reply = self.network.get(QNetworkRequest(QUrl(str(url))))
            reply.finished.connect(lambda r=reply, p=product_id: self._cover_arrived(p, r))

    def refresh_wishlist(self) -> None:
        self.link.request("wishlist", {}, self._wishlist_loaded)

    def refresh_family(self) -> None:
        self.link.request("family", {}, self._family_loaded)

    def _wishlist_loaded(self, entries: list[dict[str, Any]]) -> None:
        self.library.set_wishlist(entries)
        for e in entries:
            self.fetch_cover(str(e["productId"]), e.get("coverImageUrl"))

    def _family_loaded(self, family: dict[str, Any]) -> None:
        self.library.set_family(family)
        for g in family.get("sharedGames", []):
            self.fetch_cover(str(g["productId"]), g.get("coverImageUrl"))

    def _recheck_library(self) -> None:
        self._recheck_pending = False
        self.refresh_library()

    def _updates_checked(self, answers: list[dict[str, Any]]) -> None:
        self.library_page.updates = {str(a.get("productId")): a for a in answers}
        self.library_page.show_details()

    def _cover_arrived(self, product_id: str, reply: QNetworkReply) -> None:
        reply.deleteLater()
        if reply.error() != QNetworkReply.NetworkError.NoError:
            self._covers_requested.discard(product_id)  # placeholder stays; retried next load
            return
        image = QImage()
        if image.loadFromData(reply.readAll()):
            w, h = COVER_SIZE
            self.library.set_cover(product_id, QPixmap.fromImage(image.scaled(
                w, h, Qt.AspectRatioMode.KeepAspectRatioByExpanding,
                Qt.TransformationMode.SmoothTransformation)))

    def refresh_tasks(self) -> None:
        def apply(tasks: list[dict[str, Any]]) -> None:
            self.tasks.set_tasks(tasks)
            for t in tasks:
                self.library.set_task(t["productId"], t)

        self.link.request("tasks", {"all": self.downloads_page.history.isChecked()}, apply)

    def play(self, product_id: str, keep: str | None = None) -> None:
        params: dict[str, Any] = {"productId": product_id}
        if keep:
            params["keep"] = keep
        self._launching = product_id
        self.library.set_running(product_id, True)  # at once; the engine's event confirms it
        self.link.request("launch", params)

    def ask_conflict(self, product_id: str, message: str) -> None:
        self.conflict_dialog = ConflictDialog(self.title_of(product_id), message, self)
        self.conflict_dialog.chosen.connect(lambda keep: self.play(product_id, keep))
        self.conflict_dialog.open()

    def on_event(self, event: Event) -> None:
        if isinstance(event, UpdatePlanned):
            self.downloads_page.show_plan(event)
            return
        if isinstance(event, ItemProgress):
            self.downloads_page.file_log.add(event)
            return
        if not isinstance(event, TaskStatus):
            self.on_other_event(event)
            return
        known = self.tasks.apply(event)
        task = next((t for t in self.tasks.tasks if t["taskId"] == event.task_id), None)
        if task is not None and event.product_id:
            self.library.set_task(event.product_id, task)
        if event.status == "downloading":
            now = time.monotonic()
            last = self._written.get(event.task_id)
            disk = 0.0
            if last is not None and now > last[0]:
                disk = (event.written_bytes - last[1]) / (now - last[0])
            self._written[event.task_id] = (now, event.written_bytes)
            self.downloads_page.graph.add_sample(event.download_speed_bps, disk)
            if self.tray is not None:
                self.tray.setToolTip(tr("Downloading {0}: {1:.0f}%").format(
                    event.product_id or "", event.total_progress_percentage))
        elif not known or event.status in ("completed", "cancelled", "error", "queued"):
            self.refresh_tasks()
            if event.status == "completed":
                self.refresh_library()
                self.notify(tr("Ready to play"), self.title_of(event.product_id))
            elif event.status == "error":
                self.notify(tr("Download failed"), self.title_of(event.product_id))
            if self.tray is not None and event.status in ("completed", "cancelled", "error"):
                self.tray.setToolTip(tr("Game Launcher"))

    def on_other_event(self, event: Event) -> None:
        """Game sessions, saves and achievements (the sync agent's events)."""
        if isinstance(event, GameSession):
            self.library.set_running(event.product_id, event.status == "running")
            if event.status == "exited":
                self.link.request("playtime", {"productId": event.product_id},
                                  self._playtime_loaded)
                if event.crashed:
                    self.notify(tr("The game closed with an error"), tr("{0}: exit code {1}")
                                .format(self.title_of(event.product_id), event.exit_code))
                self.refresh_library()
        elif isinstance(event, AchievementUnlocked):
            self.notify(tr("Achievement unlocked"), f"{self.title_of(event.product_id)}: "
                        f"{event.achievement_name or event.achievement_id}")
        elif isinstance(event, SaveSyncStatus) and event.status == "sync_conflict":
            self.notify(tr("Save conflict"), self.title_of(event.product_id))
        elif isinstance(event, LibraryChanged):
            # another device (or the store) changed the library: the row is updated in place;
            # a game new to this library means a reload, one for a burst of such events
            if not self.library.apply_changes(event.product_id, event.changes):
                self._library_reload.start()
            elif {"category_ids", "is_hidden"} & set(event.changes):
                self.library_page.proxy.invalidate()  # filters and order depend on them

    def tell_owner_plays(self, product_id: str, code: str, message: str) -> None:
        """A borrowed game refused because its owner plays it: said in words, with the owner's
        name (the family's view is read again, so the game's panel says it too)."""
        item = self.library.item_of(product_id)
        owner = self.library.owner_of(item) if item else None
        text = tr("{0} is playing {1} now. A game shared by the family can be played while its "
                  "owner is not playing it; try again when they stop.").format(
            owner or tr("The family member who shares it"), self.title_of(product_id))
        box = QMessageBox(QMessageBox.Icon.Information, tr("Family sharing"), text,
                          QMessageBox.StandardButton.Ok, self)
        box.setDetailedText(f"{code}: {message}")
        box.setObjectName("familyRefusal")
        self.family_box = box
        box.open()
        self.refresh_family()

    def _playtime_loaded(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.library.local_playtime[str(r["productId"])] = float(r["localSeconds"])
        self.library_page.show_details()

    def title_of(self, product_id: str | None) -> str:
        item = self.library.item_of(product_id or "")
        return str(item["libraryItem"].get("title") or product_id) if item else str(product_id or "")

    def on_failed(self, method: str, code: str, message: str) -> None:
        if method in QUIET:
            return
        if method == "launch" and self._launching:
            self.library.set_running(self._launching, False)
            if code == "SAVEGAME_VERSION_CONFLICT":
                self.ask_conflict(self._launching, message)
                return
            if code == "FAMILY_ACCESS_RESTRICTED":
                self.tell_owner_plays(self._launching, code, message)
                return
        if method == "library" and code in ("BACKEND_UNREACHABLE", "BACKEND_ERROR"):
            self.offline_library()
            return
        if code in ("AUTH_REQUIRED", "UNAUTHENTICATED") and method != "login":
            self.ask_login()
            return
        if self.login_dialog is not None and self.login_dialog.isVisible():
            self.login_dialog.message.setText(tr(FRIENDLY.get(code, message)).format(message))
            return
        box = QMessageBox(QMessageBox.Icon.Warning, tr("Something went wrong"),
                          tr(FRIENDLY.get(code, "The engine refused: {0}")).format(message),
                          QMessageBox.StandardButton.Ok, self)
        box.setDetailedText(f"{code}: {message}")
        box.setObjectName("errorDialog")
        box.open()
