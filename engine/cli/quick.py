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
The line is sent only once the daemon has answered the handshake: a daemon that holds the
data folder but does not answer within ``wire.HANDSHAKE_TIMEOUT_S`` (stopped, hung) is
reported at once as ``DAEMON_UNREACHABLE``, and never gets a line it could run later.
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
# a quiet daemon still pings every 20 s (websockets' default), and the relay answers: this
# much silence is a daemon that stopped answering
REPLY_TIMEOUT_S = 60.0


def data_dir_of(argv: list[str]) -> str | None:
    """The data folder the line names, as the settings take it: its last ``--data`` (before a
    ``--``), else ``LAUNCHER_ENGINE_DATA_DIR``, else the default (an empty value is none);
    None when a ``--data`` has no value (the full CLI words that error)."""
    found: str | None = None
    for i, word in enumerate(argv):
        if word == "--":
            break
        if word == "--data":
            if i + 1 >= len(argv):
                return None
            found = argv[i + 1]
        elif word.startswith("--data="):
            found = word[len("--data="):]
    return os.path.abspath(os.path.expanduser(found) if found else wire.default_data_dir())


def command_line(argv: list[str], data_dir: str) -> dict[str, Any]:
    """The ``cli`` request's params."""
    return {"argv": argv, "cwd": os.getcwd(), "home": os.path.expanduser("~"),
            "dataDir": data_dir, "protocol": wire.PROTOCOL_VERSION,
            "env": [f"{k}={v}" for k, v in os.environ.items()
                    if k.startswith(ENV_PREFIX) and k not in NOT_SENT],
            "progress": sys.stdout.isatty() or bool(os.environ.get("LAUNCHER_FORCE_PROGRESS"))}


class _Gone(Exception):
    """The daemon's connection failed after it had the line (not this process's output)."""


def forward(argv: list[str]) -> int | None:
    """The exit code of the line run by the daemon, or None: run it here (see above)."""
    if not argv or any(word in LOCAL_ONLY for word in argv):
        return None
    relay = _Relay()
    try:
        return _forward(argv, relay)
    except _Gone as exc:
        relay.end_bar()
        from engine.cli.main import report_unreachable

        return report_unreachable(argv, f"the daemon closed the connection: {exc}")
    except KeyboardInterrupt:
        relay.end_bar()
        from engine.cli.main import report_interrupted

        return report_interrupted()


def _forward(argv: list[str], relay: _Relay) -> int | None:
    found: tuple[int, int, str] | None = None
    try:
        data_dir = data_dir_of(argv)
        found = wire.running_daemon(data_dir) if data_dir is not None else None
        if found is None or data_dir is None:
            return None
        request = wire.request(REQUEST_ID, "cli", command_line(argv, data_dir))
        if len(request) > wire.MAX_REQUEST_BYTES:
            return None  # the daemon would refuse it unread
        _, port, token = found
        ws = wire.WebSocket(port, token, timeout=wire.HANDSHAKE_TIMEOUT_S)
    except TimeoutError:
        return _not_answering(argv, found)
    except (OSError, ValueError):
        return None  # the full CLI looks again and reports what it finds
    try:
        try:
            ws.accept()
            if wire.hello_problem(json.loads(ws.recv())) is not None:
                return None  # another protocol: it did not read the line
            # the line goes only to a daemon that answered: one that is stopped or hung must
            # never run it later, after this process has given up on it
            ws.sock.settimeout(REPLY_TIMEOUT_S)
            ws.send(request)
        except TimeoutError:
            return _not_answering(argv, found)
        except (OSError, ValueError, wire.Closed):
            return None  # refused before the daemon had the line: nothing ran
        return relay.run(ws)
    finally:
        ws.close()


def _not_answering(argv: list[str], found: tuple[int, int, str] | None) -> int:
    """A daemon that holds the data folder but does not answer: said now, as the full CLI would
    say it (which would first wait as long again for the same daemon)."""
    from engine.cli.main import report_unreachable

    return report_unreachable(argv, wire.not_answering(found[0] if found else 0))


class _Relay:
    """Prints the daemon's output messages until the line's reply."""

    def __init__(self) -> None:
        self.printed = False
        self.bar_open = False  # the last stdout text is a progress bar without its newline

    def run(self, ws: wire.WebSocket) -> int | None:
        """The line's exit code, or None when the daemon declined it (nothing of it ran,
        nothing was printed: a refusal without an id, such as MESSAGE_TOO_LARGE, too)."""
        while True:
            try:
                msg = json.loads(ws.recv())
            except (OSError, ValueError, wire.Closed) as exc:
                raise _Gone(str(exc) or type(exc).__name__) from exc
            if not isinstance(msg, dict):
                raise _Gone(f"unexpected message {msg!r:.200}")
            if msg.get("type") == "output":
                self.write(msg.get("stream"), str(msg.get("text")))
                continue
            if msg.get("id") not in (REQUEST_ID, None) or "type" in msg:
                continue
            result = msg.get("result")
            if isinstance(result, dict) and isinstance(result.get("exitCode"), int):
                return int(result["exitCode"])
            if self.printed:  # it ran, then broke: not run a second time here
                raise _Gone(f"the line's reply has no exit code: {msg!r:.200}")
            return None  # declined, or an error reply (a daemon without this path)

    def write(self, stream: object, text: str) -> None:
        write_out(stream, text)
        self.printed = True
        if stream == "stdout" and text:
            self.bar_open = not text.endswith("\n")

    def end_bar(self) -> None:
        """What the CLI does before an error line: the bar's line ended."""
        if self.bar_open:
            sys.stdout.write("\n")
            self.bar_open = False


def write_out(stream: object, text: str) -> None:
    """``text`` on stdout (``stream`` "stdout") or stderr, flushed: the CLI's output, this
    process's own or relayed from the daemon."""
    out = sys.stdout if stream == "stdout" else sys.stderr
    out.write(text)
    out.flush()


def end_now(code: int) -> None:
    """End a one-shot client as soon as its output is out: the interpreter's own exit would
    free every module's objects one by one (~9 ms, a sixth of a ``status``), and this process
    has nothing else to finish (no thread, no file but the closed socket; the one atexit
    handler of the full CLI, ``engine.codecache.save``, would write methods the daemon has
    cached already); the kernel frees the rest. A stream that cannot be flushed leaves the
    exit to the interpreter, which reports it as it always did."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def main() -> int:
    """``launcher-engine``: the quick path, else the full CLI."""
    code = forward(sys.argv[1:])
    if code is not None:
        end_now(code)
        return code  # a stream that could not be flushed
    from engine.cli.main import main as full_main

    return full_main()
