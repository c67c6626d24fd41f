"""The Library page: the games (grid or list), search, filters with exclusion and saved views,
sort (favourites on top), and the selected game's panel with its actions. The wishlist and the
family's shared games are two more views of the same grid ("Wishlist", "Family sharing"):
borrowed games sit among the bought ones with a "Family" badge and their owner's name.

Favourites are the player's category named ``FAVOURITES`` on the backend (the seed's library
items carry categories, and its example calls one "fav"), so they follow the player to every
device with no field of our own.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSettings,
    QSize,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ui.game_dialogs import AchievementsDialog, SavesDialog
from ui.i18n import Texts, tr
from ui.link import EngineLink
from ui.models import (
    CategoriesRole,
    FamilyRole,
    FavouriteRole,
    HiddenRole,
    LibraryModel,
    OwnedRole,
    ProductRole,
    SortRole,
    StateRole,
    WishRankRole,
    human_bytes,
    human_duration,
    local_time,
)
from ui.store_panel import StorePanel, describe

FAVOURITES = "Favourites"
EXCLUDE = "!"  # a category filter value "!<id>": games NOT in that category
VIEWS_KEY = "library/views"  # QSettings: the player's saved views, JSON {name: view}
KINDS = (("all", "All games"), ("installed", "Installed"), ("not_installed", "Not installed"),
         ("updates", "Updates available"), ("favourites", "Favourites"), ("hidden", "Hidden"),
         ("wishlist", "Wishlist"), ("family", "Family sharing"))
SORTS = (("name", "Name"), ("last_played", "Last played"), ("playtime", "Playtime"),
         ("added", "Date added"), ("size", "Size"))


def category_matches(wanted: str, categories: list[str]) -> bool:
    """Pure: the category filter — "" any, "<id>" in it, "!<id>" not in it."""
    if not wanted:
        return True
    if wanted.startswith(EXCLUDE):
        return wanted[len(EXCLUDE):] not in categories
    return wanted in categories


def favourite_category(categories: list[dict[str, Any]]) -> str | None:
    return next((str(c["categoryId"]) for c in categories
                 if str(c.get("name", "")).casefold() == FAVOURITES.casefold()), None)


class LibraryFilter(QSortFilterProxyModel):
    """Search text, a kind (installed, updates, ...), a category (or its exclusion); sorted by
    the model's sort key (which puts favourites on top)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.kind = "all"
        self.text = ""
        self.category = ""

    def set(self, kind: str | None = None, text: str | None = None,
            category: str | None = None) -> None:
        self.beginFilterChange()  # Qt 6.10+: the replacement of invalidateRowsFilter()
        self.kind = kind if kind is not None else self.kind
        self.text = (text if text is not None else self.text).casefold()
        self.category = category if category is not None else self.category
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, row: int, parent: QModelIndex | QPersistentModelIndex) -> bool:
        idx = self.sourceModel().index(row, 0, parent)
        title = str(idx.data(Qt.ItemDataRole.DisplayRole) or "").casefold()
        state = str(idx.data(StateRole) or "")
        if self.text and self.text not in title:
            return False
        if self.kind == "wishlist":
            return idx.data(WishRankRole) is not None and not bool(idx.data(HiddenRole))
        if self.kind == "family":
            return bool(idx.data(FamilyRole)) and not bool(idx.data(HiddenRole))
        if not idx.data(OwnedRole):
            return False  # a store game shows only under the wishlist or the family
        if bool(idx.data(HiddenRole)) != (self.kind == "hidden"):
            return False  # hidden games show only under "Hidden"
        if not category_matches(self.category, list(idx.data(CategoriesRole) or [])):
            return False
        installed = state not in (tr("Not installed"), tr("Not available yet"))
        return {"all": True, "installed": installed, "not_installed": not installed,
                "updates": state == tr("Update available"),
                "favourites": bool(idx.data(FavouriteRole)), "hidden": True}.get(self.kind, True)


class LibraryPage(QWidget):
    changed = Signal()  # the player changed the library (categories, hidden): reload it
    playRequested = Signal(str)  # product id

    def __init__(self, link: EngineLink, model: LibraryModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.model = model
        t = self.texts = Texts()
        self.proxy = LibraryFilter(self)
        self.proxy.setSourceModel(model)
        self.search = QLineEdit()
        t(self.search.setPlaceholderText, "Search the library")
        t(self.search.setAccessibleName, "Search")
        self.search.textChanged.connect(lambda text: self.proxy.set(text=text))
        self.filter = QComboBox()
        t(self.filter.setAccessibleName, "Show")
        for i, (key, text) in enumerate(KINDS):
            self.filter.addItem("", key)
            t(partial(self.filter.setItemText, i), text)
        self.filter.currentIndexChanged.connect(lambda _i: self.set_kind(self.filter.currentData()))
        self.category = QComboBox()
        t(self.category.setAccessibleName, "Category")
        self.category.addItem(tr("All categories"), "")
        self.category.currentIndexChanged.connect(
            lambda _i: self.proxy.set(category=self.category.currentData() or ""))
        self.sort = QComboBox()
        t(self.sort.setAccessibleName, "Sort by")
        for i, (key, text) in enumerate(SORTS):
            self.sort.addItem("", key)
            t(partial(self.sort.setItemText, i), text)
        self.sort.currentIndexChanged.connect(lambda _i: self.sort_by(self.sort.currentData()))
        self.proxy.setSortRole(SortRole)
        self.proxy.sort(0, Qt.SortOrder.AscendingOrder)
        self.views = QComboBox()
        t(self.views.setAccessibleName, "Saved views")
        self.views.activated.connect(lambda _i: self.apply_view(self.views.currentData()))
        self.save_view_button = QPushButton()
        t(self.save_view_button.setText, "Save view…")
        self.save_view_button.clicked.connect(self.ask_view_name)
        self.view_mode = QPushButton()
        self.view_mode.setCheckable(True)
        self.view_mode.toggled.connect(self.set_list_mode)
        top = QHBoxLayout()
        top.addWidget(self.search, 1)
        for w in (self.filter, self.category, self.sort, self.views, self.save_view_button,
                  self.view_mode):
            top.addWidget(w)
        self.view = QListView()
        t(self.view.setAccessibleName, "Library")
        self.view.setModel(self.proxy)
        self.view.setUniformItemSizes(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.activated.connect(lambda _idx: self.primary_action())  # Enter / double click
        self.set_list_mode(False)
        self.view.selectionModel().currentChanged.connect(lambda *_: self.show_details())
        # the selected game
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.title.setStyleSheet("font-size: 18pt; font-weight: 600;")
        self.state = QLabel()
        self.state.setStyleSheet("font-weight: 600;")
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        def button(text: str, action: Any) -> QPushButton:
            b = QPushButton()
            t(b.setText, text)
            b.clicked.connect(action)
            return b

        self.play = button("Play", lambda: self.act("play"))
        self.play.setStyleSheet("QPushButton { font-size: 13pt; font-weight: 600; padding: 8px; }")
        self.install = button("Install", lambda: self.act("install"))
        self.install.setStyleSheet(self.play.styleSheet())
        self.update_button = button("Update", lambda: self.act("update"))
        self.store = StorePanel(link, model)
        self.store.libraryChanged.connect(self.changed.emit)
        self.verify = button("Verify files", lambda: self.act("verify"))
        self.uninstall = button("Uninstall", lambda: self.act("uninstall"))
        self.rollback = button("Roll back", lambda: self.act("rollback"))
        self.move_button = button("Move…", lambda: self.act("move"))
        self.favourite = QPushButton()
        self.favourite.setCheckable(True)
        self.favourite.clicked.connect(self.toggle_favourite)
        self.categories_button = button("Categories…", self.edit_categories)
        self.achievements_button = button("Achievements…", lambda: self.act("achievements"))
        self.saves_button = button("Cloud saves…", lambda: self.act("saves"))
        self.hide_button = QPushButton()
        self.hide_button.clicked.connect(self.toggle_hidden)
        self.categories: list[dict[str, Any]] = []
        grid = QGridLayout()
        for i, b in enumerate((self.achievements_button, self.saves_button, self.verify,
                               self.uninstall, self.rollback, self.move_button, self.favourite,
                               self.categories_button, self.hide_button)):
            grid.addWidget(b, i // 2, i % 2)
        self.actions_box = QWidget()  # what only a game in the library has
        grid.setContentsMargins(0, 0, 0, 0)
        self.actions_box.setLayout(grid)
        side = QVBoxLayout()
        for part in (self.title, self.state, self.play, self.install, self.update_button,
                     self.store):
            side.addWidget(part)
        side.addWidget(self.info)
        side.addWidget(self.actions_box)
        side.addStretch(1)
        details = QWidget()
        details.setLayout(side)
        details.setFixedWidth(320)
        body = QHBoxLayout()
        body.addWidget(self.view, 1)
        body.addWidget(details)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(body, 1)
        self._keep: str | None = None
        self.updates: dict[str, dict[str, Any]] = {}  # product id -> the backend's update answer
        self.model.dataChanged.connect(lambda *_: self.show_details())
        self.model.modelAboutToBeReset.connect(self._remember)
        self.model.modelReset.connect(self.select_first)
        self.load_views()
        self.retranslate()

    # -- language -----------------------------------------------------------------------------
    def retranslate(self) -> None:
        """Every string again in the current language (after a switch)."""
        self.texts.apply()
        self.store.retranslate()
        self.view_mode.setText(tr("Grid view") if self.view_mode.isChecked() else tr("List view"))
        self.set_categories(self.categories)
        self.load_views()
        self.show_details()

    # -- filters, categories, saved views -----------------------------------------------------
    def _remember(self) -> None:
        self._keep = self.current_product()

    def set_categories(self, categories: list[dict[str, Any]]) -> None:
        self.categories = categories
        self.model.set_favourite_category(favourite_category(categories))
        current = self.category.currentData()
        self.category.blockSignals(True)
        self.category.clear()
        self.category.addItem(tr("All categories"), "")
        shown = [(tr(FAVOURITES) if c["categoryId"] == self.model.favourite_id else str(c["name"]),
                  str(c["categoryId"])) for c in categories]
        for name, cid in shown:
            self.category.addItem(name, cid)
        for name, cid in shown:
            self.category.addItem(tr("Not in: {0}").format(name), EXCLUDE + cid)
        self.category.setCurrentIndex(max(0, self.category.findData(current)))
        self.category.blockSignals(False)
        self.proxy.set(category=self.category.currentData() or "")
        self.proxy.invalidate()
        self.show_details()

    def current_view(self) -> dict[str, Any]:
        return {"kind": self.filter.currentData(), "category": self.category.currentData() or "",
                "text": self.search.text(), "sort": self.sort.currentData()}

    def saved_views(self) -> dict[str, dict[str, Any]]:
        try:
            views = json.loads(str(QSettings().value(VIEWS_KEY) or "{}"))
        except ValueError:
            return {}
        return views if isinstance(views, dict) else {}

    def load_views(self) -> None:
        self.views.blockSignals(True)
        self.views.clear()
        self.views.addItem(tr("Saved views"), None)
        for name, view in sorted(self.saved_views().items()):
            self.views.addItem(name, view)
        self.views.blockSignals(False)

    def ask_view_name(self) -> None:
        self.view_dialog = QInputDialog(self)
        self.view_dialog.setWindowTitle(tr("Save view"))
        self.view_dialog.setLabelText(tr("Name of this view (filters, category, search, sort):"))
        self.view_dialog.textValueSelected.connect(self.save_view)
        self.view_dialog.open()

    def save_view(self, name: str) -> None:
        name = name.strip()
        if not name:
            return
        views = self.saved_views()
        views[name] = self.current_view()
        QSettings().setValue(VIEWS_KEY, json.dumps(views))
        self.load_views()
        self.views.setCurrentIndex(self.views.findText(name))

    def apply_view(self, view: Any) -> None:
        if not isinstance(view, dict):
            return
        for combo, key in ((self.filter, "kind"), (self.sort, "sort"), (self.category, "category")):
            index = combo.findData(view.get(key) or "")
            if index >= 0:
                combo.setCurrentIndex(index)
        self.search.setText(str(view.get("text") or ""))

    # -- the selected game --------------------------------------------------------------------
    def current_item(self) -> dict[str, Any] | None:
        pid = self.current_product()
        return self.model.item_of(pid) if pid else None

    def toggle_hidden(self) -> None:
        item = self.current_item()
        if item is not None and item["libraryItem"].get("itemId"):
            attrs = item["libraryItem"]
            self.link.request("libraryItemUpdate", {"itemId": attrs["itemId"],
                                                    "hidden": not attrs.get("is_hidden")},
                              lambda _r: self.changed.emit())

    def toggle_favourite(self) -> None:
        item = self.current_item()
        if item is None or not item["libraryItem"].get("itemId"):
            return
        attrs = item["libraryItem"]

        def put(fav_id: str) -> None:
            ids = [c for c in attrs.get("category_ids") or [] if c != fav_id]
            if not self.model.is_favourite(item):
                ids.append(fav_id)
            self.link.request("libraryItemUpdate", {"itemId": attrs["itemId"], "categoryIds": ids},
                              lambda _r: self.changed.emit())

        if self.model.favourite_id is None:  # the first favourite creates the category
            self.link.request("categoryCreate", {"name": FAVOURITES},
                              lambda c: put(str(c["categoryId"])))
        else:
            put(self.model.favourite_id)

    def edit_categories(self) -> None:
        item = self.current_item()
        if item is None or not item["libraryItem"].get("itemId"):
            return
        self.categories_dialog = CategoriesDialog(self.link, self.categories, item["libraryItem"],
                                                  self)
        self.categories_dialog.accepted.connect(self.changed.emit)
        self.categories_dialog.open()

    def set_kind(self, kind: str) -> None:
        self.proxy.set(kind=kind)
        self.sort_by(self.sort.currentData())
        if not self.view.currentIndex().isValid() and self.proxy.rowCount():
            self.view.setCurrentIndex(self.proxy.index(0, 0))

    def sort_by(self, key: str) -> None:
        """The chosen order; the wishlist view keeps the wishlist's own (priority, then age)."""
        self.model.sort_key = key
        if self.proxy.kind == "wishlist":
            self.proxy.setSortRole(WishRankRole)
            order = Qt.SortOrder.AscendingOrder
        else:
            self.proxy.setSortRole(SortRole)
            order = Qt.SortOrder.AscendingOrder if key == "name" else Qt.SortOrder.DescendingOrder
        self.proxy.invalidate()
        self.proxy.sort(0, order)

    def set_list_mode(self, as_list: bool) -> None:
        self.model.badges_in_text = as_list
        self.model.refresh_texts()
        if as_list:
            self.view.setViewMode(QListView.ViewMode.ListMode)
            self.view.setIconSize(QSize(40, 60))
            self.view.setGridSize(QSize())
            self.view_mode.setText(tr("Grid view"))
        else:
            self.view.setViewMode(QListView.ViewMode.IconMode)
            self.view.setIconSize(QSize(180, 270))
            self.view.setGridSize(QSize(200, 310))
            self.view.setResizeMode(QListView.ResizeMode.Adjust)
            self.view.setMovement(QListView.Movement.Static)
            self.view.setWordWrap(True)
            self.view_mode.setText(tr("List view"))

    def select_first(self) -> None:
        """After a reload: the game that was selected, else the first one."""
        for row in range(self.proxy.rowCount()):
            idx = self.proxy.index(row, 0)
            if self._keep is not None and idx.data(ProductRole) == self._keep:
                self.view.setCurrentIndex(idx)
                break
        else:
            if self.proxy.rowCount():
                self.view.setCurrentIndex(self.proxy.index(0, 0))
        self.show_details()

    def current_product(self) -> str | None:
        idx = self.view.currentIndex()
        return str(idx.data(ProductRole)) if idx.isValid() else None

    def show_details(self) -> None:
        pid = self.current_product()
        item = self.model.item_of(pid) if pid else None
        actions = (self.play, self.install, self.update_button, self.verify, self.uninstall,
                   self.rollback, self.move_button, self.favourite, self.categories_button,
                   self.hide_button, self.achievements_button, self.saves_button)
        for b in actions:
            b.setEnabled(False)
        self.favourite.setText(tr("Favourite"))
        self.hide_button.setText(tr("Hide"))
        self.store.show_item(pid if item is not None else None)
        if item is None:
            self.title.setText(tr("No game selected"))
            self.state.setText("")
            self.info.setText("")
            self.play.setVisible(False)
            self.install.setVisible(True)
            return
        attrs, installed = item["libraryItem"], item["installed"]
        state = self.model.state_text(item)
        self.title.setText(str(attrs.get("title") or pid))
        self.state.setText(state)
        store = self.model.is_store(item)
        self.update_button.setVisible(not store)
        self.actions_box.setVisible(not store)
        if store:  # not in the library: nothing to install or play yet
            self.info.setText("\n".join(describe(self.model, item)))
            self.play.setVisible(False)
            self.install.setVisible(False)
            return
        self.info.setText("\n".join(self.detail_lines(pid or "", attrs, installed)))
        task = self.model.tasks.get(pid or "")
        busy = task is not None and task["status"] not in ("completed", "cancelled", "error")
        running = bool(item.get("running"))
        has_item = bool(attrs.get("itemId"))
        fav = self.model.is_favourite(item)
        self.favourite.setChecked(fav)
        self.favourite.setText(tr("★ Favourite") if fav else tr("☆ Favourite"))
        self.hide_button.setText(tr("Unhide") if attrs.get("is_hidden") else tr("Hide"))
        self.play.setVisible(installed is not None)
        self.install.setVisible(installed is None)
        self.play.setEnabled(installed is not None and not busy and not running
                             and not installed.get("dirty"))
        self.play.setText(tr("Running") if running else tr("Play"))
        self.install.setEnabled(installed is None and not busy
                                and bool(attrs.get("latest_version_id")))
        self.update_button.setEnabled(installed is not None and not busy and not running
                                      and state == tr("Update available"))
        for b in (self.verify, self.uninstall, self.move_button):
            b.setEnabled(installed is not None and not busy and not running)
        self.rollback.setEnabled(installed is not None and not busy and not running
                                 and bool(installed.get("previousVersionId")))
        for b in (self.favourite, self.categories_button, self.hide_button,
                  self.achievements_button):
            b.setEnabled(has_item)
        self.saves_button.setEnabled(installed is not None)

    def detail_lines(self, pid: str, attrs: dict[str, Any],
                     installed: dict[str, Any] | None) -> list[str]:
        latest = attrs.get("latest_version_id")
        lines = [tr("Latest version: {0}").format(latest) if latest else
                 tr("Being published; it can be installed in a moment.")]
        server = int(attrs.get("total_playtime_seconds") or 0)
        here = int(self.model.local_playtime.get(pid, 0))
        seconds = max(server, here)  # the backend's total lags a journal not yet sent
        last = attrs.get("last_played_at")
        if seconds or last:
            lines.append(tr("Played {0}; last {1}").format(
                human_duration(seconds), local_time(last) if last else tr("never")))
            if here and here != seconds:
                lines.append(tr("On this device: {0}").format(human_duration(here)))
        else:
            lines.append(tr("Never played"))
        if installed:
            lines.append(tr("Installed: {0}, {1} in {2}").format(
                installed["versionId"], human_bytes(installed["sizeBytes"]), installed["path"]))
            update = self.updates.get(pid)
            if update and update.get("isUpdateAvailable"):
                lines.append(tr("Update to {0}: download {1} (a full download is {2}); the "
                                "rest is reused from the installed files.").format(
                    update.get("latestVersionId"), human_bytes(update.get("downloadSizeBytes") or 0),
                    human_bytes(update.get("fullDownloadSizeBytes") or 0)))
        elif attrs.get("install_size_bytes"):
            lines.append(tr("Size on disk: {0}").format(human_bytes(attrs["install_size_bytes"])))
        return lines

    def primary_action(self) -> None:
        """Enter or a double click on a game: play it if installed, else install it (or borrow
        it, a game of the family)."""
        if self.store.primary():
            return
        if self.play.isVisible() and self.play.isEnabled():
            self.act("play")
        elif self.install.isVisible() and self.install.isEnabled():
            self.act("install")

    def act(self, action: str) -> None:
        pid = self.current_product()
        if pid is None:
            return
        if action == "install":
            self.ask_install(pid)
        elif action == "play":
            self.playRequested.emit(pid)
        elif action == "verify":
            self.link.request("verify", {"productId": pid}, self._verified)
        elif action == "move":
            self.ask_move(pid)
        elif action == "uninstall":
            self.ask_uninstall(pid)
        elif action == "achievements":
            self.link.request("achievements", {"productId": pid},
                              lambda rows: self.show_achievements(pid, rows))
        elif action == "saves":
            self.link.request("saves", {"productId": pid},
                              lambda status: self.show_saves(pid, status))
        else:
            self.link.request(action, {"productId": pid})

    def title_of(self, pid: str) -> str:
        item = self.model.item_of(pid)
        return str((item or {}).get("libraryItem", {}).get("title") or pid)

    def show_achievements(self, pid: str, rows: list[dict[str, Any]]) -> None:
        self.achievements_dialog = AchievementsDialog(self.title_of(pid), rows, self)
        self.achievements_dialog.open()

    def show_saves(self, pid: str, status: dict[str, Any]) -> None:
        self.saves_dialog = SavesDialog(self.link, self.title_of(pid), status, self)
        self.saves_dialog.open()

    def ask_uninstall(self, pid: str) -> None:
        item = self.model.item_of(pid)
        title = str((item or {}).get("libraryItem", {}).get("title") or pid)
        box = QMessageBox(QMessageBox.Icon.Question, tr("Uninstall"),
                          tr("Uninstall {0}? Only the game's own files are removed; your saves "
                             "and any files you added stay.").format(title),
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setObjectName("uninstallDialog")
        box.accepted.connect(lambda: self.link.request("uninstall", {"productId": pid},
                                                       lambda _r: self.changed.emit()))
        self.uninstall_box = box
        box.open()

    def ask_move(self, pid: str) -> None:
        dialog = QFileDialog(self, tr("Move the game to"))
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dialog.fileSelected.connect(lambda folder: self.link.request(
            "moveInstall", {"productId": pid, "folder": folder}, lambda _r: self.changed.emit()))
        self.move_dialog = dialog
        dialog.open()

    def ask_install(self, pid: str) -> None:
        item = self.model.item_of(pid) or {"libraryItem": {}}
        attrs = item["libraryItem"]
        library = self.link.status.get("libraryDir") or Path(
            str(self.link.status.get("dataDir") or self.link.data_dir)) / "library"
        self.install_dialog = InstallDialog(str(attrs.get("title") or pid),
                                            int(attrs.get("install_size_bytes") or 0),
                                            Path(library) / pid, self)
        self.install_dialog.accepted.connect(lambda: self.link.request("install", {
            "productId": pid, "target": str(Path(self.install_dialog.folder.text()).expanduser()
                                            .absolute())}))
        self.install_dialog.open()

    def _verified(self, report: dict[str, Any]) -> None:
        if report["ok"]:
            QMessageBox.information(self, tr("Verify files"),
                                    tr("All {0} files are intact.").format(report["filesChecked"]))
            return
        bad = len(report["missing"]) + len(report["wrongSize"]) + len(report["damaged"]) + \
            len(report.get("links", []))
        if QMessageBox.question(self, tr("Verify files"), tr(
                "{0} file(s) are damaged or missing. Repair them now?").format(bad)) \
                == QMessageBox.StandardButton.Yes:
            self.link.request("repair", {"productId": report["productId"]})


class CategoriesDialog(QDialog):
    """Tick the categories a game belongs to; create new ones on the spot."""

    def __init__(self, link: EngineLink, categories: list[dict[str, Any]],
                 attrs: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.item_id = str(attrs["itemId"])
        self.setWindowTitle(tr("Categories of {0}").format(attrs.get("title", "")))
        self.list = QListWidget()
        self.list.setAccessibleName(tr("Categories"))
        chosen = set(attrs.get("category_ids") or [])
        for c in categories:
            self.add_row(c, c["categoryId"] in chosen)
        self.new_name = QLineEdit(placeholderText=tr("New category"))
        self.new_name.setAccessibleName(tr("New category"))
        add = QPushButton(tr("Add"))
        add.clicked.connect(self.create_category)
        row = QHBoxLayout()
        row.addWidget(self.new_name, 1)
        row.addWidget(add)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                               | QDialogButtonBox.StandardButton.Cancel)
        box.accepted.connect(self.save)
        box.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        layout.addLayout(row)
        layout.addWidget(box)

    def add_row(self, category: dict[str, Any], checked: bool) -> None:
        name = str(category["name"])
        row = QListWidgetItem(tr(FAVOURITES) if name.casefold() == FAVOURITES.casefold() else name)
        row.setData(Qt.ItemDataRole.UserRole, category["categoryId"])
        row.setFlags(row.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        row.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        self.list.addItem(row)

    def create_category(self) -> None:
        name = self.new_name.text().strip()
        if name:
            self.link.request("categoryCreate", {"name": name}, self.created)

    def created(self, category: dict[str, Any]) -> None:
        self.add_row(category, True)
        self.new_name.clear()

    def checked_ids(self) -> list[str]:
        return [str(self.list.item(i).data(Qt.ItemDataRole.UserRole))
                for i in range(self.list.count())
                if self.list.item(i).checkState() == Qt.CheckState.Checked]

    def save(self) -> None:
        self.link.request("libraryItemUpdate", {"itemId": self.item_id,
                                                "categoryIds": self.checked_ids()},
                          lambda _r: self.accept())


class InstallDialog(QDialog):
    """Where to install, with the space it needs and the space there is, before anything starts."""

    def __init__(self, title: str, size: int, default_folder: Path,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("Install {0}").format(title))
        self.needed = size
        self.folder = QLineEdit(str(default_folder))
        self.folder.setAccessibleName(tr("Install folder"))
        browse = QPushButton(tr("Browse…"))
        browse.clicked.connect(self.browse)
        self.space = QLabel()
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        form = QFormLayout(self)
        form.addRow(tr("Install folder:"), row)
        form.addRow(self.space)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow(self.buttons)
        self.folder.textChanged.connect(lambda _t: self.update_space())
        self.resize(560, self.sizeHint().height())
        self.update_space()

    def browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, tr("Install folder"), self.folder.text())
        if chosen:
            self.folder.setText(chosen)

    def update_space(self) -> None:
        probe = Path(self.folder.text()).expanduser()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            free = 0
        enough = free >= self.needed
        self.space.setText(tr("Needs {0} on disk; {1} free there.").format(
            human_bytes(self.needed), human_bytes(free))
            + ("" if enough else " " + tr("Not enough space.")))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(enough)
