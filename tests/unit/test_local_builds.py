"""An update's local builds (moves and patches) run several at once: the admission rule
(engine.core.updateplan) and the gate that applies it in plan order (engine.jobs.update)."""

from __future__ import annotations

import asyncio

import pytest

from engine.core.updateplan import (
    BuildMethod,
    FileBuild,
    local_build_memory,
    may_start_local_build,
)
from engine.jobs.update import _LocalBuildGate
from patcher.deltaindex import PatchEntry
from patcher.manifest import FileEntry, Manifest

MiB = 1 << 20


def test_a_build_starts_with_a_free_slot_and_memory_or_alone() -> None:
    # running, in use, cost, max running, limit
    assert may_start_local_build(0, 0, 10 * MiB, 2, 100 * MiB)
    assert may_start_local_build(1, 40 * MiB, 60 * MiB, 2, 100 * MiB)
    assert not may_start_local_build(1, 40 * MiB, 61 * MiB, 2, 100 * MiB)  # over the limit
    assert not may_start_local_build(2, 0, 0, 2, 100 * MiB)  # no slot
    assert may_start_local_build(0, 0, 500 * MiB, 2, 100 * MiB)  # too big for any: alone
    assert not may_start_local_build(1, 0, 500 * MiB, 2, 100 * MiB)


def test_a_patch_holds_its_source_itself_its_output_and_a_working_copy() -> None:
    old = Manifest("p", "1", (FileEntry("a.pak", 70 * MiB, 0o644, "0" * 64, ()),), (), {})
    patch = PatchEntry("a.pak", "a.pak", "0" * 64, "1" * 64, 72 * MiB, "hdiffpatch", "f" * 64,
                       3 * MiB)
    assert local_build_memory(FileBuild(0, BuildMethod.PATCH, patch=patch), old) == 217 * MiB
    new_file = PatchEntry("b.bin", None, "0" * 64, "1" * 64, 5 * MiB, "zstd", "f" * 64, MiB)
    assert local_build_memory(FileBuild(1, BuildMethod.PATCH, patch=new_file), old) == 11 * MiB
    assert local_build_memory(FileBuild(2, BuildMethod.MOVE, move_source="a.pak"), old) == 0


def test_the_gate_admits_in_order_and_a_big_build_is_not_passed_over() -> None:
    """Two slots, 100 MiB: a 30 MiB build runs; a 500 MiB one waits to run alone; the 10 MiB
    builds behind it wait for it (they would fit beside the first), then run two at a time."""
    async def scenario() -> list[str]:
        gate = _LocalBuildGate(2, 100 * MiB)
        log: list[str] = []
        release: dict[str, asyncio.Event] = {}

        async def build(name: str, cost: int) -> None:
            release[name] = asyncio.Event()
            await gate.enter(cost)
            log.append(f"+{name}")
            await release[name].wait()
            log.append(f"-{name}")
            gate.leave(cost)

        async with asyncio.TaskGroup() as tg:
            for name, cost in (("a", 30), ("big", 500), ("c", 10), ("d", 10), ("e", 10)):
                tg.create_task(build(name, cost * MiB))
                await asyncio.sleep(0)
            await asyncio.sleep(0.01)
            assert log == ["+a"]
            release["a"].set()
            await asyncio.sleep(0.01)
            assert log == ["+a", "-a", "+big"]
            assert gate.running == 1 and gate.in_use == 500 * MiB
            release["big"].set()
            await asyncio.sleep(0.01)
            assert log[-2:] == ["+c", "+d"] and gate.running == 2
            release["c"].set()
            release["d"].set()
            await asyncio.sleep(0.01)
            release["e"].set()
        assert gate.running == 0 and gate.in_use == 0 and not gate.waiting
        return log

    log = asyncio.run(scenario())
    assert log.index("+e") > log.index("-c")


@pytest.mark.parametrize("when", ["waiting", "admitted_as_cancelled"])
def test_a_cancelled_build_gives_its_place_back(when: str) -> None:
    async def scenario() -> None:
        gate = _LocalBuildGate(1, 100 * MiB)
        await gate.enter(10 * MiB)  # the running one
        waiter = asyncio.create_task(gate.enter(20 * MiB))
        behind = asyncio.create_task(gate.enter(30 * MiB))
        await asyncio.sleep(0)
        if when == "admitted_as_cancelled":
            gate.leave(10 * MiB)  # admits the waiter ...
            waiter.cancel()  # ... which is cancelled before it runs: its place is freed
        else:
            waiter.cancel()
            await asyncio.sleep(0)
            gate.leave(10 * MiB)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.wait_for(behind, 1)  # the one behind runs, nothing is left held
        assert gate.running == 1 and gate.in_use == 30 * MiB and not gate.waiting

    asyncio.run(scenario())


def test_a_whole_group_cancelled_at_once_leaves_the_gate_clean() -> None:
    """Review finding: a pause cancels every build at once, and the running build's ``leave``
    (its ``finally``) ran before the waiting builds saw their cancel: the wake-up set a result
    on a cancelled turn (InvalidStateError), the waiters then failed to leave the line
    (ValueError), and the update ended in an ExceptionGroup instead of a pause."""
    async def scenario() -> None:
        gate = _LocalBuildGate(1, 100 * MiB)
        started = asyncio.Event()

        async def build(cost: int) -> None:
            await gate.enter(cost)
            try:
                started.set()
                await asyncio.Event().wait()  # until cancelled
            finally:
                gate.leave(cost)

        running = asyncio.create_task(build(10 * MiB))
        await started.wait()
        waiting = [asyncio.create_task(build(n * MiB)) for n in (20, 30, 40)]
        await asyncio.sleep(0)
        for t in (running, *waiting):  # the running one first: its leave comes first
            t.cancel()
        results = await asyncio.gather(running, *waiting, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        assert gate.running == 0 and gate.in_use == 0 and not gate.waiting

    asyncio.run(scenario())
