"""The compiled methods of dataclasses, kept between runs as ``.pyc`` files keep modules.

Python 3.11's ``dataclasses`` writes each generated method (``__init__``, ``__repr__``,
``__eq__``, ``__hash__``, a frozen class's ``__setattr__``/``__delattr__``) as source text and
compiles it with ``exec`` every time a class is defined: ~0.4 ms a class, ~75 classes on an
install's way to its first byte — 25-30 ms of CPU of every start, four fifths of it the
compiler's (issue 13). ``install()`` puts a cache in front of that compile: the code object
of each text, kept in one marshal file beside the engine's own bytecode, read once at start
and written back when a run compiled something new. The text, and so the method, is exactly
what ``dataclasses`` makes; only the compile is skipped.

It is installed only on the interpreter it was written against (3.11, whose
``dataclasses._create_fn`` it stands in for, checked by its signature); anywhere else, or when
the file is unreadable, stale or corrupt, every method is compiled as before.
"""

from __future__ import annotations

import atexit
import binascii
import dataclasses
import importlib.util
import marshal
import os
import sys
from pathlib import Path
from types import CodeType
from typing import Any

# what 3.11's ``_create_fn`` is made of (its names and the pieces of text it writes): a
# release that changed how it writes a method is left alone
_EXPECTED = (
    ("name", "args", "body", "globals", "locals", "return_type", "return_annotation", "txt",
     "local_vars", "ns"),
    ("MISSING", "join", "keys", "exec"),
    ("", "_return_type", "->_return_type", ",", "\n", " def ", "(", ")", ":\n", ", ",
     "def __create_fn__(", "):\n", "\n return ", "__create_fn__"),
)
# format 2: code compiled without this module's ``from __future__ import annotations`` (format
# 1 inherited it: every cached method's annotations were strings); then the payload's CRC-32,
# checked before marshal reads it (marshal trusts its input: a damaged payload can crash it)
_HEADER = b"launcher-dataclass-code 2\n" + importlib.util.MAGIC_NUMBER
_STOCK = dataclasses._create_fn  # type: ignore[attr-defined]  # what ``install`` stands in for

_codes: dict[str, CodeType] = {}
_used: set[str] = set()  # the texts this run asked for
_added = 0
# past this many methods (~450 a version of the engine), a save keeps only this run's: texts of
# older sources do not pile up in the file forever, and no two commands undo each other's saves
_MAX_KEPT = 4096
_path: Path | None = None


def cache_path() -> Path:
    """Beside this module's bytecode (``sys.pycache_prefix`` honoured): wherever Python keeps
    the engine's ``.pyc`` files, this file goes too."""
    return Path(importlib.util.cache_from_source(__file__)).with_name(
        f"dataclass-code.{sys.implementation.cache_tag}.bin")


def _stands_in() -> bool:
    """Whether ``_create_fn`` below is the running ``dataclasses``' own, but for the cache."""
    code = getattr(getattr(dataclasses, "_create_fn", None), "__code__", None)
    if sys.version_info[:2] != (3, 11) or code is None:
        return False
    texts = tuple(k for k in code.co_consts if isinstance(k, str))
    return (code.co_varnames, code.co_names, texts) == _EXPECTED


def _create_fn(name: str, args: list[str], body: list[str], *, globals: Any = None,
               locals: dict[str, Any] | None = None,
               return_type: Any = dataclasses.MISSING) -> Any:
    """``dataclasses._create_fn`` of 3.11, line for line, but for the compile's cache."""
    global _added
    if locals is None:
        locals = {}
    return_annotation = ""
    if return_type is not dataclasses.MISSING:
        locals["_return_type"] = return_type
        return_annotation = "->_return_type"
    joined = ",".join(args)
    lines = "\n".join(f"  {b}" for b in body)
    txt = f" def {name}({joined}){return_annotation}:\n{lines}"
    local_vars = ", ".join(locals.keys())
    txt = f"def __create_fn__({local_vars}):\n{txt}\n return {name}"
    _used.add(txt)
    code = _codes.get(txt)
    if code is None:
        # dont_inherit: exactly dataclasses' compile (this module's future import would
        # otherwise turn every annotation of the method into a string)
        code = _codes[txt] = compile(txt, "<string>", "exec", dont_inherit=True)
        _added += 1
    ns: dict[str, Any] = {}
    exec(code, globals, ns)  # what dataclasses itself does, with its own text
    return ns["__create_fn__"](**locals)


def _load(path: Path) -> dict[str, CodeType]:
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    head = len(_HEADER) + 4
    if not data.startswith(_HEADER) or len(data) < head or \
            int.from_bytes(data[len(_HEADER):head], "little") != binascii.crc32(data[head:]):
        return {}
    try:
        codes = marshal.loads(data[head:])
    except Exception:  # CRC-checked above; whatever marshal still refuses is simply no cache
        return {}
    if not isinstance(codes, dict) or not all(
            isinstance(k, str) and isinstance(v, CodeType) for k, v in codes.items()):
        return {}
    return codes


def save() -> None:
    """Write the cache back if this run compiled something new (atomically: a reader sees the
    old file or the new one; a failure leaves the old one)."""
    global _added
    if not _added or _path is None or sys.dont_write_bytecode:  # as for .pyc files
        return
    added = _added  # what another thread compiles while this writes is left for the next save
    kept = dict(_codes)  # a copy: no thread adds to it while it is written
    if len(kept) > _MAX_KEPT:
        kept = {text: code for text, code in kept.items() if text in _used}
    payload = marshal.dumps(kept)
    tmp = _path.with_name(f"{_path.name}.{os.getpid()}.tmp")
    try:
        _path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(_HEADER + binascii.crc32(payload).to_bytes(4, "little") + payload)
        os.replace(tmp, _path)
        _added -= added
    except OSError:
        tmp.unlink(missing_ok=True)


def install() -> bool:
    """Put the cache in front of ``dataclasses``' compile (once); False where it does not apply."""
    global _path
    if dataclasses._create_fn is _create_fn:  # type: ignore[attr-defined]
        return True
    if not _stands_in():
        return False
    _path = cache_path()
    _codes.update(_load(_path))
    dataclasses._create_fn = _create_fn  # type: ignore[attr-defined]
    atexit.register(save)
    return True
