"""The launcher's main window: Library, Downloads and Settings pages over one ``EngineLink``.

Widgets are thin: they show models and forward actions to the link; every answer and event
comes back through its signals on the Qt thread.
"""

from __future__ import annotations

import shutil
import time
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
    QUrl,
    Signal,
)
from PySide6.QtGui import QCloseEvent, QImage, QKeySequence, QPixmap, QShortcut
from PySide6.QtNetwork import QNetworkAccessManager, QNetworkReply, QNetworkRequest
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
    QSystemTrayIcon,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from engine.api.protocol import Event, TaskStatus, UpdatePlanned
from ui.i18n import LANGUAGES, chosen_language
from ui.link import EngineLink
from ui.models import (
    COVER_SIZE,
    CategoriesRole,
    HiddenRole,
    LibraryModel,
    ProductRole,
    ProgressRole,
    SortRole,
    StateRole,
    TasksModel,
    human_bytes,
)
from ui.speedgraph import SpeedGraph

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
}


class LibraryFilter(QSortFilterProxyModel):
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
        if bool(idx.data(HiddenRole)) != (self.kind == "hidden"):
            return False  # hidden games show only under "Hidden"
        if self.category and self.category not in (idx.data(CategoriesRole) or []):
            return False
        installed = state not in (self.tr("Not installed"),)
        return {"all": True, "installed": installed, "not_installed": not installed,
                "updates": state == self.tr("Update available"), "hidden": True}.get(self.kind, True)


class ProgressDelegate(QStyledItemDelegate):
    """The progress column as a bar with its percentage as text (state never by colour only)."""

    def paint(self, painter: Any, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        bar = QStyleOptionProgressBar()
        bar.rect = option.rect.adjusted(2, 4, -2, -4)
        bar.minimum, bar.maximum = 0, 100
        bar.progress = int(index.data(ProgressRole) or 0)
        bar.text = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        bar.textVisible = True
        QApplication.style().drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter)


class LibraryPage(QWidget):
    changed = Signal()  # the player changed the library (categories, hidden): reload it

    def __init__(self, link: EngineLink, model: LibraryModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.model = model
        self.proxy = LibraryFilter(self)
        self.proxy.setSourceModel(model)
        self.search = QLineEdit(placeholderText=self.tr("Search the library"))
        self.search.setAccessibleName(self.tr("Search"))
        self.search.textChanged.connect(lambda t: self.proxy.set(text=t))
        self.filter = QComboBox()
        self.filter.setAccessibleName(self.tr("Show"))
        for key, text in (("all", self.tr("All games")), ("installed", self.tr("Installed")),
                          ("not_installed", self.tr("Not installed")),
                          ("updates", self.tr("Updates available")), ("hidden", self.tr("Hidden"))):
            self.filter.addItem(text, key)
        self.filter.currentIndexChanged.connect(
            lambda _i: self.proxy.set(kind=self.filter.currentData()))
        self.category = QComboBox()
        self.category.setAccessibleName(self.tr("Category"))
        self.category.addItem(self.tr("All categories"), "")
        self.category.currentIndexChanged.connect(
            lambda _i: self.proxy.set(category=self.category.currentData() or ""))
        self.sort = QComboBox()
        self.sort.setAccessibleName(self.tr("Sort by"))
        for key, text in (("name", self.tr("Name")), ("last_played", self.tr("Last played")),
                          ("playtime", self.tr("Playtime")), ("added", self.tr("Date added")),
                          ("size", self.tr("Size"))):
            self.sort.addItem(text, key)
        self.sort.currentIndexChanged.connect(lambda _i: self.sort_by(self.sort.currentData()))
        self.proxy.setSortRole(SortRole)
        self.proxy.sort(0, Qt.SortOrder.AscendingOrder)
        self.view_mode = QPushButton(self.tr("List view"))
        self.view_mode.setCheckable(True)
        self.view_mode.toggled.connect(self.set_list_mode)
        top = QHBoxLayout()
        top.addWidget(self.search, 1)
        top.addWidget(self.filter)
        top.addWidget(self.category)
        top.addWidget(self.sort)
        top.addWidget(self.view_mode)
        self.view = QListView()
        self.view.setAccessibleName(self.tr("Library"))
        self.view.setModel(self.proxy)
        self.view.setUniformItemSizes(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.set_list_mode(False)
        self.view.selectionModel().currentChanged.connect(lambda *_: self.show_details())
        # details of the selected game
        self.title = QLabel()
        self.title.setStyleSheet("font-size: 18pt; font-weight: 600;")
        self.state = QLabel()
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.install = QPushButton(self.tr("Install"))
        self.update_button = QPushButton(self.tr("Update"))
        self.verify = QPushButton(self.tr("Verify files"))
        self.uninstall = QPushButton(self.tr("Uninstall"))
        self.categories_button = QPushButton(self.tr("Categories…"))
        self.categories_button.clicked.connect(self.edit_categories)
        self.hide_button = QPushButton(self.tr("Hide"))
        self.hide_button.clicked.connect(self.toggle_hidden)
        self.categories: list[dict[str, Any]] = []
        self.install.clicked.connect(lambda: self.act("install"))
        self.update_button.clicked.connect(lambda: self.act("update"))
        self.verify.clicked.connect(lambda: self.act("verify"))
        self.uninstall.clicked.connect(lambda: self.act("uninstall"))
        side = QVBoxLayout()
        for w in (self.title, self.state, self.info, self.install, self.update_button,
                  self.verify, self.uninstall, self.categories_button, self.hide_button):
            side.addWidget(w)
        side.addStretch(1)
        details = QWidget()
        details.setLayout(side)
        details.setFixedWidth(300)
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
        self.show_details()

    def _remember(self) -> None:
        self._keep = self.current_product()

    def set_categories(self, categories: list[dict[str, Any]]) -> None:
        self.categories = categories
        current = self.category.currentData()
        self.category.blockSignals(True)
        self.category.clear()
        self.category.addItem(self.tr("All categories"), "")
        for c in categories:
            self.category.addItem(str(c["name"]), c["categoryId"])
        self.category.setCurrentIndex(max(0, self.category.findData(current)))
        self.category.blockSignals(False)

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

    def edit_categories(self) -> None:
        item = self.current_item()
        if item is None or not item["libraryItem"].get("itemId"):
            return
        self.categories_dialog = CategoriesDialog(self.link, self.categories, item["libraryItem"],
                                                  self)
        self.categories_dialog.accepted.connect(self.changed.emit)
        self.categories_dialog.open()

    def sort_by(self, key: str) -> None:
        self.model.sort_key = key
        order = Qt.SortOrder.AscendingOrder if key == "name" else Qt.SortOrder.DescendingOrder
        self.proxy.invalidate()
        self.proxy.sort(0, order)

    def set_list_mode(self, as_list: bool) -> None:
        if as_list:
            self.view.setViewMode(QListView.ViewMode.ListMode)
            self.view.setIconSize(QSize(40, 60))
            self.view.setGridSize(QSize())
            self.view_mode.setText(self.tr("Grid view"))
        else:
            self.view.setViewMode(QListView.ViewMode.IconMode)
            self.view.setIconSize(QSize(180, 270))
            self.view.setGridSize(QSize(200, 310))
            self.view.setResizeMode(QListView.ResizeMode.Adjust)
            self.view.setMovement(QListView.Movement.Static)
            self.view.setWordWrap(True)
            self.view_mode.setText(self.tr("List view"))

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
        for b in (self.install, self.update_button, self.verify, self.uninstall):
            b.setEnabled(False)
        if item is None:
            self.title.setText(self.tr("No game selected"))
            self.state.setText("")
            self.info.setText("")
            return
        attrs, installed = item["libraryItem"], item["installed"]
        state = self.model.state_text(item)
        self.title.setText(str(attrs.get("title") or pid))
        self.state.setText(state)
        lines = [self.tr("Latest version: {0}").format(attrs.get("latest_version_id", "?"))]
        if installed:
            lines.append(self.tr("Installed: {0}, {1} in {2}").format(
                installed["versionId"], human_bytes(installed["sizeBytes"]), installed["path"]))
            update = self.updates.get(pid or "")
            if update and update.get("isUpdateAvailable"):
                lines.append(self.tr("Update to {0}: download {1} (a full download is {2}); the "
                                     "rest is reused from the installed files.").format(
                    update.get("latestVersionId"), human_bytes(update.get("downloadSizeBytes") or 0),
                    human_bytes(update.get("fullDownloadSizeBytes") or 0)))
        elif attrs.get("install_size_bytes"):
            lines.append(self.tr("Size on disk: {0}").format(human_bytes(attrs["install_size_bytes"])))
        self.info.setText("\n".join(lines))
        busy = pid in self.model.tasks and self.model.tasks[pid]["status"] not in (
            "completed", "cancelled", "error")
        self.hide_button.setText(self.tr("Unhide") if attrs.get("is_hidden") else self.tr("Hide"))
        self.hide_button.setEnabled(bool(attrs.get("itemId")))
        self.categories_button.setEnabled(bool(attrs.get("itemId")))
        self.install.setEnabled(installed is None and not busy)
        self.update_button.setEnabled(installed is not None and not busy
                                      and state == self.tr("Update available"))
        self.verify.setEnabled(installed is not None and not busy)
        self.uninstall.setEnabled(installed is not None and not busy)

    def act(self, action: str) -> None:
        pid = self.current_product()
        if pid is None:
            return
        if action == "install":
            self.ask_install(pid)
            return
        if action == "verify":
            self.link.request("verify", {"productId": pid}, self._verified)
        else:
            self.link.request(action, {"productId": pid})

    def ask_install(self, pid: str) -> None:
        item = self.model.item_of(pid) or {"libraryItem": {}}
        attrs = item["libraryItem"]
        data_dir = Path(str(self.link.status.get("dataDir") or self.link.data_dir))
        self.install_dialog = InstallDialog(str(attrs.get("title") or pid),
                                            int(attrs.get("install_size_bytes") or 0),
                                            data_dir / "library" / pid, self)
        self.install_dialog.accepted.connect(lambda: self.link.request("install", {
            "productId": pid, "target": str(Path(self.install_dialog.folder.text()).expanduser()
                                            .absolute())}))
        self.install_dialog.open()

    def _verified(self, report: dict[str, Any]) -> None:
        if report["ok"]:
            QMessageBox.information(self, self.tr("Verify files"),
                                    self.tr("All {0} files are intact.").format(report["filesChecked"]))
            return
        bad = len(report["missing"]) + len(report["wrongSize"]) + len(report["damaged"]) + \
            len(report.get("links", []))
        if QMessageBox.question(self, self.tr("Verify files"), self.tr(
                "{0} file(s) are damaged or missing. Repair them now?").format(bad)) \
                == QMessageBox.StandardButton.Yes:
            self.link.request("repair", {"productId": report["productId"]})


class DownloadsPage(QWidget):
    def __init__(self, link: EngineLink, model: TasksModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.model = model
        self.graph = SpeedGraph()
        self.table = QTableView()
        self.table.setAccessibleName(self.tr("Download queue"))
        self.table.setModel(model)
        self.table.setItemDelegateForColumn(TasksModel.COLUMNS.index("progress"),
                                            ProgressDelegate(self.table))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setDragEnabled(True)
        self.table.setAcceptDrops(True)
        self.table.setDropIndicatorShown(True)
        self.table.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        model.reorderRequested.connect(self.reorder)
        self.history = QPushButton(self.tr("Show finished"))
        self.history.setCheckable(True)
        buttons = QHBoxLayout()
        self.buttons: dict[str, QPushButton] = {}
        for key, text in (("pause", self.tr("Pause")), ("resume", self.tr("Resume")),
                          ("cancel", self.tr("Cancel")), ("up", self.tr("Move up")),
                          ("first", self.tr("Download now"))):
            b = QPushButton(text)
            b.clicked.connect(lambda _c=False, k=key: self.act(k))
            buttons.addWidget(b)
            self.buttons[key] = b
        buttons.addStretch(1)
        self.limit = QSpinBox()
        self.limit.setRange(0, 10_000)
        self.limit.setSuffix(self.tr(" MB/s"))
        self.limit.setSpecialValueText(self.tr("No limit"))
        self.limit.setAccessibleName(self.tr("Speed limit"))
        apply_limit = QPushButton(self.tr("Set limit"))
        apply_limit.clicked.connect(self.set_limit)
        task_limit = QPushButton(self.tr("For the selected game"))
        task_limit.clicked.connect(self.set_task_limit)
        buttons.addWidget(QLabel(self.tr("Speed limit:")))
        buttons.addWidget(self.limit)
        buttons.addWidget(apply_limit)
        buttons.addWidget(task_limit)
        buttons.addWidget(self.history)
        self.plan = QLabel()
        self.plan.setWordWrap(True)
        # the schedule right where downloads are watched (also on the settings page)
        self.schedule = QLineEdit(placeholderText=self.tr("e.g. 22:00-06:00; sat,sun 00:00-24:00"))
        self.schedule.setAccessibleName(self.tr("Download only during:"))
        apply_schedule = QPushButton(self.tr("Set schedule"))
        apply_schedule.clicked.connect(self.set_schedule)
        schedule_row = QHBoxLayout()
        schedule_row.addWidget(QLabel(self.tr("Download only during:")))
        schedule_row.addWidget(self.schedule, 1)
        schedule_row.addWidget(apply_schedule)
        layout = QVBoxLayout(self)
        layout.addWidget(self.graph)
        layout.addLayout(schedule_row)
        layout.addWidget(self.plan)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)

    def selected_task(self) -> dict[str, Any] | None:
        idx = self.table.currentIndex()
        return self.model.task_at(idx.row()) if idx.isValid() else None

    def act(self, action: str) -> None:
        task = self.selected_task()
        if task is None:
            return
        tid = task["taskId"]
        if action in ("pause", "resume", "cancel"):
            self.link.request(action, {"taskId": tid})
        elif action == "up":
            self.link.request("move", {"taskId": tid, "position": max(0, task["position"] - 1)})
        elif action == "first":
            self.link.request("move", {"taskId": tid, "position": 0})

    def reorder(self, task_id: str, position: int) -> None:
        self.link.request("move", {"taskId": task_id, "position": position}, self.model.set_tasks)

    def set_task_limit(self) -> None:
        task = self.selected_task()
        if task is not None:
            mbps = self.limit.value()
            self.link.request("limit", {"taskId": task["taskId"], "bps": mbps * 1_000_000 or None,
                                        "set": True})

    def set_schedule(self) -> None:
        windows = [w.strip() for w in self.schedule.text().split(";") if w.strip()]
        self.link.request("schedule", {"windows": windows} if windows else {"clear": True})

    def set_limit(self) -> None:
        mbps = self.limit.value()
        self.link.request("limit", {"bps": mbps * 1_000_000 if mbps else None, "set": True})

    def show_plan(self, plan: UpdatePlanned) -> None:
        self.plan.setText(self.tr(
            "Update {0} {1} → {2}: download {3} (a full install is {4}), reuse {5} already on "
            "disk, write {6}.").format(
            plan.product_id, plan.from_version, plan.to_version, human_bytes(plan.download_bytes),
            human_bytes(plan.full_download_bytes), human_bytes(plan.reused_bytes),
            human_bytes(plan.write_bytes)))


class SettingsPage(QWidget):
    def __init__(self, link: EngineLink, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        form = QFormLayout(self)
        self.concurrent = QSpinBox()
        self.concurrent.setRange(1, 16)
        self.schedule = QLineEdit(placeholderText=self.tr("e.g. 22:00-06:00; sat,sun 00:00-24:00"))
        self.library_dir = QLabel()
        self.language = QComboBox()
        for code, name in LANGUAGES.items():
            self.language.addItem(name, code)
        self.language.setCurrentIndex(max(0, self.language.findData(chosen_language())))
        save = QPushButton(self.tr("Save"))
        save.clicked.connect(self.save)
        form.addRow(self.tr("Downloads at the same time:"), self.concurrent)
        form.addRow(self.tr("Download only during:"), self.schedule)
        form.addRow(self.tr("Engine data folder:"), self.library_dir)
        form.addRow(self.tr("Language (applies on restart):"), self.language)
        form.addRow("", save)

    def load(self, status: dict[str, Any]) -> None:
        self.library_dir.setText(str(status.get("dataDir", "")))
        self.schedule.setText("; ".join(status.get("schedule", [])))
        self.link.request("settings", {"key": "max_concurrent_tasks"},
                          lambda r: self.concurrent.setValue(int(r["settings"]["max_concurrent_tasks"])))

    def save(self) -> None:
        QSettings().setValue("language", self.language.currentData())
        self.link.request("settings", {"key": "max_concurrent_tasks",
                                       "value": self.concurrent.value()})
        windows = [w.strip() for w in self.schedule.text().split(";") if w.strip()]
        self.link.request("schedule", {"windows": windows} if windows else {"clear": True})


class CategoriesDialog(QDialog):
    """Tick the categories a game belongs to; create new ones on the spot."""

    def __init__(self, link: EngineLink, categories: list[dict[str, Any]],
                 attrs: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.item_id = str(attrs["itemId"])
        self.setWindowTitle(self.tr("Categories of {0}").format(attrs.get("title", "")))
        self.list = QListWidget()
        self.list.setAccessibleName(self.tr("Categories"))
        chosen = set(attrs.get("category_ids") or [])
        for c in categories:
            self.add_row(c, c["categoryId"] in chosen)
        self.new_name = QLineEdit(placeholderText=self.tr("New category"))
        add = QPushButton(self.tr("Add"))
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
        row = QListWidgetItem(str(category["name"]))
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
        self.setWindowTitle(self.tr("Install {0}").format(title))
        self.needed = size
        self.folder = QLineEdit(str(default_folder))
        self.folder.setAccessibleName(self.tr("Install folder"))
        browse = QPushButton(self.tr("Browse…"))
        browse.clicked.connect(self.browse)
        self.space = QLabel()
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        form = QFormLayout(self)
        form.addRow(self.tr("Install folder:"), row)
        form.addRow(self.space)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow(self.buttons)
        self.folder.textChanged.connect(lambda _t: self.update_space())
        self.update_space()

    def browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, self.tr("Install folder"), self.folder.text())
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
        self.space.setText(self.tr("Needs {0} on disk; {1} free there.").format(
            human_bytes(self.needed), human_bytes(free))
            + ("" if enough else " " + self.tr("Not enough space.")))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(enough)


class LoginDialog(QDialog):
    def __init__(self, link: EngineLink, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.setWindowTitle(self.tr("Log in"))
        self.user = QLineEdit()
        self.user.setAccessibleName(self.tr("User name"))
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.password.setAccessibleName(self.tr("Password"))
        self.message = QLabel()
        form = QFormLayout(self)
        self.server = QLabel(link.status.get("backend") or link.backend_url or "")
        form.addRow(self.tr("Server:"), self.server)
        form.addRow(self.tr("User name:"), self.user)
        form.addRow(self.tr("Password:"), self.password)
        form.addRow(self.message)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                               | QDialogButtonBox.StandardButton.Cancel)
        box.accepted.connect(self.submit)
        box.rejected.connect(self.reject)
        form.addRow(box)

    def submit(self) -> None:
        self.message.setText(self.tr("Logging in…"))
        self.link.request("login", {"username": self.user.text(), "password": self.password.text()},
                          lambda _r: self.accept())


class MainWindow(QMainWindow):
    def __init__(self, link: EngineLink) -> None:
        super().__init__()
        self.link = link
        self.setWindowTitle(self.tr("Game Launcher"))
        self.library = LibraryModel(self)
        self.tasks = TasksModel(self)
        self.nav = QListWidget()
        self.nav.setAccessibleName(self.tr("Pages"))
        self.nav.addItems([self.tr("Library"), self.tr("Downloads"), self.tr("Settings")])
        self.nav.setFixedWidth(170)
        self.nav.setStyleSheet("QListWidget { font-size: 12pt; border: none; }"
                               "QListWidget::item { padding: 10px 12px; }")
        self.pages = QStackedWidget()
        self.library_page = LibraryPage(link, self.library)
        self.downloads_page = DownloadsPage(link, self.tasks)
        self.settings_page = SettingsPage(link)
        for p in (self.library_page, self.downloads_page, self.settings_page):
            self.pages.addWidget(p)
        self.nav.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.nav.setCurrentRow(0)
        for i, key in enumerate(("Ctrl+1", "Ctrl+2", "Ctrl+3")):
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.activated.connect(lambda i=i: self.nav.setCurrentRow(i))
        central = QWidget()
        row = QHBoxLayout(central)
        row.addWidget(self.nav)
        row.addWidget(self.pages, 1)
        self.setCentralWidget(central)
        self.connection = QLabel(self.tr("Connecting to the engine…"))
        self.statusBar().addWidget(self.connection, 1)
        self.resize(1100, 720)
        self._written: dict[str, tuple[float, int]] = {}
        self.network = QNetworkAccessManager(self)
        self._covers_requested: set[str] = set()
        self.login_dialog: LoginDialog | None = None
        self.downloads_page.history.toggled.connect(lambda _on: self.refresh_tasks())
        self.library_page.changed.connect(self.refresh_library)
        link.connected.connect(self.on_connected)
        link.disconnected.connect(lambda why: self.connection.setText(
            self.tr("Engine unavailable: {0}").format(why)))
        link.eventReceived.connect(self.on_event)
        link.failed.connect(self.on_failed)
        self._setup_tray()

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
        menu = QMenu(self)
        menu.addAction(self.tr("Show"), self.bring_forward)
        menu.addAction(self.tr("Quit"), QApplication.quit)
        self.tray.setContextMenu(menu)
        self.tray.activated.connect(lambda _reason: self.bring_forward())
        self.tray.setToolTip(self.tr("Game Launcher"))
        self.tray.show()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.tray is not None and self.tray.isVisible():
            self.hide()
            event.ignore()
            return
        super().closeEvent(event)

    def notify(self, title: str, text: str) -> None:
        if self.tray is not None:
            self.tray.showMessage(title, text)

    def on_connected(self, status: dict[str, Any]) -> None:
        self.connection.setText(self.tr("Connected to the engine · {0}").format(status["backend"]))
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
        self.connection.setText(self.tr("Offline: the store cannot be reached; showing installed "
                                        "games"))
        self.link.request("installed", {}, self.library.set_offline)

    def _library_loaded(self, items: list[dict[str, Any]]) -> None:
        self.library.set_library(items)
        self.link.request("categories", {}, self.library_page.set_categories)
        if any(i["installed"] for i in items):
            self.link.request("checkUpdates", {}, self._updates_checked)
        for item in items:  # cover art, fetched by Qt's own asynchronous networking
            attrs = item["libraryItem"]
            pid, url = str(attrs.get("product_id")), attrs.get("cover_image_url")
            if url and pid not in self._covers_requested:
                self._covers_requested.add(pid)
                reply = self.network.get(QNetworkRequest(QUrl(str(url))))
                reply.finished.connect(lambda r=reply, p=pid: self._cover_arrived(p, r))

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

    def on_event(self, event: Event) -> None:
        if isinstance(event, UpdatePlanned):
            self.downloads_page.show_plan(event)
            return
        if not isinstance(event, TaskStatus):
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
                self.tray.setToolTip(self.tr("Downloading {0}: {1:.0f}%").format(
                    event.product_id or "", event.total_progress_percentage))
        elif not known or event.status in ("completed", "cancelled", "error", "queued"):
            self.refresh_tasks()
            if event.status == "completed":
                self.refresh_library()
                self.notify(self.tr("Ready to play"), str(event.product_id or ""))
            elif event.status == "error":
                self.notify(self.tr("Download failed"), str(event.product_id or ""))

    def on_failed(self, method: str, code: str, message: str) -> None:
        if method == "library" and code in ("BACKEND_UNREACHABLE", "BACKEND_ERROR"):
            self.offline_library()
            return
        if code in ("AUTH_REQUIRED", "UNAUTHENTICATED") and method != "login":
            self.ask_login()
            return
        if self.login_dialog is not None and self.login_dialog.isVisible():
            self.login_dialog.message.setText(self.tr(FRIENDLY.get(code, message)))
            return
        box = QMessageBox(QMessageBox.Icon.Warning, self.tr("Something went wrong"),
                          self.tr(FRIENDLY.get(code, "The engine refused: {0}")).format(message),
                          QMessageBox.StandardButton.Ok, self)
        box.setDetailedText(f"{code}: {message}")
        box.setObjectName("errorDialog")
        box.open()
