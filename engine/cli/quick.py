"""The one-shot CLI's quick path: with a daemon running for the data folder, the command line
goes to it whole, before this process imports anything of the engine's CLI.

A command sent through the full CLI reached the daemon 50-54 ms after the process started: the
interpreter, then the dataclasses' method cache, the command table, argparse and the settings,
each to parse a line that the daemon could parse itself, with all of that already loaded
(issue 13, first byte within 0.1 s with the daemon running). Here the process finds the daemon
by its lock, sends the line, its folder and its ``LAUNCHER_ENGINE_*`` settings at once and
prints what the daemon's run of it says (``engine.cli.main.run_command_line``), exactly what
the same command prints through the full CLI; the exit code is the command's.

The full CLI runs instead (``forward`` returns None) whenever the quick path could differ from
it: no daemon; help; ``serve`` and ``login`` (the daemon itself, a password read from this
terminal); a daemon that declines the line (one it would not parse, a different data folder
in the settings, a daemon older than this path) or whose connection fails before it has the
line. Once the daemon has the line, a broken connection is reported as the full CLI reports
it (``DAEMON_UNREACHABLE``): the command may have run, so it is not run a second time here.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from engine.api import wire
from engine.core.locations import ENV_PREFIX

LOCAL_ONLY = frozenset({"serve", "login", "-h", "--help"})
NOT_SENT = frozenset({ENV_PREFIX + "PASSWORD"})  # no setting: login's, and login runs here
REQUEST_ID = 1


def data_dir_of(argv: list[str]) -> str | None:
    """The data folder the line names (its last ``--data``, as the parser takes it), else the
    default; None when a ``--data`` has no value (the full CLI words that error)."""
    found: str | None = None
    for i, word in enumerate(argv):
        if word == "--data":
            if i + 1 >= len(argv):
                return None
            found = argv[i + 1]
        elif word.startswith("--data="):
            found = word[len("--data="):]
    # an empty value is no value to the settings (``--data ""``: the default folder)
    return os.path.abspath(os.path.expanduser(found) if found else wire.default_data_dir())


def command_line(argv: list[str], data_dir: str) -> dict[str, Any]:
    """The ``cli`` request's params."""
    return {"argv": argv, "cwd": os.getcwd(), "dataDir": data_dir,
            "env": [f"{k}={v}" for k, v in os.environ.items()
                    if k.startswith(ENV_PREFIX) and k not in NOT_SENT],
            "progress": sys.stdout.isatty() or bool(os.environ.get("LAUNCHER_FORCE_PROGRESS"))}


def forward(argv: list[str]) -> int | None:
    """The exit code of the line run by the daemon, or None: run it here (see above)."""
    if not argv or any(word in LOCAL_ONLY for word in argv):
        return None
    try:
        data_dir = data_dir_of(argv)
        found = wire.running_daemon(data_dir) if data_dir is not None else None
        if found is None or data_dir is None:
            return None
        _, port, token = found
        ws = wire.WebSocket(port, token, timeout=30.0)
    except (OSError, ValueError):
        return None  # the full CLI looks again and reports what it finds
    try:
        try:
            ws.send(wire.request(REQUEST_ID, "cli", command_line(argv, data_dir)))
            ws.accept()
            if wire.hello_problem(json.loads(ws.recv())) is not None:
                return None  # another protocol: it did not read the line
        except (OSError, ValueError, wire.Closed):
            return None  # refused before the daemon had the line: nothing ran
        try:
            return _relay(ws)
        except (OSError, ValueError, wire.Closed) as exc:
            from engine.cli.main import report_unreachable

            return report_unreachable(argv, f"the daemon closed the connection: {exc}")
        except KeyboardInterrupt:
            from engine.cli.main import report_interrupted

            return report_interrupted()
    finally:
        ws.close()


def _relay(ws: wire.WebSocket) -> int | None:
    """Print the daemon's output messages until the line's reply: its exit code, or None when
    the daemon declined the line (nothing of it ran, nothing was printed)."""
    ws.sock.settimeout(None)  # a command such as install answers when its task ends
    printed = False
    while True:
        msg = json.loads(ws.recv())
        if not isinstance(msg, dict):
            raise ValueError(f"unexpected message {msg!r:.200}")
        if msg.get("type") == "output":
            stream = sys.stdout if msg.get("stream") == "stdout" else sys.stderr
            stream.write(str(msg.get("text")))
            stream.flush()
            printed = True
            continue
        if msg.get("id") != REQUEST_ID:
            continue
        result = msg.get("result")
        if isinstance(result, dict) and isinstance(result.get("exitCode"), int):
            return int(result["exitCode"])
        if printed:  # it ran, then broke: not run a second time here
            raise ValueError(f"the line's reply has no exit code: {msg!r:.200}")
        return None  # declined, or an error reply (a daemon without this path)


def main() -> int:
    """``launcher-engine``: the quick path, else the full CLI."""
    code = forward(sys.argv[1:])
    if code is not None:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            return code
        os._exit(code)  # nothing here outlives the output (engine.cli.main._end_now)
    from engine.cli.main import main as full_main

    return full_main()
