"""Rules for text that crosses a boundary (settings, control messages): one place each."""

from __future__ import annotations

import reprlib
import unicodedata
from typing import Any

from patcher.ids import ID_RULE, is_id

INT64_MAX = (1 << 63) - 1  # what SQLite (and TOML) store as an integer
MAX_TEXT = 4096  # longest accepted string (URL, path, name, window)
# control characters (C0, DEL, C1), lone surrogates, line and paragraph separators
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlong = 40
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 6

__all__ = ["ID_RULE", "INT64_MAX", "MAX_TEXT", "check_text", "is_id", "show"]


def show(value: Any) -> str:
    """A bounded repr for error messages (a request may carry a huge or deeply nested value)."""
    return _repr.repr(value)


def check_text(text: str, limit: int = MAX_TEXT) -> str:
    """Refuse over-long text and control characters (newlines, NUL, ...); ValueError says why."""
    if len(text) > limit:
        raise ValueError(f"longer than {limit} characters")
    for ch in text:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            raise ValueError(f"contains the control character U+{ord(ch):04X}")
    return text
