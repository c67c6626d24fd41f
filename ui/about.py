"""The About box and the launcher's own update channel (a row of the settings page).

The version is pyproject's (launcher.version); the channel is kept in the install's
selfupdate.json (launcher.selfupdate), so it only applies to a launcher installed from the
bundle — a source checkout shows the version and says it updates with git.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from launcher.selfupdate import load_state, managed_layout, set_channel, stage_in_background
from launcher.updatecore import SelfUpdateError
from launcher.version import app_version
from ui.i18n import tr

CHANNEL_NAMES = (("stable", "Stable"), ("beta", "Beta (early builds)"))


class AboutDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("About Game Launcher"))
        layout = QVBoxLayout(self)
        title = QLabel(f"<b>{tr('Game Launcher')}</b>")
        version = QLabel(tr("Version {0}").format(app_version()))
        version.setObjectName("aboutVersion")
        install = managed_layout()
        if install is None:
            where = QLabel(tr("Running from source: it updates with git, not by itself."))
        else:
            state = load_state(install)
            channel = tr(dict(CHANNEL_NAMES).get(state.channel, "Stable"))
            text = tr("Installed in {0}; update channel: {1}.").format(install.root, channel)
            if state.pending:
                text += " " + tr("Version {0} is ready and starts next time.").format(state.pending)
            where = QLabel(text)
        where.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        for widget in (title, version, where, buttons):
            layout.addWidget(widget)


class LauncherUpdatesRow(QWidget):
    """Settings: the channel the launcher updates itself from, and the About box."""

    def __init__(self, t: Any, link: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link  # ui.link.EngineLink: its data dir and backend for the engine CLI
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.channel = QComboBox()
        t(self.channel.setAccessibleName, "Launcher update channel")
        for i, (key, text) in enumerate(CHANNEL_NAMES):
            self.channel.addItem("", key)
            t(partial(self.channel.setItemText, i), text)
        self.install = managed_layout()
        if self.install is not None:
            current = load_state(self.install).channel
            self.channel.setCurrentIndex(max(0, self.channel.findData(current)))
        else:  # a source checkout has no channel to pick
            self.channel.setEnabled(False)
        self.channel.currentIndexChanged.connect(self.choose)
        about = QPushButton()
        t(about.setText, "About…")
        about.clicked.connect(lambda: AboutDialog(self).exec())
        row.addWidget(self.channel)
        row.addWidget(about)
        row.addStretch(1)

    def choose(self, _index: int) -> None:
        if self.install is None:
            return
        try:  # fetch the channel's build now; it starts with the next launch
            set_channel(self.install, self.channel.currentData())
            stage_in_background(self.install, self.link.data_dir, self.link.backend_url,
                                delay_s=0)
        except SelfUpdateError:
            # another launcher is switching builds right now: show what is on record
            current = load_state(self.install).channel
            self.channel.blockSignals(True)
            self.channel.setCurrentIndex(max(0, self.channel.findData(current)))
            self.channel.blockSignals(False)
