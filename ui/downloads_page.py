"""The Downloads page: the queue (drag to reorder, download now, pause/resume/cancel per task
and for all, retry a failed one), the live speed graph, the schedule and limits right there,
what an update downloads vs reuses vs writes, and the files of a task on demand."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.api.protocol import ItemProgress, UpdatePlanned
from ui.i18n import Texts, tr
from ui.link import EngineLink
from ui.models import ProgressRole, TasksModel, human_bytes
from ui.speedgraph import SpeedGraph

ACTIVE = ("queued", "preparing", "downloading", "verifying")


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


class FileLog:
    """The files of each task as the engine reports them (``downloadItemProgressUpdate``)."""

    LIMIT = 20_000  # per task: a huge game keeps the newest

    def __init__(self) -> None:
        self.files: dict[str, dict[str, ItemProgress]] = {}

    def add(self, event: ItemProgress) -> None:
        files = self.files.setdefault(event.task_id, {})
        files.pop(event.item_id, None)
        files[event.item_id] = event
        if len(files) > self.LIMIT:
            del files[next(iter(files))]

    def of(self, task_id: str) -> list[ItemProgress]:
        return list(self.files.get(task_id, {}).values())


class FilesDialog(QDialog):
    """Per-file detail of one task, on demand: path, size, state."""

    def __init__(self, title: str, files: list[ItemProgress], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("Files of {0}").format(title))
        self.table = QTableWidget(len(files), 3)
        self.table.setAccessibleName(tr("Files"))
        self.table.setHorizontalHeaderLabels([tr("File"), tr("Size"), tr("Status")])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        for row, f in enumerate(sorted(files, key=lambda f: f.relative_path)):
            for col, text in enumerate((f.relative_path, human_bytes(f.total_file_size_bytes),
                                        tr(f.status.capitalize()))):
                self.table.setItem(row, col, QTableWidgetItem(text))
        self.empty = QLabel(tr("No file has finished yet.") if not files else
                            tr("{0} files reported so far.").format(len(files)))
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        box.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.empty)
        layout.addWidget(self.table, 1)
        layout.addWidget(box)
        self.resize(640, 420)


class DownloadsPage(QWidget):
    def __init__(self, link: EngineLink, model: TasksModel, graph: SpeedGraph,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.model = model
        self.graph = graph
        self.file_log = FileLog()
        t = self.texts = Texts()
        self.table = QTableView()
        t(self.table.setAccessibleName, "Download queue")
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
        self.table.selectionModel().currentChanged.connect(lambda *_: self.update_buttons())
        model.modelReset.connect(self.update_buttons)
        model.dataChanged.connect(lambda *_: self.update_buttons())
        model.reorderRequested.connect(self.reorder)
        self.history = QPushButton()
        t(self.history.setText, "Show finished")
        self.history.setCheckable(True)
        self.buttons: dict[str, QPushButton] = {}
        task_row = QHBoxLayout()
        for key, text in (("pause", "Pause"), ("resume", "Resume"), ("retry", "Retry"),
                          ("cancel", "Cancel"), ("up", "Move up"), ("first", "Download now"),
                          ("files", "Files…")):
            b = QPushButton()
            t(b.setText, text)
            b.clicked.connect(lambda _c=False, k=key: self.act(k))
            task_row.addWidget(b)
            self.buttons[key] = b
        task_row.addStretch(1)
        for key, text in (("pause_all", "Pause all"), ("resume_all", "Resume all")):
            b = QPushButton()
            t(b.setText, text)
            b.clicked.connect(lambda _c=False, k=key: self.act_all(k))
            task_row.addWidget(b)
            self.buttons[key] = b
        task_row.addWidget(self.history)
        self.limit = QSpinBox()
        self.limit.setRange(0, 10_000)
        t(self.limit.setSuffix, " MB/s")
        t(self.limit.setSpecialValueText, "No limit")
        t(self.limit.setAccessibleName, "Speed limit")
        apply_limit = QPushButton()
        t(apply_limit.setText, "Set limit")
        apply_limit.clicked.connect(self.set_limit)
        task_limit = QPushButton()
        t(task_limit.setText, "For the selected game")
        task_limit.clicked.connect(self.set_task_limit)
        limit_label = QLabel()
        t(limit_label.setText, "Speed limit:")
        limit_label.setBuddy(self.limit)
        # the schedule right where downloads are watched (also on the settings page)
        self.schedule = QLineEdit()
        t(self.schedule.setPlaceholderText, "e.g. 22:00-06:00; sat,sun 00:00-24:00")
        t(self.schedule.setAccessibleName, "Download only during:")
        apply_schedule = QPushButton()
        t(apply_schedule.setText, "Set schedule")
        apply_schedule.clicked.connect(self.set_schedule)
        schedule_label = QLabel()
        t(schedule_label.setText, "Download only during:")
        schedule_label.setBuddy(self.schedule)
        controls = QHBoxLayout()
        for w in (limit_label, self.limit, apply_limit, task_limit):
            controls.addWidget(w)
        controls.addSpacing(24)
        controls.addWidget(schedule_label)
        controls.addWidget(self.schedule, 1)
        controls.addWidget(apply_schedule)
        self.plan = QLabel()
        self.plan.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.graph)
        layout.addLayout(controls)
        layout.addWidget(self.plan)
        layout.addWidget(self.table, 1)
        layout.addLayout(task_row)
        self._plan: UpdatePlanned | None = None
        self.update_buttons()

    def retranslate(self) -> None:
        self.texts.apply()
        self.graph.update()
        if self._plan is not None:
            self.show_plan(self._plan)

    def selected_task(self) -> dict[str, Any] | None:
        idx = self.table.currentIndex()
        return self.model.task_at(idx.row()) if idx.isValid() else None

    def update_buttons(self) -> None:
        task = self.selected_task()
        status = task["status"] if task else None
        b = self.buttons
        b["pause"].setEnabled(status in ACTIVE)
        b["resume"].setEnabled(status == "paused")
        b["retry"].setEnabled(status == "error")
        b["cancel"].setEnabled(status in (*ACTIVE, "paused", "error"))
        b["up"].setEnabled(status in ("queued", "paused") and bool(task and task["position"]))
        b["first"].setEnabled(status in ("queued", "paused"))
        b["files"].setEnabled(task is not None)
        statuses = {t["status"] for t in self.model.tasks}
        b["pause_all"].setEnabled(bool(statuses & set(ACTIVE)))
        b["resume_all"].setEnabled("paused" in statuses)

    def act(self, action: str) -> None:
        task = self.selected_task()
        if task is None:
            return
        tid = task["taskId"]
        if action in ("pause", "resume", "cancel"):
            self.link.request(action, {"taskId": tid})
        elif action == "retry":  # a failed task resumes where it stopped (its staging is kept)
            self.link.request("resume", {"taskId": tid})
        elif action == "up":
            self.link.request("move", {"taskId": tid, "position": max(0, task["position"] - 1)})
        elif action == "first":
            self.link.request("move", {"taskId": tid, "position": 0})
        elif action == "files":
            self.files_dialog = FilesDialog(f"{task['productId']} {task.get('versionId') or ''}",
                                            self.file_log.of(tid), self)
            self.files_dialog.open()

    def act_all(self, action: str) -> None:
        wanted, method = (ACTIVE, "pause") if action == "pause_all" else (("paused",), "resume")
        for task in self.model.tasks:
            if task["status"] in wanted:
                self.link.request(method, {"taskId": task["taskId"]})

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
        self._plan = plan
        self.plan.setText(tr(
            "Update {0} {1} → {2}: download {3} (a full install is {4}), reuse {5} already on "
            "disk, write {6}.").format(
            plan.product_id, plan.from_version, plan.to_version, human_bytes(plan.download_bytes),
            human_bytes(plan.full_download_bytes), human_bytes(plan.reused_bytes),
            human_bytes(plan.write_bytes)))
