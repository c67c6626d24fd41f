"""Every string the launcher shows has a Russian translation (the platform's language).

The strings are found in the source (calls of ``tr``/``self.tr``, ``Texts`` registrations, and
the tables of choices), so a new string without a translation fails here, not in front of a
player."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("PySide6")

from ui.i18n import RU

UI = Path(__file__).resolve().parents[2] / "ui"
TABLES = {"KINDS", "SORTS", "GAMEPLAY", "PAGES", "ACTIONS"}  # (key, text) pairs or texts shown in combos


def shown_strings() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(UI.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else \
                    node.func.id if isinstance(node.func, ast.Name) else ""
                args = [a for a in node.args if isinstance(a, ast.Constant)
                        and isinstance(a.value, str)]
                if name == "tr" and args:
                    found[args[0].value] = f"{path.name}:{node.lineno}"
                elif name == "t" and len(node.args) == 2 and args:
                    found[args[-1].value] = f"{path.name}:{node.lineno}"
                elif name in ("button", "row") and args:  # the pages' own helpers over ``t``
                    found[args[0].value] = f"{path.name}:{node.lineno}"
                    if name == "row":  # its label is also the field's accessible name
                        found[args[0].value.rstrip(":")] = f"{path.name}:{node.lineno}"
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Tuple) and any(
                    isinstance(n, ast.Name) and n.id == "text" for n in node.target.elts):
                for const in ast.walk(node.iter):  # for key, text in (("pause", "Pause"), ...)
                    if isinstance(const, ast.Constant) and isinstance(const.value, str) \
                            and const.value[:1].isupper():
                        found[const.value] = f"{path.name}:{node.lineno}"
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id in TABLES for t in node.targets):
                for const in ast.walk(node.value):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str) \
                            and (const.value[:1].isupper() or " " in const.value):
                        found[const.value] = f"{path.name}:{node.lineno}"
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "FRIENDLY" for t in node.targets):
                assert isinstance(node.value, ast.Dict)
                for v in node.value.values:
                    assert isinstance(v, ast.Constant)
                    found[str(v.value)] = f"{path.name}:{node.lineno}"
    return found


def test_every_shown_string_has_a_russian_translation() -> None:
    strings = shown_strings()
    assert len(strings) > 100  # the scan finds the launcher's strings at all
    missing = {s: where for s, where in strings.items() if not RU.get(s)}
    assert not missing, "untranslated: " + "; ".join(f"{w}: {s!r}" for s, w in missing.items())


def test_translations_keep_their_placeholders() -> None:
    for source, text in RU.items():
        for i in range(5):
            for mark in ("{" + str(i) + "}", "{" + str(i) + ":"):
                assert (mark in source) == (mark in text), (source, text)


def test_the_translator_leaves_qts_own_strings_alone(qapp: Any) -> None:
    """Qt translates strings of its own (image readers, layout direction); answering them with
    an empty string broke PNG loading, so no cover art showed in Russian."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtGui import QColor, QImage

    from ui.i18n import use_language

    image = QImage(60, 90, QImage.Format.Format_RGB32)
    image.fill(QColor("teal"))
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    assert image.save(buffer, "PNG")
    use_language("ru")
    try:
        loaded = QImage()
        assert loaded.loadFromData(data), "a PNG must load with the Russian translator installed"
        assert loaded.size() == image.size()
    finally:
        use_language("en")
