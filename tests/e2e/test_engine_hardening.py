"""QA hardening of the engine's edges (issue 9 item 7, part of 8), on the real parts.

Every test drives a real ``launcher-engine serve`` subprocess over real WebSocket messages, or
the real ``launcher-engine`` CLI subprocess: settings validation and the config file writer,
control API params, malformed messages, the token only in the Authorization header, and a full
(or read-only) data disk. None of these paths reach the backend, so the engine points at a
closed port and no backend is started (fast).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import subprocess
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from engine.api.client import DaemonClient, DaemonInfo
from engine.core.errors import EngineError
from engine.io.config import show
from testing.daemon import DaemonProcess
from testing.enginekit import EngineCli

NO_BACKEND = "http://127.0.0.1:9"  # discard port: nothing listens; these paths never call it
PRODUCT = "tiny-tactics"


# -- real processes --------------------------------------------------------------------------




@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[DaemonProcess, DaemonInfo]]:
    d = DaemonProcess(tmp_path / "data", NO_BACKEND, tmp_path / "daemon.log")
    info = d.start()
    try:
        yield d, info
    finally:
        d.stop()


def cli_of(data_dir: Path) -> EngineCli:
    return EngineCli(data_dir, NO_BACKEND)


def cli_error(cli: EngineCli, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run a command that must fail: (exit code, its JSON error object, stderr)."""
    code, lines, stderr = cli.run(*args, timeout=60)
    assert code != 0, lines
    assert lines and "error" in lines[-1], (code, lines, stderr)
    assert "Traceback" not in stderr, stderr
    assert lines[-1]["exitCode"] == code
    return code, lines[-1]["error"], stderr


@contextlib.asynccontextmanager
async def raw_session(info: DaemonInfo) -> AsyncIterator[ClientConnection]:
    async with connect(info.url, additional_headers={"Authorization": f"Bearer {info.token}"},
                       max_size=None, compression=None) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert hello["type"] == "hello"
        yield ws


async def ask(ws: ClientConnection, message: str | bytes) -> dict[str, Any]:
    await ws.send(message)
    reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return reply


async def ping_ok(ws: ClientConnection) -> None:
    reply = await ask(ws, json.dumps({"id": "p", "method": "ping"}))
    assert reply == {"id": "p", "result": {"pong": True, "protocol": 1}}, reply


async def refused(client: DaemonClient, method: str, params: dict[str, Any]) -> EngineError:
    with pytest.raises(EngineError) as caught:
        await client.call(method, params)
    return caught.value


def snapshot(data_dir: Path) -> bytes | None:
    path = data_dir / "config.toml"
    return path.read_bytes() if path.exists() else None


def leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if p.name.endswith(".tmp"))


# -- 1. settings: validated in one place, nothing written when refused ----------------------

BAD_SETTINGS: list[tuple[str, Any]] = [
    ("connections", 0),  # every install would hang at 100 %
    ("connections", 65),
    ("connections", -1),
    ("connections", 10**30),
    ("connections", 1.5),
    ("connections", True),
    ("connections", "six"),
    ("max_concurrent_tasks", 0),
    ("max_concurrent_tasks", 17),
    ("max_range_bytes", 1),
    ("max_gap_bytes", 1 << 40),
    ("max_range_bytes", 0),
    ("max_attempts", 0),
    ("global_limit_bps", 0),
    ("global_limit_bps", 1 << 63),
    ("keep_free_bytes", -1),
    ("stall_timeout_s", 0),
    ("stall_timeout_s", -3.5),
    ("stall_timeout_s", "nan"),
    ("connect_timeout_s", "inf"),
    ("progress_interval_s", 10**400),
    ("token_refresh_margin_s", 1e9),
    ("qa_switch_delay_s", -1),
    ("direct_writes", "always"),
    ("use_keyring", "maybe"),
    ("username", "qa\nuser"),  # was written raw into config.toml: CLI and daemon then refused to start
    ("username", 'x"\n[evil]\nconnections = 0\n'),
    ("username", "nul\x00byte"),
    ("username", "escape\x1b[31m"),
    ("username", "line\u2028separator"),
    ("username", "lone\ud800surrogate"),
    ("username", ["a", "b"]),
    ("library_dir", "/tmp/a\nb"),
    ("schedule", ["25:00-26:00"]),
    ("schedule", ["22:00-06:00\n[evil]"]),
    ("schedule", ["sometimes"]),
    ("schedule", [1, 2]),
    ("schedule", ["00:00-01:00"] * 33),
    ("schedule", "22:00-06:00;noon"),
    ("no_such_setting", 1),
]


async def test_settings_api_refuses_bad_values_and_writes_nothing(daemon: Any) -> None:
    d, info = daemon
    async with DaemonClient(info) as client:
        await client.call("settings", {"key": "connections", "value": 4})
        before = snapshot(d.data_dir)
        assert before is not None
        for key, value in BAD_SETTINGS:
            err = await refused(client, "settings", {"key": key, "value": value})
            assert err.code == "CONFIG_INVALID", (key, value, err)
            assert key in err.message, err.message
            if key != "no_such_setting":
                assert show(value) in err.message, err.message
            assert len(err.message) < 500, err.message
            assert snapshot(d.data_dir) == before, (key, value)
        err = await refused(client, "schedule", {"windows": ["22:00-06:00", "tea time"]})
        assert err.code == "CONFIG_INVALID" and "tea time" in err.message
        assert snapshot(d.data_dir) == before
        assert leftovers(d.data_dir) == []
        current = (await client.call("settings"))["settings"]
        assert current["connections"] == 4 and current["max_concurrent_tasks"] == 1
        assert current["schedule"] == [] and current["username"] is None
        assert (await client.call("ping"))["pong"] is True
    assert d.alive
    d.stop()
    d.start()  # the file it left is one the daemon starts with


def test_settings_cli_refuses_bad_values_and_still_starts(tmp_path: Path) -> None:
    cli = cli_of(tmp_path / "data")
    cli.ok("settings", "max_attempts", "3")
    before = snapshot(cli.data_dir)
    for key, value in [("connections", "0"), ("max_concurrent_tasks", "0"),
                       ("username", "two\nlines"), ("schedule", "22:00-30:00")]:
        code, err, _ = cli_error(cli, "settings", key, value)
        assert code == 2 and err["errorCode"] == "CONFIG_INVALID", err
        assert err["itemId"] == key and key in err["errorMessage"], err
        assert repr(value) in err["errorMessage"], err
        assert snapshot(cli.data_dir) == before
    assert cli.ok("settings", "max_attempts")[-1]["settings"] == {"max_attempts": 3}
    cli.ok("status")


async def test_settings_round_trip_through_the_config_file(tmp_path: Path) -> None:
    """Awkward but valid values: written as valid TOML, read back equal by the CLI and daemon."""
    cli = cli_of(tmp_path / "data")
    name = "qa \"quoted\" \\ back\\slash # no comment = 'single' ünïcødé 🎮"
    library = tmp_path / 'games with spaces' / 'a"b' / "c#d [x]"
    cli.ok("settings", "username", name)
    cli.ok("settings", "library_dir", str(library))
    cli.ok("settings", "schedule", "22:00-06:00; sat,sun 00:00-24:00")
    cli.ok("settings", "connections", "64")
    cli.ok("settings", "use_keyring", "false")
    expected = {"username": name, "library_dir": str(library),
                "schedule": ["22:00-06:00", "sat,sun 00:00-24:00"], "connections": 64,
                "use_keyring": False}
    config = cli.data_dir / "config.toml"
    assert tomllib.loads(config.read_text(encoding="utf-8")) == expected
    assert config.stat().st_mode & 0o077 == 0
    assert leftovers(cli.data_dir) == []

    d = DaemonProcess(cli.data_dir, NO_BACKEND, tmp_path / "daemon.log")
    info = d.start()
    try:
        async with DaemonClient(info) as client:
            shown = (await client.call("settings"))["settings"]
            for key, value in expected.items():
                assert shown[key] == value, (key, shown[key])
            await client.call("settings", {"key": "max_concurrent_tasks", "value": 16})
            await client.call("settings", {"key": "stall_timeout_s", "value": 2.5})
            await client.call("settings", {"key": "keep_free_bytes", "value": 1 << 62})
            await client.call("settings", {"key": "global_limit_bps", "value": 123_456})
            await client.call("schedule", {"windows": ["mon-fri 01:00-05:00"]})
            status = await client.call("status")
            assert status["globalLimitBps"] == 123_456
            assert status["schedule"] == ["mon-fri 01:00-05:00"]
    finally:
        d.stop()
    expected |= {"max_concurrent_tasks": 16, "stall_timeout_s": 2.5, "keep_free_bytes": 1 << 62,
                 "global_limit_bps": 123_456, "schedule": ["mon-fri 01:00-05:00"]}
    assert tomllib.loads(config.read_text(encoding="utf-8")) == expected
    shown = cli.ok("settings")[-1]["settings"]  # the CLI starts on it, in-process this time
    for key, value in expected.items():
        assert shown[key] == value, (key, shown[key])
    cli.ok("settings", "global_limit_bps", "--unset")
    assert "global_limit_bps" not in tomllib.loads(config.read_text(encoding="utf-8"))
    d.start()  # and so does the daemon
    d.stop()


# -- 2. control API params ----------------------------------------------------------------------


async def test_control_api_refuses_bad_ids_and_out_of_range_numbers(daemon: Any,
                                                                     tmp_path: Path) -> None:
    d, info = daemon
    async with DaemonClient(info) as client:
        await client.call("offline", {"enabled": True})  # queued tasks stay queued
        bad: list[tuple[str, dict[str, Any], str]] = [
            ("install", {"productId": "../../etc"}, "productId"),
            ("install", {"productId": ""}, "productId"),
            ("install", {"productId": "a" * 129}, "productId"),
            ("install", {"productId": "nul\x00"}, "productId"),
            ("install", {"productId": PRODUCT, "versionId": "../1.0"}, "versionId"),
            ("install", {"productId": PRODUCT, "priority": 10**30}, "priority"),
            ("install", {"productId": PRODUCT, "priority": 1001}, "priority"),
            ("install", {"productId": PRODUCT, "priority": -1001}, "priority"),
            ("install", {"productId": PRODUCT, "limitBps": 10**30}, "limitBps"),
            ("install", {"productId": PRODUCT, "limitBps": 0}, "limitBps"),
            ("install", {"productId": PRODUCT, "target": "/tmp/a\x00b"}, "target"),
            ("install", {"productId": PRODUCT, "target": "/tmp/a\nb"}, "target"),
            ("update", {"productId": "../x"}, "productId"),
            ("update", {"productId": PRODUCT, "priority": 2**63}, "priority"),
            ("verify", {"productId": "/etc/passwd"}, "productId"),
            ("rollback", {"productId": ".."}, "productId"),
            ("repair", {"productId": "a/b"}, "productId"),
            ("uninstall", {"productId": "../../etc"}, "productId"),
            ("moveInstall", {"productId": "..", "folder": str(tmp_path)}, "productId"),
            ("pause", {"taskId": "../../x"}, "taskId"),
            ("task", {"taskId": "x y"}, "taskId"),
            ("limit", {"bps": 2**63}, "bps"),
            ("limit", {"bps": -1}, "bps"),
            ("limit", {"taskId": "../x", "bps": 100}, "taskId"),
        ]
        for method, params, field in bad:
            err = await refused(client, method, params)
            assert err.code == "INVALID_PARAMS", (method, params, err)
            assert field in err.message and err.item == field, err.message
            assert len(err.message) < 500
        assert await client.call("tasks", {"all": True}) == []  # nothing reached the queue

        task = await client.call("install", {"productId": PRODUCT, "priority": 1000,
                                             "limitBps": 2**63 - 1})
        tid = task["taskId"]
        assert task["priority"] == 1000 and task["limitBps"] == 2**63 - 1
        for method, params, field in [
            ("priority", {"taskId": tid, "priority": 10**30}, "priority"),
            ("priority", {"taskId": tid, "priority": -1001}, "priority"),
            ("move", {"taskId": tid, "position": -1}, "position"),
            ("move", {"taskId": tid, "position": 2**63}, "position"),
            ("limit", {"taskId": tid, "bps": 10**19}, "bps"),
        ]:
            err = await refused(client, method, params)
            assert err.code == "INVALID_PARAMS" and err.item == field, (method, params, err)
        assert (await client.call("priority", {"taskId": tid, "priority": -1000}))["priority"] == -1000
        moved = await client.call("move", {"taskId": tid, "position": 2**63 - 1})
        assert [t["taskId"] for t in moved] == [tid]
        assert (await client.call("task", {"taskId": tid}))["priority"] == -1000

        # the CLI through the same daemon: a usage error (exit 2) with a JSON error line
        cli = cli_of(d.data_dir)
        code, err_line, _ = cli_error(cli, "install", "../../etc")
        assert code == 2 and err_line["errorCode"] == "INVALID_PARAMS", err_line
        code, err_line, _ = cli_error(cli, "queue", "priority", tid, str(10**30))
        assert code == 2 and err_line["errorCode"] == "INVALID_PARAMS", err_line
        assert (await client.call("ping"))["pong"] is True
    assert d.alive


# -- 3. malformed messages ------------------------------------------------------------------------


async def test_malformed_messages_get_error_replies_and_the_connection_stays(daemon: Any) -> None:
    d, info = daemon
    deep_list = "[" * 800 + "]" * 800
    cases: list[tuple[str | bytes, str]] = [
        ("[" * 60_000, "PARSE_ERROR"),  # was a RecursionError: connection closed with 1011
        ("[" * 30_000 + "]" * 30_000, "PARSE_ERROR"),
        ('{"a":' * 10_000 + "1" + "}" * 10_000, "PARSE_ERROR"),
        ('{"id": 1, "method": "ping", "params": {"x": NaN}}', "PARSE_ERROR"),
        ('{"id": 1, "method": "ping", "params": {"x": -Infinity}}', "PARSE_ERROR"),
        ('{"id": 1, "method": "ping", "params": {"x": 1e999}}', "PARSE_ERROR"),
        ("9" * 5000, "PARSE_ERROR"),
        ('{"id": 1, "method": "ping", "params": {"x": ' + "9" * 5000 + "}}", "PARSE_ERROR"),
        (b"\xff\xfe{}", "PARSE_ERROR"),
        ("", "PARSE_ERROR"),
        ("42", "INVALID_REQUEST"),
        ('"ping"', "INVALID_REQUEST"),
        ("null", "INVALID_REQUEST"),
        ("true", "INVALID_REQUEST"),
        ('[{"id": 1, "method": "ping"}]', "INVALID_REQUEST"),
        ('{"id": ' + deep_list + ', "method": 5}', "INVALID_REQUEST"),
        ('{"id": true, "method": "ping"}', "INVALID_REQUEST"),
        ('{"id": 1.5, "method": "ping"}', "INVALID_REQUEST"),
        ('{"id": 2, "method": ["ping"]}', "INVALID_REQUEST"),
        ('{"id": 3, "method": "ping", "params": [1, 2]}', "INVALID_PARAMS"),
        ('{"id": 4, "method": "settings", "params": {"key": "connections", "value": '
         + deep_list + "}}", "CONFIG_INVALID"),
        ('{"id": 5, "method": "priority", "params": {"taskId": "x", "priority": 1e300}}',
         "INVALID_PARAMS"),
        ('{"id": 6, "method": "' + "m" * 60_000 + '"}', "UNKNOWN_METHOD"),
        ('{"id": 7, "method": "wait", "params": {"taskId": "../x"}}', "INVALID_PARAMS"),
        ('{"id": 8, "method": "subscribe", "params": {"taskId": 5}}', "INVALID_PARAMS"),
    ]
    async with raw_session(info) as ws, DaemonClient(info) as other:
        for message, code in cases:
            reply = await ask(ws, message)
            assert reply.get("error", {}).get("code") == code, (str(message)[:80], reply)
            assert len(json.dumps(reply)) < 1000, reply
            await ping_ok(ws)  # the same connection goes on
        big_id = 123456789012345678901234567890
        assert await ask(ws, json.dumps({"id": big_id, "method": "ping"})) == {
            "id": big_id, "result": {"pong": True, "protocol": 1}}
        assert ws.close_code is None
        assert (await other.call("ping"))["pong"] is True  # another session never noticed
    assert d.alive


# -- 4. the token: header only ----------------------------------------------------------------


async def test_token_is_taken_from_the_header_only(daemon: Any) -> None:
    d, info = daemon
    header = {"Authorization": f"Bearer {info.token}"}
    for url, headers in [(f"{info.url}?token={info.token}", {}),  # used to be accepted
                         (f"{info.url}?token={info.token}", header),  # refused even with it
                         (f"{info.url}?x=1&token=", header),
                         (info.url, {"Authorization": info.token}),  # not "Bearer ..."
                         (info.url, {"Authorization": "Bearer " + info.token[:-1] + "é"})]:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url, additional_headers=headers):
                pass
        assert caught.value.response.status_code == 401, url
    assert "token" not in info.url
    async with DaemonClient(info) as client:  # the client sends the header: still works
        assert (await client.call("ping"))["pong"] is True
    async with connect(f"{info.url}?client=qa", additional_headers=header) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
    assert d.alive


# -- 5. a full (or read-only) data disk ------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs root: mount)."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the disk-full paths are not exercised")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); "
                    "the disk-full paths are not exercised")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(mount_point: Path) -> Path:
    """Write a file until the filesystem is full; deleting it frees the space again."""
    filler = mount_point / "filler"
    with filler.open("wb", buffering=0) as fh:
        for size in (64 * 1024, 4096):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def test_full_disk_cli_reports_insufficient_disk_space(small_fs: Path) -> None:
    cli = cli_of(small_fs / "data")
    filler = fill(small_fs)
    # a fresh data dir on a full disk: the state database cannot even be created
    for args in (("status",), ("settings", "connections", "3")):
        code, err, stderr = cli_error(cli, *args)
        assert code == 5 and err["errorCode"] == "INSUFFICIENT_DISK_SPACE", (args, err)
        assert "error: INSUFFICIENT_DISK_SPACE" in stderr

    filler.unlink()
    cli.ok("settings", "connections", "2")
    before = snapshot(cli.data_dir)
    filler = fill(small_fs)
    # an existing data dir: a state write (queueing a task) and a config write
    code, err, _ = cli_error(cli, "install", PRODUCT, "--no-wait")
    assert code == 5 and err["errorCode"] == "INSUFFICIENT_DISK_SPACE", err
    code, err, _ = cli_error(cli, "settings", "connections", "3")
    assert code == 5 and err["errorCode"] == "INSUFFICIENT_DISK_SPACE", err
    assert snapshot(cli.data_dir) == before
    code, err, _ = cli_error(cli, "serve")  # the daemon cannot start: said so, no traceback
    assert code == 5 and err["errorCode"] == "INSUFFICIENT_DISK_SPACE", err

    filler.unlink()  # space again: everything works, nothing was left half-written
    assert cli.ok("install", PRODUCT, "--no-wait")[-1]["result"] == "queued"
    assert cli.ok("settings", "connections")[-1]["settings"] == {"connections": 2}
    assert leftovers(cli.data_dir) == []


async def test_full_disk_daemon_answers_insufficient_disk_space(small_fs: Path,
                                                                tmp_path: Path) -> None:
    d = DaemonProcess(small_fs / "data", NO_BACKEND, tmp_path / "daemon.log")
    info = d.start()
    try:
        async with DaemonClient(info) as client:
            await client.call("offline", {"enabled": True})
            await client.call("settings", {"key": "connections", "value": 2})
            before = snapshot(d.data_dir)
            filler = fill(small_fs)
            for method, params in [("install", {"productId": PRODUCT}),
                                   ("settings", {"key": "connections", "value": 3})]:
                err = await refused(client, method, params)
                assert err.code == "INSUFFICIENT_DISK_SPACE", (method, err)
            assert snapshot(d.data_dir) == before
            assert (await client.call("ping"))["pong"] is True
            filler.unlink()
            assert (await client.call("install", {"productId": PRODUCT}))["status"] == "queued"
        assert d.alive
    finally:
        d.stop()


def test_read_only_data_dir_reports_io_error(small_fs: Path) -> None:
    cli = cli_of(small_fs / "data")
    cli.ok("settings", "connections", "2")
    done = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only: {done.stderr.strip()}")
    code, err, _ = cli_error(cli, "install", PRODUCT, "--no-wait")
    assert code == 12 and err["errorCode"] == "IO_ERROR", err
