"""Starting a game and knowing when it is over: the game runs in a session (process group) of
its own, so the launcher's end never ends it, and it counts as running until every process of
that group has exited — a launcher stub that starts the real game and exits is followed to the
real game's end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from pathlib import Path

from engine.core.errors import EngineError, ErrorCode

POLL_S = 0.25


async def spawn(argv: list[str], cwd: Path, env: Mapping[str, str],
                log_path: Path) -> asyncio.subprocess.Process:
    """Start the game detached from us (its own session); its output goes to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            return await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=log, start_new_session=True)
        except OSError as exc:
            raise EngineError(ErrorCode.LAUNCH_FAILED,
                              f"could not start {argv[0]}: {exc.strerror or exc}") from exc


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else (cannot be ours, but do not claim it ended)
    return True


async def wait_all(proc: asyncio.subprocess.Process) -> int:
    """The main process's exit code, once it and every process of its group have exited."""
    code = await proc.wait()
    while group_alive(proc.pid):  # the group id is the leader's pid (start_new_session)
        await asyncio.sleep(POLL_S)
    return code


def stop_group(pgid: int, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
