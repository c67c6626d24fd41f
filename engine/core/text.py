"""Rules for text that crosses a boundary (settings, control messages): one place each."""

from __future__ import annotations

import re
import reprlib
from typing import Any

from patcher.ids import ID_RULE, is_id

INT64_MAX = (1 << 63) - 1  # what SQLite (and TOML) store as an integer
MAX_TEXT = 4096  # longest accepted string (URL, path, name, window)
# control characters (C0, DEL, C1), lone surrogates, line and paragraph separators
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# the code points of those categories, which Unicode never changes (Cc is exactly C0, DEL and
# C1; Cs the surrogates; Zl and Zp one code point each; a test compares every code point with
# unicodedata): a pattern needs no unicodedata (a shared library to load on every CLI start)
_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")

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
    bad = _BAD_CHAR.search(text)
    if bad is not None:
        raise ValueError(f"contains the control character U+{ord(bad.group()):04X}")
    return text
