"""Accessibility of the window: every control a screen reader meets has a name, every control
can take keyboard focus, and the pages are reachable from the keyboard alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt
from PySide6.QtGui import QShortcut
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLineEdit,
    QWidget,
)

from tests.ui.test_launcher import loop  # noqa: F401
from ui.link import EngineLink
from ui.window import MainWindow

NAMED = (QLineEdit, QComboBox, QAbstractSpinBox, QAbstractItemView)



def test_every_control_is_named_focusable_and_reachable_from_the_keyboard(
        qapp: QApplication, tmp_path: Path, loop: Any) -> None:  # noqa: F811
    window = MainWindow(EngineLink(tmp_path / "engine", None, start_daemon=False, loop=loop))
    window.show()
    window.activateWindow()
    unnamed, unfocusable = [], []
    for w in window.findChildren(QWidget):
        if isinstance(w.parent(), (QAbstractSpinBox, QComboBox, QAbstractItemView)) \
                or w.window() is not window:
            continue  # inner parts (a spin box's editor, a view's header), popups
        if isinstance(w, NAMED) and not w.accessibleName():
            unnamed.append(f"{type(w).__name__} {w.objectName()!r} in "
                           f"{type(w.parent()).__name__}")
        if isinstance(w, QAbstractButton) and not (w.text() or w.accessibleName()):
            unnamed.append(f"button {w.objectName()!r} in {type(w.parent()).__name__}")
        if isinstance(w, (*NAMED, QAbstractButton)) and \
                w.focusPolicy() == Qt.FocusPolicy.NoFocus:
            unfocusable.append(type(w).__name__)
    assert not unnamed, unnamed
    assert not unfocusable, unfocusable
    # the pages and the search have keys (Ctrl+1..3, Ctrl+F: QShortcut in the window)
    keys = {sc.key().toString() for sc in window.findChildren(QShortcut)}
    assert {"Ctrl+1", "Ctrl+2", "Ctrl+3", "Ctrl+F"} <= keys
    window.focus_search()
    assert window.focusWidget() is window.library_page.search
    # Tab walks from the search field through the filters to the games and the game's actions
    seen = []
    for _ in range(30):
        window.focusNextChild()
        seen.append(window.focusWidget())
    assert window.library_page.view in seen
    assert window.library_page.filter in seen and window.library_page.sort in seen
    window.close()
