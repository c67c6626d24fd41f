"""Pure download-queue ordering: which tasks run, which get bumped, and user reordering.

Follows the seed's queue (section 14.4): higher priority first, then queue position, then age;
at most ``max_concurrent`` tasks download; a higher-priority arrival pauses a lower-priority
running task when the limit is reached. The functions only decide; the engine applies the
decision and persists the new states, so every rule here is testable without a loop or database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.core.lifecycle import TaskState

__all__ = [
    "RUNNING_STATES",
    "WAITING_STATES",
    "Decision",
    "QueueEntry",
    "TaskState",
    "move",
    "order",
    "reorder",
    "select_runnable",
]


RUNNING_STATES = frozenset({TaskState.PREPARING, TaskState.DOWNLOADING})
"""States that hold a download slot. Verifying is disk/CPU work and does not."""


@dataclass(frozen=True)
class QueueEntry:
    """What the scheduler needs to know about one task. Higher ``priority`` wins (seed: 1 = high).

    ``user_paused`` marks a pause the user asked for; such a task never auto-resumes. A task
    paused by preemption has ``state=paused`` and ``user_paused=False`` and resumes when a slot
    frees up.
    """

    task_id: str
    priority: int
    position: int
    state: TaskState
    created_at: float
    user_paused: bool = False


@dataclass(frozen=True)
class Decision:
    """Changes to apply: tasks to start (or resume), and running tasks to pause automatically."""

    start: tuple[str, ...] = ()
    preempt: tuple[str, ...] = ()


def _key(entry: QueueEntry) -> tuple[int, int, float, str]:
    return (-entry.priority, entry.position, entry.created_at, entry.task_id)


def _check_unique(entries: Sequence[QueueEntry]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.task_id in seen:
            raise ValueError(f"duplicate task id {entry.task_id!r} in queue")
        seen.add(entry.task_id)


def order(entries: Iterable[QueueEntry]) -> list[QueueEntry]:
    """Queue order: higher priority first, then lower position, then older (task id breaks ties)."""
    return sorted(entries, key=_key)


WAITING_STATES = frozenset({TaskState.QUEUED, TaskState.PAUSED})
"""States that may be started; ``paused`` only when the pause was automatic (preemption)."""


def _is_running(entry: QueueEntry) -> bool:
    return entry.state in RUNNING_STATES and not entry.user_paused


def _is_waiting(entry: QueueEntry) -> bool:
    return entry.state in WAITING_STATES and not entry.user_paused


def select_runnable(entries: Iterable[QueueEntry], max_concurrent: int) -> Decision:
    """Decide which tasks start and which running ones are paused to respect the limit.

    Candidates are running tasks (preparing/downloading) and waiting ones (queued, or paused
    automatically). User-paused, verifying, completed, failed and cancelled tasks are left alone.
    A running task is only bumped by a strictly higher-priority waiting task (or when the limit
    shrinks), so equal-priority work is never interrupted by later arrivals or reordering.
    """
    if max_concurrent < 0:
        raise ValueError(f"max_concurrent must be >= 0, got {max_concurrent}")
    items = list(entries)
    _check_unique(items)
    running = order(e for e in items if _is_running(e))
    waiting = order(e for e in items if _is_waiting(e))

    preempt: list[QueueEntry] = running[max_concurrent:]  # the limit was lowered
    kept = running[:max_concurrent]
    free = max_concurrent - len(kept)
    start = waiting[:free]
    pending = waiting[free:]

    # Bump the weakest running task while the best waiting one outranks it by priority.
    while kept and pending and pending[0].priority > kept[-1].priority:
        preempt.append(kept.pop())
        start.append(pending.pop(0))

    return Decision(
        start=tuple(e.task_id for e in order(start)),
        preempt=tuple(e.task_id for e in order(preempt)),
    )


def _renumber(entries: Sequence[QueueEntry]) -> list[QueueEntry]:
    return [
        entry if entry.position == i else dataclasses.replace(entry, position=i)
        for i, entry in enumerate(entries)
    ]


def _by_position(entries: Iterable[QueueEntry]) -> list[QueueEntry]:
    items = list(entries)
    _check_unique(items)
    return sorted(items, key=lambda e: (e.position, e.created_at, e.task_id))


def move(entries: Iterable[QueueEntry], task_id: str, new_position: int) -> list[QueueEntry]:
    """Move one task to ``new_position`` (clamped to the end) and renumber 0..n-1.

    Returns the entries in their new position order.
    """
    if new_position < 0:
        raise ValueError(f"new_position must be >= 0, got {new_position}")
    items = _by_position(entries)
    index = next((i for i, e in enumerate(items) if e.task_id == task_id), None)
    if index is None:
        raise KeyError(f"cannot move unknown task id {task_id!r}")
    entry = items.pop(index)
    items.insert(min(new_position, len(items)), entry)
    return _renumber(items)


def reorder(entries: Iterable[QueueEntry], ordered_ids: Sequence[str]) -> list[QueueEntry]:
    """Apply the seed's ``POST /tasks/queue/reorder``: listed ids first, in the given order.

    Tasks not listed keep their relative order after the listed ones; positions become 0..n-1.
    """
    if isinstance(ordered_ids, str):
        raise TypeError("ordered_ids must be a sequence of task ids, not a single string")
    items = _by_position(entries)
    by_id = {e.task_id: e for e in items}
    unknown = [task_id for task_id in ordered_ids if task_id not in by_id]
    if unknown:
        raise KeyError(f"cannot reorder unknown task id(s): {', '.join(map(repr, unknown))}")
    if len(set(ordered_ids)) != len(ordered_ids):
        dupes = sorted({t for t in ordered_ids if ordered_ids.count(t) > 1})
        raise ValueError(f"task id(s) listed more than once in reorder: {', '.join(dupes)}")
    listed = set(ordered_ids)
    rest = [e for e in items if e.task_id not in listed]
    return _renumber([by_id[t] for t in ordered_ids] + rest)
