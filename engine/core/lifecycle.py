"""The task lifecycle as data: states (the seed's ``DownloadTask.status``), kinds, and the one
transition table every status change goes through. An illegal transition raises; the state
store persists every state the launcher shows (preparing and verifying included).

    queued ──▶ preparing ──▶ downloading ──▶ verifying ──▶ completed
      │  ▲         │              │              │
      ▼  │         ▼              ▼              ▼
    paused ◀──── (paused, queued when stopped or interrupted, cancelled, error)
                                                  error ──▶ queued (resumed) | cancelled
"""

from __future__ import annotations

from enum import StrEnum

from engine.core.errors import EngineError, ErrorCode


class TaskState(StrEnum):
    """Task status values exactly as the seed's ``DownloadTask.status`` enum."""

    QUEUED = "queued"
    PREPARING = "preparing"
    DOWNLOADING = "downloading"
    PAUSED = "paused"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"


class TaskKind(StrEnum):
    INSTALL = "install"
    UPDATE = "update"  # to the latest or a given version
    ROLLBACK = "rollback"  # back to the previous version: an update with a known target
    REPAIR = "repair"  # same version, damaged files rebuilt

    @property
    def changes_version(self) -> bool:
        return self in (TaskKind.UPDATE, TaskKind.ROLLBACK)

    @property
    def needs_install(self) -> bool:
        """Works on an installed game (update machinery) rather than a fresh folder."""
        return self is not TaskKind.INSTALL


RUNNING = frozenset({TaskState.PREPARING, TaskState.DOWNLOADING, TaskState.VERIFYING})
FINISHED = frozenset({TaskState.COMPLETED, TaskState.ERROR, TaskState.CANCELLED})
"""Out of the queue. ``error`` is finished but resumable: the same request re-queues it."""
KEEPS_STAGING = frozenset(TaskState) - {TaskState.COMPLETED, TaskState.CANCELLED}

_STOPPED = {TaskState.QUEUED, TaskState.PAUSED, TaskState.CANCELLED, TaskState.ERROR}
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset({TaskState.PREPARING, TaskState.PAUSED, TaskState.CANCELLED}),
    TaskState.PREPARING: frozenset({TaskState.DOWNLOADING, TaskState.VERIFYING,
                                    TaskState.COMPLETED, *_STOPPED}),
    TaskState.DOWNLOADING: frozenset({TaskState.VERIFYING, TaskState.COMPLETED, *_STOPPED}),
    TaskState.VERIFYING: frozenset({TaskState.COMPLETED, *_STOPPED}),
    # a task paused by preemption starts again when a slot frees up
    TaskState.PAUSED: frozenset({TaskState.QUEUED, TaskState.PREPARING, TaskState.CANCELLED}),
    TaskState.ERROR: frozenset({TaskState.QUEUED, TaskState.CANCELLED}),
    TaskState.COMPLETED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}


def can_transition(current: TaskState, new: TaskState) -> bool:
    return new is current or new in TRANSITIONS[current]


def check_transition(current: TaskState, new: TaskState, task_id: str = "") -> TaskState:
    """``new`` when the table allows it (staying in a state is always allowed), else raise."""
    if not can_transition(current, new):
        raise EngineError(ErrorCode.ILLEGAL_TRANSITION,
                          f"task {task_id[:8]} cannot go from {current} to {new}", item=task_id or None)
    return new


def after_restart(state: TaskState) -> TaskState:
    """A task that was running when the engine stopped (kill -9, power loss) is queued again:
    its journal lets it resume."""
    return TaskState.QUEUED if state in RUNNING else state
