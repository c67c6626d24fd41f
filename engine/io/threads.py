"""Blocking work on threads, awaited from the loop so that a cancelled run still waits for it.

``run_in_executor`` and ``to_thread`` give up on a thread when their caller is cancelled: the
thread goes on. A run that pauses or is cancelled would then end while a thread still creates
or writes staged files, and a cancel that removes the staging area right after failed with
"Directory not empty" (a file created while the removal walked the folder). Everything that
writes into a task's staging area runs through ``run_to_end``: cancelled, it waits for the
thread (telling it to stop early through ``stop`` when the work can), then re-raises.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")


async def thread_ended(work: asyncio.Future[Any]) -> None:
    """Wait until a thread's work has ended, whatever further cancels arrive meanwhile."""
    while not work.done():
        try:
            await asyncio.wait({work})
        except asyncio.CancelledError:
            continue


async def run_to_end(executor: Executor | None, fn: Callable[..., T], *args: Any,
                     stop: threading.Event | None = None) -> T:
    """``fn(*args)`` on ``executor`` (the loop's default for None); cancelled, the thread is
    told to stop (``stop``) and waited for before the cancel goes on."""
    work = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        await thread_ended(work)
        if not work.cancelled() and work.exception() is not None:
            work.exception()  # retrieved: the cancel is the outcome, not the thread's error
        raise
