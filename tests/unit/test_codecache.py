"""The dataclass methods' compile cache (``engine.codecache``, issue 13): the classes it makes
behave as ``dataclasses`` alone makes them, a second process compiles nothing, and a damaged,
foreign or unwritable cache changes nothing but the time."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from engine import codecache
from testing.processes import REPO, subprocess_env

pytestmark = pytest.mark.skipif(sys.version_info[:2] != (3, 11),
                                reason="stands in for 3.11's dataclasses only")


def _classes() -> dict[str, type]:
    """A spread of what dataclasses generates: frozen with slots, defaults and factories,
    ordering, unsafe_hash, keyword-only fields, __post_init__, ClassVar and InitVar."""
    @dataclass(frozen=True, slots=True)
    class Frozen:
        a: int
        b: str = "b"
        c: tuple[int, ...] = ()

    @dataclass(order=True)
    class Ordered:
        x: int
        y: list[int] = field(default_factory=list)
        hidden: int = field(default=0, repr=False, compare=False)

    @dataclass(unsafe_hash=True, kw_only=True)
    class KwOnly:
        k: int
        v: str = "v"

    @dataclass
    class Posted:
        total: ClassVar[int] = 0
        n: int
        scale: InitVar[int] = 2
        doubled: int = field(init=False, default=0)

        def __post_init__(self, scale: int) -> None:
            self.doubled = self.n * scale

    return {c.__name__: c for c in (Frozen, Ordered, KwOnly, Posted)}


def _behaviour(classes: dict[str, type]) -> list[Any]:
    f, o, k, p = (classes[n] for n in ("Frozen", "Ordered", "KwOnly", "Posted"))
    out: list[Any] = []
    a, b = f(1), f(1, "b", ())
    out += [repr(a), a == b, hash(a) == hash(b), a != f(2), dataclasses.astuple(a)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.a = 3
    with pytest.raises(TypeError):
        f()
    out += [repr(o(1)), o(1) < o(2), o(1, [1]) > o(1, []), o(1, hidden=5) == o(1), o(1).y is not o(1).y]
    out += [repr(k(k=1)), hash(k(k=1)) == hash(k(k=1)), k(k=1, v="w") != k(k=1)]
    with pytest.raises(TypeError):
        k(1)  # keyword-only
    out += [repr(p(3)), p(3, 5).doubled, p(3) == p(3)]
    return out


def test_classes_made_through_the_cache_behave_as_dataclasses_makes_them(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    # dataclasses' own _create_fn, whatever an earlier test of this process installed
    monkeypatch.setattr(dataclasses, "_create_fn", codecache._STOCK)
    stock_classes = _classes()
    plain = _behaviour(stock_classes)
    monkeypatch.setattr(codecache, "_path", tmp_path / "cache.bin")
    monkeypatch.setattr(dataclasses, "_create_fn", codecache._create_fn)
    cached_classes = _classes()
    first = _behaviour(cached_classes)  # compiled into the cache
    before = codecache._added
    second = _behaviour(_classes())  # every text found in it
    assert codecache._added == before
    assert plain == first == second
    for name, cls in stock_classes.items():  # annotations, flags: the very same methods
        twin = cached_classes[name]
        for method in ("__init__", "__repr__", "__eq__", "__setattr__", "__hash__"):
            a, b = getattr(cls, method, None), getattr(twin, method, None)
            if a is None or not hasattr(a, "__code__"):
                assert b is None or not hasattr(b, "__code__"), (name, method)
                continue
            assert a.__annotations__ == b.__annotations__, (name, method)
            assert a.__code__.co_flags == b.__code__.co_flags, (name, method)
            assert a.__code__.co_code == b.__code__.co_code, (name, method)


def test_the_cached_code_is_what_compiling_the_text_gives(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setattr(codecache, "_path", tmp_path / "cache.bin")
    monkeypatch.setattr(dataclasses, "_create_fn", codecache._create_fn)
    _classes()
    assert len(codecache._codes) > 10
    for text, code in codecache._codes.items():
        fresh = compile(text, "<string>", "exec", dont_inherit=True)  # as dataclasses.py does
        assert code.co_flags == fresh.co_flags  # no inherited ``annotations`` future flag
        assert (code.co_code, code.co_consts[:1], code.co_names) == \
            (fresh.co_code, fresh.co_consts[:1], fresh.co_names), text


def _run(script: str, pycache: Path, **extra: str) -> str:
    env = subprocess_env({"PYTHONPYCACHEPREFIX": str(pycache), **extra})
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


COUNT = ("import engine.cli.main, engine.api.service\n"
         "from engine import codecache\n"
         "print(codecache._added, len(codecache._codes), codecache.cache_path())\n")


def test_a_second_start_compiles_no_method(tmp_path: Path) -> None:
    added, known, path = _run(COUNT, tmp_path).split()
    assert int(added) == int(known) > 100  # every method compiled once, then written at exit
    assert Path(path).is_file() and Path(path).is_relative_to(tmp_path)
    added, known, _ = _run(COUNT, tmp_path).split()
    assert int(added) == 0 and int(known) > 100


def test_a_damaged_or_foreign_cache_is_compiled_past_and_replaced(tmp_path: Path) -> None:
    _run(COUNT, tmp_path)
    path = Path(_run(COUNT, tmp_path).split()[2])
    good = path.read_bytes()
    rng = random.Random(13)
    flipped = []
    for _ in range(12):  # a damaged payload (marshal alone can crash on one)
        bad = bytearray(good)
        for _ in range(3):
            bad[rng.randrange(len(codecache._HEADER) + 4, len(bad))] ^= 1 << rng.randrange(8)
        flipped.append(bytes(bad))
    for bad in (b"", b"garbage", good[:40], good[: len(good) // 2],
                good.replace(codecache._HEADER, b"launcher-dataclass-code 2\n\0\0\0\0"),
                *flipped):
        path.write_bytes(bad)
        added, known, _ = _run(COUNT, tmp_path).split()
        assert int(added) == int(known) > 100  # nothing taken from it, all compiled again
        assert path.read_bytes().startswith(codecache._HEADER)  # and a good one written
    assert int(_run(COUNT, tmp_path).split()[0]) == 0


def test_nothing_is_written_without_bytecode_caching_or_where_it_cannot_be(tmp_path: Path) -> None:
    out = _run(COUNT, tmp_path, PYTHONDONTWRITEBYTECODE="1")
    assert not Path(out.split()[2]).exists()
    (tmp_path / "ro").mkdir()
    blocked = tmp_path / "ro" / "pycache"
    blocked.write_text("a file where the folder would be")
    assert int(_run(COUNT, blocked).split()[1]) > 100  # ran, compiled, could not write: fine


def test_it_stays_out_where_dataclasses_writes_methods_otherwise(tmp_path: Path) -> None:
    script = ("import dataclasses\n"
              "def _create_fn(name, args, body, *, globals=None, locals=None, return_type=None):\n"
              "    raise AssertionError('a stand-in')\n"
              "real = dataclasses._create_fn\n"
              "dataclasses._create_fn = _create_fn\n"
              "from engine import codecache\n"
              "print(codecache.install(), dataclasses._create_fn is _create_fn)\n")
    assert _run(script, tmp_path) == "False True"


def test_a_full_cache_keeps_only_the_methods_this_run_used(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    """Texts of older sources do not pile up: past the cap, a save keeps this run's only."""
    path = tmp_path / "cache.bin"
    monkeypatch.setattr(codecache, "_path", path)
    monkeypatch.setattr(codecache, "_codes", {f"old {i}": compile("pass", "<string>", "exec")
                                              for i in range(50)})
    monkeypatch.setattr(codecache, "_used", set())
    monkeypatch.setattr(codecache, "_added", 0)
    monkeypatch.setattr(codecache, "_MAX_KEPT", 40)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(dataclasses, "_create_fn", codecache._create_fn)
    _classes()
    used = set(codecache._used)
    codecache.save()
    kept = codecache._load(path)
    assert set(kept) == used and len(used) > 5 and not any(t.startswith("old ") for t in kept)
