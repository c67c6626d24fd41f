"""The id rule shared by the content format and the engine's control protocol (stdlib only):
product and version ids are safe as one URL path segment and as a folder name."""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
ID_RULE = "[A-Za-z0-9._-], starting with a letter or digit, at most 128 characters"
# names starting with this are the engine's own (staging, moves): never a game's file or folder
RESERVED_PREFIX = ".launcher-"


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.match(value) is not None
