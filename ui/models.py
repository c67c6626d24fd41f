"""Item models over the engine's data: the library (owned and borrowed games with their
install state, and the store games it shows besides: wished ones and the family's games not
borrowed yet) and the download queue (tasks, live progress from typed events). Views only read
roles."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QAbstractTableModel,
    QByteArray,
    QMimeData,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QFont, QIcon, QImage, QPainter, QPixmap

from engine.api.protocol import TaskStatus
from ui.i18n import tr

ProductRole = Qt.ItemDataRole.UserRole + 1
StateRole = Qt.ItemDataRole.UserRole + 2
TaskIdRole = Qt.ItemDataRole.UserRole + 3
SortRole = Qt.ItemDataRole.UserRole + 5
CategoriesRole = Qt.ItemDataRole.UserRole + 6
HiddenRole = Qt.ItemDataRole.UserRole + 7
FavouriteRole = Qt.ItemDataRole.UserRole + 8
OwnedRole = Qt.ItemDataRole.UserRole + 9  # in the player's library (bought or borrowed)
WishRankRole = Qt.ItemDataRole.UserRole + 10  # place on the wishlist (0 first), else None
FamilyRole = Qt.ItemDataRole.UserRole + 11  # borrowed, or shared by the family's owner
SHARED = "family_shared_access"  # a library item's acquisition_type when it is borrowed
SORT_KEYS = ("name", "last_played", "playtime", "added", "size")
TASK_MIME = "application/x-launcher-task-row"
ProgressRole = Qt.ItemDataRole.UserRole + 4
COVER_SIZE = (180, 270)
FAVOURITE_BOOST = 1 << 62  # above any playtime or size, below int64's limit
Index = QModelIndex | QPersistentModelIndex
NO_PARENT = QModelIndex()


def human_bytes(n: float) -> str:
    """Sizes in the player's language (powers of 1000, as the engine's figures)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {tr(unit)}" if unit == "B" else f"{n:.1f} {tr(unit)}"
        n /= 1000
    return f"{n:.1f} {tr('TB')}"


def local_time(iso: Any) -> str:
    """A backend timestamp (ISO 8601, "Z" too) in the player's time zone, to the minute."""
    try:
        when = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return str(iso)
    return when.astimezone().strftime("%Y-%m-%d %H:%M")


def human_duration(seconds: int) -> str:
    hours, minutes = divmod(max(0, int(seconds)) // 60, 60)
    if not hours and not minutes:
        return tr("< 1 min") if seconds > 0 else tr("{0} min").format(0)
    return tr("{0} h {1:02d} min").format(hours, minutes) if hours else \
        tr("{0} min").format(minutes)


def placeholder_cover(product_id: str, title: str) -> QPixmap:
    """A cover tile while (or when no) art is loaded: a colour from the id, the title on it."""
    digest = hashlib.sha256(product_id.encode()).digest()
    w, h = COVER_SIZE
    image = QImage(w, h, QImage.Format.Format_RGB32)
    top = QColor.fromHsv(digest[0] * 360 // 256, 140, 120)
    image.fill(top)
    painter = QPainter(image)
    painter.fillRect(0, h * 2 // 3, w, h // 3, top.darker(160))
    painter.setPen(QColor("white"))
    font = QFont()
    font.setPointSize(14)
    font.setBold(True)
    painter.setFont(font)
    painter.drawText(10, h * 2 // 3, w - 20, h // 3,
                     int(Qt.AlignmentFlag.AlignCenter) | int(Qt.TextFlag.TextWordWrap), title)
    painter.end()
    return QPixmap.fromImage(image)


def badged(cover: QPixmap, text: str, *, at_top: bool = False) -> QPixmap:
    """The cover with a label in a left corner ("Family", "Wished"): at the bottom of cover art
    (its own title is at the top), at the top of a placeholder (its title is at the bottom). A
    badge a player reads, with the same words in the row's accessible text (never colour
    alone)."""
    out = QPixmap(cover)
    painter = QPainter(out)
    font = QFont()
    font.setPixelSize(max(12, out.height() // 18))
    font.setBold(True)
    painter.setFont(font)
    metrics = painter.fontMetrics()
    pad = font.pixelSize() // 2
    w, h = metrics.horizontalAdvance(text) + 2 * pad, metrics.height() + pad
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(20, 20, 20, 200))
    top = pad if at_top else out.height() - h - pad
    painter.drawRoundedRect(pad, top, w, h, pad, pad)
    painter.setPen(QColor("white"))
    painter.drawText(pad, top, w, h, int(Qt.AlignmentFlag.AlignCenter), text)
    painter.end()
    return out


class LibraryModel(QAbstractListModel):
    """One row per game: the ``library`` items (bought or borrowed) plus the task that works on
    it, if any; then one row for each store game the library shows besides: wished (the
    ``wishlist``) or shared by the family's owner and not borrowed yet (``family``). A product
    has one row whatever it is; what it is comes from the roles."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.items: list[dict[str, Any]] = []
        self.library: list[dict[str, Any]] = []  # the engine's ``library`` answer
        self.wishes: dict[str, dict[str, Any]] = {}  # product id -> wishlist entry
        self.wish_order: dict[str, int] = {}  # product id -> place on the wishlist
        self.shared: dict[str, dict[str, Any]] = {}  # product id -> a family's shared game
        self.owners: dict[str, str] = {}  # user id -> name (the family's members)
        self.tasks: dict[str, dict[str, Any]] = {}  # product id -> live task
        self.covers: dict[str, QPixmap] = {}
        self.icons: dict[tuple[str, str], QIcon] = {}  # (product id, badge) -> the row's icon
        self.favourite_id: str | None = None  # the player's "Favourites" category
        self.local_playtime: dict[str, float] = {}  # this device's sessions (the engine's count)
        self.badges_in_text = False  # list view: its icons are too small to read a badge on

    def set_favourite_category(self, category_id: str | None) -> None:
        if category_id != self.favourite_id:
            self.favourite_id = category_id
            if self.items:
                self.dataChanged.emit(self.index(0), self.index(len(self.items) - 1))

    def is_favourite(self, item: dict[str, Any]) -> bool:
        return self.favourite_id is not None and \
            self.favourite_id in (item["libraryItem"].get("category_ids") or [])

    def refresh_texts(self) -> None:
        """Every row shown again (after a language switch: the states and badges are
        translated text)."""
        self.icons.clear()
        if self.items:
            self.dataChanged.emit(self.index(0), self.index(len(self.items) - 1))

    def set_library(self, items: list[dict[str, Any]]) -> None:
        self.library = list(items)
        self._rebuild()

    def set_wishlist(self, entries: list[dict[str, Any]]) -> None:
        wishes = {str(e["productId"]): e for e in entries}
        order = {str(e["productId"]): i for i, e in enumerate(entries)}
        if (wishes, order) != (self.wishes, self.wish_order):  # an unchanged answer: no repaint
            self.wishes, self.wish_order = wishes, order
            self._rebuild()

    def set_family(self, family: dict[str, Any]) -> None:
        owners = {str(m["userId"]): str(m["username"]) for m in family.get("members", [])}
        shared = {str(g["productId"]): g for g in family.get("sharedGames", [])}
        if (owners, shared) != (self.owners, self.shared):
            self.owners, self.shared = owners, shared
            self._rebuild()

    def _rebuild(self) -> None:
        """The rows from the library and the store data. The same games in the same order:
        repainted in place (a priority, a badge); else one reset."""
        owned = {str(i["libraryItem"].get("product_id")) for i in self.library}
        store: dict[str, dict[str, Any]] = {}
        for pid, doc in (*self.shared.items(), *self.wishes.items()):
            if pid not in owned and pid not in store:
                store[pid] = {"libraryItem": {"product_id": pid, "title": doc.get("title") or pid,
                                              "cover_image_url": doc.get("coverImageUrl")},
                              "installed": None, "store": True}
        rows = sorted(self.library, key=lambda i: str(i["libraryItem"].get("title", "")).lower())
        rows += sorted(store.values(), key=lambda i: str(i["libraryItem"]["title"]).lower())
        same = [self.product_of(r) for r in rows] == [self.product_of(r) for r in self.items]
        if same and rows:
            self.items = rows
            self.dataChanged.emit(self.index(0), self.index(len(rows) - 1))
            return
        self.beginResetModel()
        self.items = rows
        self.endResetModel()

    @staticmethod
    def product_of(item: dict[str, Any]) -> str:
        return str(item["libraryItem"].get("product_id"))

    def set_cover(self, product_id: str, pixmap: QPixmap) -> None:
        self.covers[product_id] = pixmap
        for key in [k for k in self.icons if k[0] == product_id]:
            del self.icons[key]
        self._changed(product_id)

    # -- the store side: wishlist and family sharing ------------------------------------------
    @staticmethod
    def is_store(item: dict[str, Any]) -> bool:
        """Shown by the library but not in it (wished, or the family's and not borrowed)."""
        return bool(item.get("store"))

    def is_borrowed(self, item: dict[str, Any]) -> bool:
        return bool(item["libraryItem"].get("acquisition_type") == SHARED)

    def owner_of(self, item: dict[str, Any]) -> str | None:
        """The family member who shares this game (borrowed or borrowable), else None."""
        attrs = item["libraryItem"]
        offer = self.shared.get(self.product_of(item))
        if self.is_borrowed(item):
            owner = self.owners.get(str(attrs.get("shared_from_user_id")))
            return owner or (str(offer["ownerName"]) if offer else tr("a family member"))
        if self.is_store(item) and offer is not None:
            return str(offer["ownerName"])
        return None

    def owner_playing(self, item: dict[str, Any]) -> bool:
        """The family's owner plays this shared game now (as last heard from the backend)."""
        offer = self.shared.get(self.product_of(item))
        return offer is not None and not offer.get("isAvailable", True)

    def wish_of(self, item: dict[str, Any]) -> dict[str, Any] | None:
        return self.wishes.get(self.product_of(item))

    def badge(self, item: dict[str, Any]) -> str:
        if self.owner_of(item) is not None:
            return self.tr("Family")
        if self.is_store(item):
            return self.tr("Wished")
        return ""

    def apply_changes(self, product_id: str, changes: dict[str, Any]) -> bool:
        """A library item's attributes changed elsewhere: updated in place (one row repainted,
        no reload); False when the game is not in this library (then reload it)."""
        item = self.item_of(product_id)
        if item is None or self.is_store(item):
            return False  # new to the library (bought or borrowed elsewhere): reload
        item["libraryItem"].update(changes)
        if "title" in changes:
            for key in [k for k in self.icons if k[0] == product_id]:
                del self.icons[key]
        self._changed(product_id)
        return True

    def set_running(self, product_id: str, running: bool) -> None:
        item = self.item_of(product_id)
        if item is not None and bool(item.get("running")) != running:
            item["running"] = running
            self._changed(product_id)

    def set_task(self, product_id: str, task: dict[str, Any] | None) -> None:
        if task is None:
            self.tasks.pop(product_id, None)
        else:
            self.tasks[product_id] = task
        self._changed(product_id)

    def _changed(self, product_id: str) -> None:
        for row, item in enumerate(self.items):
            if item["libraryItem"].get("product_id") == product_id:
                idx = self.index(row)
                self.dataChanged.emit(idx, idx)

    def rowCount(self, parent: Index = NO_PARENT) -> int:
        return 0 if parent.isValid() else len(self.items)

    def state_text(self, item: dict[str, Any]) -> str:
        attrs, installed = item["libraryItem"], item["installed"]
        if self.is_store(item):
            owner = self.owner_of(item)
            if owner is None:
                return self.tr("On your wishlist")
            if self.owner_playing(item):
                return self.tr("{0} is playing it now").format(owner)
            return self.tr("Shared by {0}").format(owner)
        task = self.tasks.get(str(attrs.get("product_id")))
        if task is not None and task["status"] not in ("completed", "cancelled"):
            if task["status"] == "downloading" and task.get("downloadSizeBytes"):
                pct = 100 * task["downloadedBytes"] / max(1, task["downloadSizeBytes"])
                return self.tr("Downloading {0:.0f}%").format(pct)
            return {"queued": self.tr("Queued"), "preparing": self.tr("Preparing"),
                    "paused": self.tr("Paused"), "verifying": self.tr("Verifying"),
                    "error": self.tr("Failed")}.get(task["status"], str(task["status"]))
        if item.get("running"):
            return self.tr("Running")
        if installed is None and not attrs.get("latest_version_id"):
            return self.tr("Not available yet")  # in the library, no build published yet
        if installed is None:
            return self.tr("Not installed")
        if installed.get("dirty"):
            return self.tr("Needs repair")
        if installed["versionId"] != attrs.get("latest_version_id"):
            return self.tr("Update available")
        return self.tr("Installed")

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        item = self.items[index.row()]
        attrs = item["libraryItem"]
        pid = str(attrs.get("product_id"))
        title = str(attrs.get("title") or pid)
        if role == Qt.ItemDataRole.DisplayRole:
            shown = f"★ {title}" if self.is_favourite(item) else title
            badge = self.badge(item) if self.badges_in_text else ""
            return f"{shown}  ·  {badge}" if badge else shown
        if role == Qt.ItemDataRole.DecorationRole:
            badge = self.badge(item)
            key = (pid, badge)
            if key not in self.icons:  # an icon scales to the view's icon size (grid or list)
                cover = self.covers.get(pid) or placeholder_cover(pid, title)
                self.icons[key] = QIcon(badged(cover, badge, at_top=pid not in self.covers)
                                        if badge else cover)
            return self.icons[key]
        if role == Qt.ItemDataRole.ToolTipRole or role == Qt.ItemDataRole.AccessibleTextRole:
            badge = self.badge(item)
            return f"{title} — {badge + ': ' if badge else ''}{self.state_text(item)}"
        if role == OwnedRole:
            return not self.is_store(item)
        if role == WishRankRole:
            return self.wish_order.get(pid)
        if role == FamilyRole:
            return self.owner_of(item) is not None
        if role == ProductRole:
            return pid
        if role == SortRole:
            return self.sort_value(item)
        if role == CategoriesRole:
            return list(attrs.get("category_ids") or [])
        if role == HiddenRole:
            return bool(attrs.get("is_hidden"))
        if role == FavouriteRole:
            return self.is_favourite(item)
        if role == StateRole:
            return self.state_text(item)
        return None

    sort_key = "name"

    def sort_value(self, item: dict[str, Any]) -> Any:
        """What ``sort_key`` orders by (most recent / largest first for all but the name), with
        favourites ahead in either direction. One plain value per row, so the proxy sorts in
        C++: a Python ``lessThan`` cost ~30 ms per 200-game reload on the UI thread."""
        attrs = item["libraryItem"]
        key = self.sort_key
        fav = self.is_favourite(item)
        if key in ("playtime", "size"):  # descending numbers: favourites are "bigger"
            field = "total_playtime_seconds" if key == "playtime" else "install_size_bytes"
            return int(attrs.get(field) or 0) + (FAVOURITE_BOOST if fav else 0)
        if key in ("last_played", "added"):  # descending text (ISO times)
            field = "last_played_at" if key == "last_played" else "added_at"
            return ("1" if fav else "0") + str(attrs.get(field) or "")
        name = str(attrs.get("title") or attrs.get("product_id") or "").casefold()
        return ("0" if fav else "1") + name  # ascending

    def set_offline(self, installed: list[dict[str, Any]]) -> None:
        """The backend is unreachable: the installed games still show (and can be played)."""
        self.wishes, self.wish_order, self.shared = {}, {}, {}  # the store's: not known now
        self.set_library([{"libraryItem": {"product_id": g["productId"], "title": g["productId"],
                                           "latest_version_id": g["versionId"]},
                           "installed": g} for g in installed])

    def item_of(self, product_id: str) -> dict[str, Any] | None:
        return next((i for i in self.items if i["libraryItem"].get("product_id") == product_id),
                    None)


class TasksModel(QAbstractTableModel):
    """The download queue in the engine's order; progress updated in place from events.

    Moving rows (drag and drop, or ``moveRows``) does not reorder locally: it asks the engine
    (``reorderRequested``), and the queue the engine reports back is what the view shows."""

    COLUMNS = ("game", "status", "progress", "size", "speed", "eta")
    reorderRequested = Signal(str, int)  # task id, new queue position

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tasks: list[dict[str, Any]] = []
        self.live: dict[str, TaskStatus] = {}

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role != Qt.ItemDataRole.DisplayRole or orientation != Qt.Orientation.Horizontal:
            return None
        return (self.tr("Game"), self.tr("Status"), self.tr("Progress"), self.tr("Size"),
                self.tr("Speed"), self.tr("Time left"))[section]

    def refresh_texts(self) -> None:
        self.headerDataChanged.emit(Qt.Orientation.Horizontal, 0, len(self.COLUMNS) - 1)
        if self.tasks:
            self.dataChanged.emit(self.index(0, 0),
                                  self.index(len(self.tasks) - 1, len(self.COLUMNS) - 1))

    def set_tasks(self, tasks: list[dict[str, Any]]) -> None:
        self.beginResetModel()
        self.tasks = list(tasks)
        self.endResetModel()

    def apply(self, event: TaskStatus) -> bool:
        """Update a row in place; False when the task is not in the list (reload it)."""
        self.live[event.task_id] = event
        for row, t in enumerate(self.tasks):
            if t["taskId"] == event.task_id:
                t["status"] = event.status
                t["downloadedBytes"] = event.downloaded_bytes
                if event.total_size_bytes:
                    t["downloadSizeBytes"] = event.total_size_bytes
                self.dataChanged.emit(self.index(row, 0), self.index(row, len(self.COLUMNS) - 1))
                return True
        return False

    def rowCount(self, parent: Index = NO_PARENT) -> int:
        return 0 if parent.isValid() else len(self.tasks)

    def columnCount(self, parent: Index = NO_PARENT) -> int:
        return 0 if parent.isValid() else len(self.COLUMNS)

    def progress(self, t: dict[str, Any]) -> float:
        if t["status"] == "completed":
            return 100.0
        total = t.get("downloadSizeBytes") or 0
        return 100.0 * t.get("downloadedBytes", 0) / total if total else 0.0

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        t = self.tasks[index.row()]
        col = self.COLUMNS[index.column()]
        live = self.live.get(t["taskId"])
        if role == TaskIdRole:
            return t["taskId"]
        if role == ProgressRole:
            return self.progress(t)
        if role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.AccessibleTextRole):
            return None
        if col == "game":
            name = f"{t['productId']} {t.get('versionId') or ''}".strip()
            # a remote download: queued on another of the player's devices
            return self.tr("{0} (from another device)").format(name) if t.get("remote") else name
        if col == "status":
            text = {"queued": self.tr("Queued"), "preparing": self.tr("Preparing"),
                    "downloading": self.tr("Downloading"), "paused": self.tr("Paused"),
                    "verifying": self.tr("Verifying"), "completed": self.tr("Done"),
                    "error": self.tr("Failed"), "cancelled": self.tr("Cancelled")}
            status = text.get(t["status"], t["status"])
            return f"{status}: {t['errorCode']}" if t.get("errorCode") else status
        if col == "progress":
            return f"{self.progress(t):.0f}%"
        if col == "size":
            done, total = t.get("downloadedBytes", 0), t.get("downloadSizeBytes", 0)
            return f"{human_bytes(done)} / {human_bytes(total)}"
        if col == "speed":
            if live is None or t["status"] != "downloading":
                return ""
            return f"{human_bytes(live.download_speed_bps)}/s"
        if col == "eta":
            eta = live.estimated_time_left_seconds if live else None
            return "" if eta is None or t["status"] != "downloading" else f"{eta // 60}:{eta % 60:02d}"
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        base = super().flags(index)
        if index.isValid():
            return base | Qt.ItemFlag.ItemIsDragEnabled
        return base | Qt.ItemFlag.ItemIsDropEnabled

    def supportedDropActions(self) -> Qt.DropAction:
        return Qt.DropAction.MoveAction

    def mimeTypes(self) -> list[str]:
        return [TASK_MIME]

    def mimeData(self, indexes: Any) -> QMimeData:
        data = QMimeData()
        rows = sorted({i.row() for i in indexes})
        if rows:
            data.setData(TASK_MIME, QByteArray(str(rows[0]).encode()))
        return data

    def dropMimeData(self, data: QMimeData, action: Qt.DropAction, row: int, column: int,
                     parent: Index) -> bool:
        if action != Qt.DropAction.MoveAction or not data.hasFormat(TASK_MIME):
            return False
        source = int(bytes(data.data(TASK_MIME).data()).decode())
        target = row if row >= 0 else (parent.row() if parent.isValid() else self.rowCount())
        return self.moveRows(NO_PARENT, source, 1, NO_PARENT, target)

    def moveRows(self, source_parent: Index, source_row: int, count: int,
                 destination_parent: Index, destination_child: int) -> bool:
        task = self.task_at(source_row)
        if task is None or count != 1:
            return False
        position = destination_child if destination_child <= source_row else destination_child - 1
        position = max(0, min(position, self.rowCount() - 1))
        if position != source_row:
            self.reorderRequested.emit(task["taskId"], position)
        return False  # the engine's answer (a new queue) resets the model

    def task_at(self, row: int) -> dict[str, Any] | None:
        return self.tasks[row] if 0 <= row < len(self.tasks) else None
