"""The Settings page: limits, schedule, concurrency, default install folder, preferred CDN,
automatic updates, downloads during gameplay, start with the system, language.

Engine settings are read from the engine (``settings``) and each changed one is sent back on
Save, where the engine validates and persists it; a refused value comes back as an error dialog
naming the setting, and nothing else changes. The language applies at once."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ui import autostart
from ui.about import LauncherUpdatesRow
from ui.i18n import LANGUAGES, Texts, current_language, tr
from ui.link import EngineLink

GAMEPLAY = (("pause", "Pause them"), ("throttle", "Slow them down to"), ("continue", "Carry on"))


class SettingsPage(QWidget):
    languageChosen = Signal(str)

    def __init__(self, link: EngineLink, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        t = self.texts = Texts()
        form = QFormLayout(self)
        # fields at a readable width, not stretched across a wide window
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)

        def row(label: str, field: Any) -> None:
            text = QLabel()
            t(text.setText, label)
            if isinstance(field, QWidget):
                text.setBuddy(field)
                t(field.setAccessibleName, label.rstrip(":"))
            form.addRow(text, field)

        self.concurrent = QSpinBox()
        self.concurrent.setRange(1, 16)
        self.limit = QSpinBox()
        self.limit.setRange(0, 10_000)
        t(self.limit.setSuffix, " MB/s")
        t(self.limit.setSpecialValueText, "No limit")
        self.schedule = QLineEdit()
        self.schedule.setMinimumWidth(self.fontMetrics().horizontalAdvance("x") * 48)
        t(self.schedule.setPlaceholderText, "e.g. 22:00-06:00; sat,sun 00:00-24:00")
        self.library_dir = QLineEdit()
        self.library_dir.setMinimumWidth(self.fontMetrics().horizontalAdvance("x") * 56)
        browse = QPushButton()
        t(browse.setText, "Browse…")
        browse.clicked.connect(self.browse)
        folder = QHBoxLayout()
        folder.addWidget(self.library_dir, 1)
        folder.addWidget(browse)
        folder_box = QWidget()
        folder_box.setLayout(folder)
        folder.setContentsMargins(0, 0, 0, 0)
        self.cdn = QComboBox()
        self.cdn.setEditable(True)
        self.cdn.setMinimumWidth(self.fontMetrics().horizontalAdvance("x") * 36)
        self.cdn.addItem(tr("Automatic (fastest)"), "")
        self.auto_update = QCheckBox()
        t(self.auto_update.setText, "Keep games up to date automatically")
        self.gameplay = QComboBox()
        t(self.gameplay.setAccessibleName, "Downloads while a game runs")
        for i, (key, text) in enumerate(GAMEPLAY):
            self.gameplay.addItem("", key)
            t(partial(self.gameplay.setItemText, i), text)
        self.gameplay_limit = QSpinBox()
        self.gameplay_limit.setRange(1, 10_000)
        t(self.gameplay_limit.setSuffix, " MB/s")
        t(self.gameplay_limit.setAccessibleName, "Speed while playing")
        gameplay = QHBoxLayout()
        gameplay.setContentsMargins(0, 0, 0, 0)
        gameplay.addWidget(self.gameplay)
        gameplay.addWidget(self.gameplay_limit)
        gameplay.addStretch(1)
        gameplay_box = QWidget()
        gameplay_box.setLayout(gameplay)
        self.gameplay.currentIndexChanged.connect(
            lambda _i: self.gameplay_limit.setEnabled(self.gameplay.currentData() == "throttle"))
        self.autostart = QCheckBox()
        t(self.autostart.setText, "Start with the system (in the tray)")
        self.data_dir = QLabel()
        self.language = QComboBox()
        for code, name in LANGUAGES.items():
            self.language.addItem(name, code)
        self.language.setCurrentIndex(max(0, self.language.findData(current_language())))
        self.language.currentIndexChanged.connect(
            lambda _i: self.languageChosen.emit(self.language.currentData()))
        self.save_button = QPushButton()
        t(self.save_button.setText, "Save")
        self.save_button.clicked.connect(self.save)
        self.saved = QLabel()
        row("Downloads at the same time:", self.concurrent)
        row("Speed limit:", self.limit)
        row("Download only during:", self.schedule)
        row("Install games in:", folder_box)
        t(self.library_dir.setAccessibleName, "Install games in")
        row("Download server:", self.cdn)
        row("Updates:", self.auto_update)
        row("Downloads while a game runs:", gameplay_box)
        row("System:", self.autostart)
        row("Language:", self.language)
        row("Launcher:", LauncherUpdatesRow(t, link))  # its update channel, About
        row("Engine data folder:", self.data_dir)
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.saved, 1)
        form.addRow(buttons)
        self.values: dict[str, Any] = {}
        self.default_library = ""

    def retranslate(self) -> None:
        self.texts.apply()
        self.cdn.setItemText(0, tr("Automatic (fastest)"))

    def browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, tr("Install games in"),
                                                  self.library_dir.text())
        if chosen:
            self.library_dir.setText(chosen)

    def load(self, status: dict[str, Any]) -> None:
        self.data_dir.setText(str(status.get("dataDir", "")))
        self.autostart.setChecked(autostart.is_enabled())
        for source in status.get("cdnSources") or []:
            if self.cdn.findData(source) < 0:
                self.cdn.addItem(str(source), source)
        self.link.request("settings", {}, lambda r: self.show_values(r["settings"]))

    def show_values(self, values: dict[str, Any]) -> None:
        self.values = dict(values)
        self.concurrent.setValue(int(values["max_concurrent_tasks"]))
        limit = values.get("global_limit_bps")
        self.limit.setValue(int(limit // 1_000_000) if limit else 0)
        self.schedule.setText("; ".join(values.get("schedule") or []))
        self.default_library = str(Path(str(values.get("data_dir", ""))) / "library")
        self.library_dir.setText(str(values.get("library_dir") or self.default_library))
        cdn = values.get("preferred_cdn") or ""
        if cdn and self.cdn.findData(cdn) < 0:
            self.cdn.addItem(str(cdn), cdn)
        self.cdn.setCurrentIndex(max(0, self.cdn.findData(cdn)))
        self.auto_update.setChecked(bool(values.get("auto_update", True)))
        self.gameplay.setCurrentIndex(max(0, self.gameplay.findData(
            values.get("gameplay_downloads") or "throttle")))
        rate = values.get("gameplay_limit_bps")
        self.gameplay_limit.setValue(max(1, int(rate // 1_000_000)) if rate else 1)
        self.gameplay_limit.setEnabled(self.gameplay.currentData() == "throttle")

    def wanted(self) -> dict[str, Any]:
        """The engine settings as this page shows them."""
        mbps = self.limit.value()
        windows = [w.strip() for w in self.schedule.text().split(";") if w.strip()]
        cdn = self.cdn.currentText().strip()
        if self.cdn.currentIndex() == 0 and cdn == tr("Automatic (fastest)"):
            cdn = ""
        return {"max_concurrent_tasks": self.concurrent.value(),
                "global_limit_bps": mbps * 1_000_000 if mbps else "",
                "schedule": windows, "library_dir": self.library_dir.text().strip(),
                "preferred_cdn": cdn, "auto_update": self.auto_update.isChecked(),
                "gameplay_downloads": self.gameplay.currentData(),
                "gameplay_limit_bps": self.gameplay_limit.value() * 1_000_000}

    def save(self) -> None:
        """Send what changed; each setting is validated by the engine on its own."""
        QSettings().setValue("language", self.language.currentData())
        autostart.set_enabled(self.autostart.isChecked(), self.link.data_dir)
        for key, value in self.wanted().items():
            old = self.values.get(key)
            if key == "schedule":
                if list(old or []) != value:
                    self.link.request("schedule", {"windows": value} if value else {"clear": True})
                continue
            if key == "library_dir" and old is None and value == self.default_library:
                continue  # still the default: leave it unset (it follows the data folder)
            if (old in (None, "") and value in (None, "")) or old == value or str(old) == value:
                continue
            self.link.request("settings", {"key": key, "value": value})
        self.saved.setText(tr("Saved."))
        self.link.request("settings", {}, lambda r: self.show_values(r["settings"]))
