"""A game's achievements and cloud saves, on demand from its panel; and the choice a save
conflict needs. Everything comes from the engine (``achievements``, ``saves``) and goes back
to it; nothing here touches a file."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ui.i18n import tr
from ui.link import EngineLink
from ui.models import human_bytes, local_time


def _table(rows: int, headers: list[str], name: str) -> QTableWidget:
    table = QTableWidget(rows, len(headers))
    table.setAccessibleName(name)
    table.setHorizontalHeaderLabels(headers)
    table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    return table


class AchievementsDialog(QDialog):
    def __init__(self, title: str, rows: list[dict[str, Any]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("Achievements of {0}").format(title))
        done = sum(1 for r in rows if r.get("is_unlocked"))
        self.summary = QLabel(tr("{0} of {1} unlocked").format(done, len(rows)))
        self.table = _table(len(rows), [tr("Achievement"), tr("Status"), tr("Players")],
                            tr("Achievements"))
        for i, r in enumerate(rows):
            name = str(r.get("name") or r["achievementId"])
            text = f"{name}\n{r.get('description') or ''}".strip()
            progress = r.get("current_progress")
            if r.get("is_unlocked"):
                status = tr("✓ Unlocked")
            elif progress:
                status = tr("{0} of {1}").format(progress["current"], progress["total"])
            else:
                status = tr("Locked")
            for col, value in enumerate((text, status,
                                         f"{float(r.get('rarity_percentage') or 0):.1f}%")):
                self.table.setItem(i, col, QTableWidgetItem(value))
        self.table.resizeRowsToContents()
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        box.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        layout.addWidget(box)
        self.resize(620, 420)


def slot_label(slot: str) -> str:
    """A cloud slot as a player reads it: the file's path in its save folder."""
    text = unquote(slot)
    return text.split(":", 1)[1] if ":" in text else text


ACTIONS = {"in_sync": "In sync", "upload": "Newer here", "download": "Newer in the cloud",
           "conflict": "Changed on both"}


class SavesDialog(QDialog):
    """Each save file: its state, its cloud versions (restore any), sync now, decide a
    conflict (the other copy always stays recoverable)."""

    changed = Signal()

    def __init__(self, link: EngineLink, title: str, status: dict[str, Any],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.product_id = str(status["productId"])
        self.setWindowTitle(tr("Cloud saves of {0}").format(title))
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.table = _table(0, [tr("Save"), tr("State"), tr("Version"), tr("Saved")],
                            tr("Cloud saves"))
        self.sync_button = QPushButton(tr("Sync now"))
        self.sync_button.clicked.connect(lambda: self.sync(None))
        self.keep_local = QPushButton(tr("Keep this device's"))
        self.keep_local.clicked.connect(lambda: self.sync("local"))
        self.keep_cloud = QPushButton(tr("Keep the cloud's"))
        self.keep_cloud.clicked.connect(lambda: self.sync("cloud"))
        self.restore_button = QPushButton(tr("Restore this version"))
        self.restore_button.clicked.connect(self.restore)
        buttons = QHBoxLayout()
        for b in (self.sync_button, self.keep_local, self.keep_cloud, self.restore_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        box.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        layout.addWidget(box)
        self.table.currentCellChanged.connect(lambda *_: self._buttons())
        self.resize(720, 440)
        self.show_status(status)

    def show_status(self, status: dict[str, Any]) -> None:
        self.status = status
        rows: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for slot in status["slots"]:
            versions = slot["cloudVersions"] or [None]
            rows.extend((slot, v) for v in versions)
        self.rows = rows
        self.table.setRowCount(len(rows))
        for i, (slot, version) in enumerate(rows):
            first = version is None or version is slot["cloudVersions"][0]
            values = (slot_label(slot["slot"]) if first else "",
                      tr(ACTIONS.get(slot["action"], slot["action"])) if first else "",
                      f"v{version['version']}" if version else "—",
                      f"{local_time(version['createdAt'])} · {human_bytes(version['sizeBytes'])}"
                      if version else tr("only on this device"))
            for col, text in enumerate(values):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, i)
                if col == 0 and slot["path"]:
                    item.setToolTip(str(slot["path"]))
                self.table.setItem(i, col, item)
        self.table.resizeColumnsToContents()
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        conflicts = [s for s in status["slots"] if s["action"] == "conflict"]
        self.summary.setText(
            tr("{0} save file(s) changed on this device and in the cloud since the last sync. "
               "Choose which to keep; the other copy stays recoverable.").format(len(conflicts))
            if conflicts else tr("{0} save file(s); local backups: {1}.").format(
                len(status["slots"]), len(status["backups"])))
        self._buttons()

    def _buttons(self) -> None:
        conflicts = any(s["action"] == "conflict" for s in self.status["slots"])
        self.keep_local.setEnabled(conflicts)
        self.keep_cloud.setEnabled(conflicts)
        row = self.table.currentRow()
        self.restore_button.setEnabled(0 <= row < len(self.rows) and
                                       self.rows[row][1] is not None)

    def sync(self, keep: str | None) -> None:
        params: dict[str, Any] = {"productId": self.product_id, "action": "sync"}
        if keep:
            params["keep"] = keep
        self.link.request("saves", params, lambda _r: self.reload())

    def restore(self) -> None:
        row = self.table.currentRow()
        version = self.rows[row][1] if 0 <= row < len(self.rows) else None
        if version is None:
            return
        if QMessageBox.question(self, tr("Restore"), tr(
                "Replace the save on this device with version {0}? The current one is backed up "
                "first and stays in the cloud's history.").format(version["version"])) \
                != QMessageBox.StandardButton.Yes:
            return
        self.link.request("saves", {"productId": self.product_id, "action": "restore",
                                    "savegameId": version["savegameId"]},
                          lambda _r: self.reload())

    def reload(self) -> None:
        self.changed.emit()
        self.link.request("saves", {"productId": self.product_id}, self.show_status)


class ConflictDialog(QMessageBox):
    """A launch refused because saves changed on both sides: the player picks, then it starts."""

    chosen = Signal(str)  # "local" | "cloud"

    def __init__(self, title: str, message: str, parent: QWidget | None = None) -> None:
        super().__init__(QMessageBox.Icon.Question, tr("Save conflict"), tr(
            "The saves of {0} changed on this device and in the cloud since they were last "
            "synced. Which do you want to play with? The other copy stays recoverable.")
            .format(title), QMessageBox.StandardButton.Cancel, parent)
        self.setObjectName("conflictDialog")
        self.setDetailedText(message)
        self.local = self.addButton(tr("Keep this device's"), QMessageBox.ButtonRole.AcceptRole)
        self.cloud = self.addButton(tr("Keep the cloud's"), QMessageBox.ButtonRole.AcceptRole)
        self.buttonClicked.connect(self._clicked)

    def _clicked(self, button: Any) -> None:
        if button is self.local:
            self.chosen.emit("local")
        elif button is self.cloud:
            self.chosen.emit("cloud")
