"""The CLI as a one-shot client of the daemon (issue 13, first byte within 0.1 s): what its start
leaves out, and that a command sent to the daemon prints, returns and fails as the same command
run in-process does. Real `launcher-engine serve` subprocesses; the backend is a closed port
(these commands fail before they need it, identically in both paths)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.api.client import DaemonClient, SyncDaemonClient, daemon_running
from engine.cli.main import _terminal_columns
from engine.core.errors import EngineError, ErrorCode, ExitCode
from engine.core.text import _BAD_CATEGORIES, _BAD_CHAR, check_text
from testing.daemon import DaemonProcess
from testing.enginekit import EngineCli, engine_env
from testing.processes import REPO

NO_BACKEND = "http://127.0.0.1:9"
# what only the in-process engine, the daemon or some commands need: never loaded by a command
# the daemon runs (logging and ctypes: the in-process engine's; the event classes: with the first
# event; shutil: argparse's terminal width; unicodedata and encodings.idna: text rules and
# socket.create_connection; socket, base64, struct: the blocking client is on _socket; tomllib
# and datetime: a config file, and there is none here)
LEFT_OUT = ("logging", "ctypes", "shutil", "unicodedata", "encodings.idna", "socket", "base64",
            "struct", "threading", "tomllib", "datetime", "engine.core.messages",
            "engine.core.lifecycle", "engine.core.schedule", "asyncio", "sqlite3", "websockets",
            "engine.jobs.engine", "engine.api.service")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineCli]:
    data = tmp_path_factory.mktemp("client-start") / "data"
    d = DaemonProcess(data, NO_BACKEND)
    d.start()
    try:
        yield EngineCli(data, NO_BACKEND)
    finally:
        d.stop()


def test_a_command_sent_to_the_daemon_imports_none_of_the_engine(daemon: EngineCli) -> None:
    script = (
        "import sys\n"
        "from engine.cli.main import main\n"
        f"code = main(['--data', {str(daemon.data_dir)!r}, '--backend', {NO_BACKEND!r},"
        " '--json', 'status'])\n"
        f"print(code, sorted(m for m in {LEFT_OUT!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env=engine_env(), timeout=60, check=True).stdout.splitlines()
    assert '"running": true' in out[0]  # the daemon answered, not an in-process engine
    assert out[-1] == "0 []"


def _normal(text: str) -> str:
    """Task ids (and their 8-digit short forms) and folders differ between two data dirs."""
    text = re.sub(r"[0-9a-f]{32}", "TASK", text)
    text = re.sub(r"\b[0-9a-f]{8}\b", "TASK8", text)
    return text.replace("/inproc/", "/X/").replace("/viadaemon/", "/X/")


@pytest.mark.parametrize("words", [
    ("--json", "install", "star-courier", "--target", "{root}/game"),  # events, then an error
    ("install", "star-courier", "--target", "{root}/game"),  # the text lines of the same
    ("--json", "queue", "pause", "0123456789abcdef"),  # an error reply: JSON line, stderr
    ("--json", "limit", "20M"),
    ("limit", "--task", "not an id!"),  # refused by the daemon's validation
    ("--json", "settings", "connections", "0"),  # refused by the settings' rules
    ("install",),  # a line the daemon declines (a usage error): the client's own CLI says it
    ("install", "star-courier", "--limit", "bogus"),  # a bad rate is a usage error too
    ("--json", "status", "--bogus"),
])
def test_daemon_and_in_process_commands_print_and_exit_alike(tmp_path: Path,
                                                             words: tuple[str, ...]) -> None:
    results = []
    for name in ("inproc", "viadaemon"):
        root = tmp_path / name
        data = root / "data"
        data.mkdir(parents=True)
        daemon = DaemonProcess(data, NO_BACKEND) if name == "viadaemon" else None
        if daemon is not None:
            daemon.start()
        try:
            argv = [sys.executable, "-m", "engine.cli", "--data", str(data), "--backend",
                    NO_BACKEND, *(w.format(root=root) for w in words)]
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                                  env=engine_env(), timeout=60)
            assert (daemon_running(data) is not None) == (daemon is not None)
        finally:
            if daemon is not None:
                daemon.stop()
        # stderr: the CLI's own lines (an in-process engine may log there besides)
        said = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "usage:"))]
        lines = _normal(proc.stdout).splitlines()
        if "--json" not in words:  # a daemon's reply may come before the event it caused
            lines.sort()
        results.append((proc.returncode, lines, _normal("\n".join(said))))
    assert results[0] == results[1]
    assert results[0][1] or results[0][2]  # something was said


def test_a_config_error_is_reported_though_the_daemon_runs(daemon: EngineCli) -> None:
    """The daemon's connection is opened before the settings are read: a refused setting is
    still the command's answer, and the daemon keeps serving."""
    proc = subprocess.run(daemon.argv("status"), capture_output=True, text=True, cwd=REPO,
                          env=engine_env({"LAUNCHER_ENGINE_CONNECTIONS": "many"}), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "error: CONFIG_INVALID: connections = 'many' in LAUNCHER_ENGINE_CONNECTIONS" in proc.stderr
    assert daemon.ok("status")[-1]["running"] is True


def test_a_request_sent_without_waiting_still_reports_its_error(daemon: EngineCli) -> None:
    info = daemon_running(daemon.data_dir)
    assert info is not None
    with SyncDaemonClient(info) as client:
        client.subscribe("not an id!", reply=False)
        with pytest.raises(EngineError) as err:
            client.call("ping")
        assert err.value.code is ErrorCode.INVALID_PARAMS
        assert client.call("ping")["pong"] is True  # the connection goes on
    refused = SyncDaemonClient(info.__class__(info.pid, 1, info.token)).open()  # nothing listens
    with pytest.raises(EngineError) as unreachable:
        refused.__enter__()
    assert unreachable.value.code is ErrorCode.DAEMON_UNREACHABLE


def test_the_text_rule_matches_unicode_categories() -> None:
    """The pattern of refused characters is exactly the categories it stands for."""
    wrong = [c for c in range(sys.maxunicode + 1)
             if (unicodedata.category(chr(c)) in _BAD_CATEGORIES) != bool(_BAD_CHAR.match(chr(c)))]
    assert wrong == []
    with pytest.raises(ValueError, match="U\\+2028"):
        check_text("ok\u2028no\n")


@pytest.mark.parametrize("columns", [None, "", "0", "-3", "abc", "33", "250"])
def test_the_parser_width_is_what_shutil_would_say(monkeypatch: pytest.MonkeyPatch,
                                                   columns: str | None) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.delenv("LINES", raising=False)
    assert _terminal_columns() == shutil.get_terminal_size().columns
    assert os.environ.get("COLUMNS") == columns


QUICK_LEFT_OUT = ("engine.cli.main", "engine.codecache", "engine.api.client", "engine.api.protocol",
                  "argparse", "dataclasses", "engine.io.config")


def _imported(importtime: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in importtime.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_the_quick_path_sends_the_line_before_importing_the_cli(daemon: EngineCli) -> None:
    """``python -m engine.cli`` with a daemon running: the line goes to the daemon whole, and
    this process loads none of the CLI, its command table or its settings (engine.cli.quick)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *daemon.argv("status")[1:]],
                          capture_output=True, text=True, cwd=REPO, env=engine_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '"running": true' in proc.stdout
    loaded = _imported(proc.stderr)
    assert "engine.cli.quick" in loaded and "engine.api.wire" in loaded
    assert sorted(loaded & set(QUICK_LEFT_OUT)) == []


def test_a_relative_path_is_the_clients(daemon: EngineCli, tmp_path: Path) -> None:
    """The daemon runs the line in its own folder; a relative --target is still the client's."""
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "--data", str(daemon.data_dir),
                           "--backend", NO_BACKEND, "install", "star-courier", "--target",
                           "rel/game", "--no-wait"], capture_output=True, text=True,
                          cwd=tmp_path, env=engine_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"installing star-courier into {tmp_path}/rel/game" in proc.stdout


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _wait_for(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_quick_client_interrupted_or_killed_leaves_the_daemon_serving(tmp_path: Path) -> None:
    """``events`` through the quick path: its events arrive; Ctrl-C says what the CLI says and
    exits INTERRUPTED; a kill -9 ends the daemon's run of the line (its thread goes); the daemon
    stopping is DAEMON_UNREACHABLE, as for the full CLI."""
    data = tmp_path / "data"
    d = DaemonProcess(data, NO_BACKEND)
    info = d.start()
    cli = EngineCli(data, NO_BACKEND)
    try:
        idle = _threads(info.pid)

        def follow() -> subprocess.Popen[str]:
            # a line just answered (the ``status`` below) can still hold its thread for a moment;
            # counting from idle makes the rise this client's line and not that one's tail
            _wait_for(lambda: _threads(info.pid) == idle, "an earlier line's thread outlived it")
            proc = subprocess.Popen(cli.argv("events"), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=REPO, env=engine_env())
            _wait_for(lambda: _threads(info.pid) > idle, "the line's thread did not start")
            return proc

        watcher = follow()
        assert cli.ok("install", "star-courier", "--target", str(tmp_path / "g"), "--no-wait")
        _wait_for(lambda: [t["status"] for t in cli.ok("queue", "list", "--all")[-1]["tasks"]] == ["error"],
                  "the install did not end")
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=30)
        assert watcher.returncode == int(ExitCode.INTERRUPTED), err
        assert "interrupted; the next run resumes where this one stopped" in err
        statuses = [line for line in out.splitlines() if "downloadTaskStatusUpdate" in line]
        assert any('"error"' in line for line in statuses), out
        _wait_for(lambda: _threads(info.pid) == idle, "the line's thread outlived Ctrl-C")

        killed = follow()
        killed.kill()
        killed.communicate(timeout=30)
        _wait_for(lambda: _threads(info.pid) == idle, "the line's thread outlived kill -9")
        assert cli.ok("status")[-1]["running"] is True

        orphan = follow()
        d.stop()
        _, err = orphan.communicate(timeout=30)
        assert orphan.returncode == int(ExitCode.BACKEND), err
        assert "error: DAEMON_UNREACHABLE: the daemon closed the connection" in err
    finally:
        d.stop()


def test_a_line_too_big_for_a_request_runs_in_the_client(daemon: EngineCli) -> None:
    """The daemon refuses requests over 64 KiB unread: such a line (here a long setting in the
    environment) is run by the client's own CLI, against the same daemon, not left waiting."""
    proc = subprocess.run(daemon.argv("status"), capture_output=True, text=True, cwd=REPO,
                          env=engine_env({"LAUNCHER_ENGINE_UNUSED": "a" * 70_000}), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '"running": true' in proc.stdout


def test_a_home_path_is_the_clients_home(daemon: EngineCli, tmp_path: Path) -> None:
    """``~`` in a path argument (unexpanded by a shell: quoted, or after ``=``) is the home of
    the client, not the daemon's."""
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "--data", str(daemon.data_dir),
                           "--backend", NO_BACKEND, "install", "star-courier", "--target=~/g",
                           "--no-wait"], capture_output=True, text=True, cwd=tmp_path,
                          env=engine_env({"HOME": str(home)}), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"installing star-courier into {home}/g" in proc.stdout


def test_a_client_gone_from_a_wait_does_not_hold_the_daemon_shutdown(tmp_path: Path) -> None:
    """A client that asked to ``wait`` for a task that does not end (offline) and went away:
    the daemon still stops on SIGTERM at once (its handler dropped the wait), for the
    protocol's client and the quick path's alike."""
    data = tmp_path / "data"
    d = DaemonProcess(data, NO_BACKEND)
    info = d.start()
    cli = EngineCli(data, NO_BACKEND)
    try:
        assert cli.ok("offline", "on")
        task = cli.ok("install", "star-courier", "--target", str(tmp_path / "g"),
                      "--no-wait")[-1]["task"]["taskId"]
        with SyncDaemonClient(info) as client:
            client.send("wait", {"taskId": task})
            assert client.call("ping")["pong"] is True  # the wait is running, unanswered
        quick = cli.popen("install", "moon-miner", "--target", str(tmp_path / "h"))
        _wait_for(lambda: len(cli.ok("queue", "list")[-1]["tasks"]) == 2,
                  "the quick client's install was not queued")
        quick.kill()
        quick.communicate(timeout=30)
        assert d.server is not None
        started = time.monotonic()
        d.server.proc.terminate()
        d.server.proc.wait(30)
        assert time.monotonic() - started < 10
        assert d.server.proc.returncode == 0
    finally:
        d.stop()


def test_a_stopped_daemon_is_reported_at_once_and_never_gets_the_line(tmp_path: Path) -> None:
    """A daemon that holds the data folder but does not answer (here a real SIGSTOP) took a
    one-shot CLI 90 s to report (the quick path's 60 s reply wait, then the full CLI's 30 s), and
    the line, sent before the handshake, could run whenever the daemon resumed. Now the CLI and
    the blocking client say DAEMON_UNREACHABLE after the handshake timeout, naming the daemon,
    and the line is never sent: resumed, the daemon has not run it."""
    data = tmp_path / "data"
    d = DaemonProcess(data, NO_BACKEND)
    info = d.start()
    cli = EngineCli(data, NO_BACKEND)
    try:
        assert cli.ok("status")[-1]["globalLimitBps"] is None
        os.kill(info.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            proc = subprocess.run(cli.argv("limit", "5M"), capture_output=True, text=True,
                                  cwd=REPO, env=engine_env(), timeout=120)
            waited = time.monotonic() - started
            assert proc.returncode == int(ExitCode.BACKEND), proc.stderr
            assert (f"error: DAEMON_UNREACHABLE: the engine daemon (pid {info.pid}) did not "
                    "answer within 5 s: it is stopped or hung") in proc.stderr
            # a bound on behaviour, not a speed: the handshake timeout, not the 60 + 30 s waits
            assert waited < 30, waited
            with (pytest.raises(EngineError) as caught,
                  SyncDaemonClient(daemon_running(data))):  # type: ignore[arg-type]
                pass
            assert caught.value.code is ErrorCode.DAEMON_UNREACHABLE
            assert f"(pid {info.pid}) did not answer" in caught.value.message

            async def connect_async() -> None:  # the launcher's client
                async with DaemonClient(daemon_running(data)):  # type: ignore[arg-type]
                    pass

            with pytest.raises(EngineError) as caught:
                asyncio.run(connect_async())
            assert caught.value.code is ErrorCode.DAEMON_UNREACHABLE
            assert f"(pid {info.pid}) did not answer" in caught.value.message
        finally:
            os.kill(info.pid, signal.SIGCONT)
        status = cli.ok("status")[-1]
        assert status["running"] is True and status["globalLimitBps"] is None
    finally:
        d.stop()
