"""What an in-process command's start leaves out (issue 13, first byte, session 21): httpx (the
backend client is on aiohttp, which the CDN needs anyway), the update machinery, the store's
jobs, sqlite-utils' plugin scan and, where keyring's answer is known without it, keyring —
and that what replaced httpx behaves as it did (query values, redirects not followed), and
the keyring shortcut chooses what keyring itself chooses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from aiohttp import web

from engine.core.errors import EngineError, ErrorCode
from engine.io.backend_client import BackendClient, query_pairs
from engine.jobs.install import PIPELINE as PIPELINE_MODULES
from testing.processes import REPO, subprocess_env

# aiohttp (the general range client's, made when a range first needs it) and fastcdc with click
# (chunking: only updates and publishing) cost 0.1-0.4 s of every install's first byte
LEFT_OUT = ("httpx", "engine.jobs.update", "engine.jobs.store", "engine.jobs.uninstall",
            "engine.jobs.move", "keyring", "engine.core.updateplan", "patcher.delta", "aiohttp",
            "fastcdc", "click",
            # session 25: remote downloads' and saves' rules, uuid (with platform), ctypes (the
            # allocator's cap, set with the pipeline)
            "engine.core.remote", "engine.core.savesync", "uuid", "ctypes")
# an install's block pipeline (manifest decode, planner, downloads): imported beside its grant,
# never by a command that runs no task
PIPELINE = (*PIPELINE_MODULES, "patcher.deltaindex", "engine.jobs.play", "engine.jobs.agent")


def _run(script: str, env: dict[str, str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_in_process_status_imports_only_what_starting_needs(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from engine.cli.main import main\n"
        f"code = main(['--data', {str(tmp_path / 'data')!r}, '--backend', 'http://127.0.0.1:9',"
        " 'status'])\n"
        f"print(code, sorted(m for m in {LEFT_OUT + PIPELINE!r} if m in sys.modules),"
        " 'engine.jobs.engine' in sys.modules)\n"
    )
    env = subprocess_env()  # keyring's fail backend, as every test engine
    assert _run(script, env)[-1] == "0 [] True"


def test_keyring_detection_chooses_what_keyring_chooses() -> None:
    """Without a forced backend the engine's check (which keeps the macOS backend from probing
    elsewhere) answers what keyring's own detection answers in a clean process; with keyring's
    fail backend forced, it answers "unusable" without importing keyring."""
    env = subprocess_env()
    env.pop("PYTHON_KEYRING_BACKEND", None)
    plain = _run("import keyring\nfrom keyring.backends import fail\n"
                 "k = keyring.get_keyring()\n"
                 "print(not isinstance(k, fail.Keyring) and (type(k).__name__ != 'ChainerBackend'"
                 " or bool(getattr(k, 'backends', None))))\n", env)[-1]
    ours = _run("import sys\nfrom engine.io.credentials import _keyring_usable\n"
                "print(_keyring_usable())\n"
                "print(sys.platform == 'darwin' or sys.modules.get('keyring.backends.macOS.api',"
                " 'absent') is None)\n", env)
    assert ours == [plain, "True"]
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    forced = _run("import sys\nfrom engine.io.credentials import _keyring_usable\n"
                  "print(_keyring_usable(), 'keyring' in sys.modules)\n", env)
    assert forced == ["False False"]



def test_tokens_in_the_file_are_read_without_keyring_detection(tmp_path: Path) -> None:
    """A session kept in the 0600 file for this backend (no keyring when it was written: every
    keyring write removes the file, so it holds the last value written) is read without loading
    keyring; a file another backend wrote, or an older engine (naming none), comes after this
    backend's keyring entry, as before; with no file, keyring is asked (here its fail backend:
    nothing stored, the file written, naming its backend)."""
    env = subprocess_env()
    env.pop("PYTHON_KEYRING_BACKEND", None)  # detection would run if anything asked for it
    url = "http://127.0.0.1:9"
    load = ("import sys\nfrom pathlib import Path\n"
            "from engine.io.credentials import CredentialStore\n"
            f"s = CredentialStore(Path({str(tmp_path)!r}), {url!r})\n"
            "print(s.load(), 'keyring' in sys.modules)\n")
    (tmp_path / "credentials").write_text(f"refresh-1\naccount {url}\n")
    assert _run(load, env)[-1] == "refresh-1 False"
    for other in ("refresh-1\naccount http://other.example\n", "refresh-1"):
        (tmp_path / "credentials").write_text(other)
        assert _run(load, env)[-1].endswith(" True")  # this backend's keyring entry first
    (tmp_path / "credentials").unlink()
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    script = ("from pathlib import Path\n"
              "from engine.io.credentials import CredentialStore\n"
              f"s = CredentialStore(Path({str(tmp_path)!r}), {url!r})\n"
              "print(s.load(), s.use_keyring)\ns.save('refresh-2')\n")
    assert _run(script, env)[-1] == "None False"
    assert (tmp_path / "credentials").read_text() == f"refresh-2\naccount {url}\n"


@pytest.mark.parametrize("params", [
    {"page": 1, "limit": 100},
    {"product_id": "star courier/ü&x"},
    {"flag": True, "off": False, "none": None, "ratio": 0.5},
    {"ids": ["a", "b"], "n": 3},
])
def test_query_values_are_written_as_httpx_wrote_them(params: dict[str, object]) -> None:
    assert urlencode(query_pairs(params) or []) == str(httpx.QueryParams(params))  # type: ignore[arg-type]


async def test_redirects_are_not_followed_and_answers_are_read(unused_tcp_port: int) -> None:
    hits: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        raise web.HTTPFound("/api/v1/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        return web.json_response({"followed": True})

    async def doc(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        return web.json_response({"got": dict(request.query),
                                  "body": await request.json() if request.can_read_body else None})

    async def missing(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        return web.json_response({"errors": [{"code": "PRODUCT_NOT_FOUND", "detail": "no such"}]},
                                 status=404)

    app = web.Application()
    app.router.add_get("/api/v1/moved", moved)
    app.router.add_get("/api/v1/elsewhere", elsewhere)
    app.router.add_post("/api/v1/doc", doc)
    app.router.add_get("/api/v1/missing", missing)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    client = BackendClient(f"http://127.0.0.1:{unused_tcp_port}/")
    try:
        with pytest.raises(EngineError) as moved_error:
            await client.call("GET", "/api/v1/moved", auth=False)
        assert moved_error.value.code == ErrorCode.BACKEND_ERROR  # the 302's body, not JSON
        assert hits == ["/api/v1/moved"]
        answer = await client.call("POST", "/api/v1/doc", auth=False, params={"page": 2},
                                   json={"a": [1, "ü"]})
        assert answer == {"got": {"page": "2"}, "body": {"a": [1, "ü"]}}
        with pytest.raises(EngineError) as missing_error:
            await client.call("GET", "/api/v1/missing", auth=False)
        assert missing_error.value.code == ErrorCode.PRODUCT_NOT_FOUND
        assert missing_error.value.http_status == 404
        with pytest.raises(EngineError) as auth_error:  # no token: refused before any request
            await client.call("GET", "/api/v1/missing")
        assert auth_error.value.code == ErrorCode.AUTH_REQUIRED
    finally:
        await client.aclose()
        await runner.cleanup()
    assert json.dumps(hits) == json.dumps(["/api/v1/moved", "/api/v1/doc?page=2",
                                           "/api/v1/missing"])


async def test_unreachable_backend_is_backend_unreachable(unused_tcp_port: int) -> None:
    client = BackendClient(f"http://127.0.0.1:{unused_tcp_port}", timeout=5)
    try:
        with pytest.raises(EngineError) as error:
            await client.call("GET", "/api/v1/anything", auth=False)
        assert error.value.code == ErrorCode.BACKEND_UNREACHABLE
    finally:
        await client.aclose()


@pytest.mark.parametrize("argv", [
    ["install", "star-courier", "--version", "1.0.0", "--target", "/tmp/x", "--limit", "20M"],
    ["--data", "/tmp/d", "--backend", "http://h:1", "--json", "-v", "install", "g", "--no-wait"],
    ["--data=/tmp/d", "status", "--json"],
    ["--verbose", "queue", "list"],
    ["wishlist", "add", "g", "3"],
    ["family", "remove", "u1", "--data", "/tmp/e"],
])
def test_a_command_alone_parses_as_the_whole_parser_does(argv: list[str]) -> None:
    from engine.cli.main import build_parser, command_named

    only = command_named(argv)
    assert only == next(a for a in argv if a in ("install", "status", "queue", "wishlist",
                                                  "family"))
    assert vars(build_parser(only).parse_args(argv)) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [
    [], ["--help"], ["--version"], ["--dat", "/tmp/d", "status"], ["--data"],
    ["--data", "--json", "status"], ["bogus"], ["-vj", "status"], ["--data", "status"],
])
def test_anything_unusual_gets_the_whole_parser(argv: list[str]) -> None:
    from engine.cli.main import command_named

    assert command_named(argv) is None


def test_each_commands_help_is_the_same_alone() -> None:
    import argparse

    from engine.cli.main import CLI, build_parser

    def sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        found: argparse.ArgumentParser = action.choices[name]
        return found

    whole = build_parser()
    for spec in CLI:
        assert sub(build_parser(spec.name), spec.name).format_help() == \
            sub(whole, spec.name).format_help(), spec.name


async def test_a_channels_token_refresh_failure_is_translated(unused_tcp_port: int) -> None:
    """``access_token`` (the library channel's) refreshes outside ``call``: a backend that is
    not there is BACKEND_UNREACHABLE there too, not aiohttp's own exception."""
    client = BackendClient(f"http://127.0.0.1:{unused_tcp_port}", refresh_token="r", timeout=5)
    try:
        with pytest.raises(EngineError) as error:
            await client.access_token()
        assert error.value.code == ErrorCode.BACKEND_UNREACHABLE
        assert client.logged_in  # the refresh token is kept: the backend never refused it
    finally:
        await client.aclose()


async def test_a_stored_access_token_spares_the_refresh_until_refused(
        tmp_path: Path, unused_tcp_port: int) -> None:
    """The session store keeps the access token beside the refresh token: a new process uses
    it without a refresh round trip while it lives; one the backend refuses (401) is dropped and
    the refresh token asked for a new one, which is stored; an expired one is not used; a
    logout removes both; the single-line file older versions wrote is a refresh token."""
    from engine.io.credentials import CredentialStore

    refreshes: list[str] = []
    valid: set[str] = set()

    async def refresh(request: web.Request) -> web.Response:
        old = (await request.json())["refreshToken"]
        refreshes.append(old)
        access = f"a{len(refreshes)}"
        valid.add(access)
        return web.json_response({"data": {"attributes": {
            "accessToken": access, "refreshToken": f"r{len(refreshes) + 1}", "expiresIn": 900}}})

    async def mine(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in valid:
            return web.json_response({"errors": [{"code": "AUTH_REQUIRED"}]}, status=401)
        return web.json_response({"token": token})

    app = web.Application()
    app.router.add_post("/api/v1/auth/refresh", refresh)
    app.router.add_get("/api/v1/mine", mine)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    url = f"http://127.0.0.1:{unused_tcp_port}"

    async def one_process() -> tuple[str, CredentialStore]:
        store = CredentialStore(tmp_path, url, use_keyring=False)
        client = BackendClient(url, refresh_token=store.load(), save_refresh_token=store.save,
                               access_token=store.access(), save_access_token=store.save_access)
        try:
            return (await client.call("GET", "/api/v1/mine"))["token"], store
        finally:
            await client.aclose()

    try:
        (tmp_path / "credentials").write_text("r1")  # as older versions wrote it
        assert await one_process() and refreshes == ["r1"]
        token, store = await one_process()  # the stored access token: no refresh
        assert (token, refreshes) == ("a1", ["r1"])
        valid.clear()  # the backend no longer takes it: refused, refreshed once, stored
        token, store = await one_process()
        assert (token, refreshes) == ("a2", ["r1", "r2"])
        # the refresh token alone, as older engines read it (a launcher rolled back stays
        # logged in); the access token in its own entry, tagged with its refresh token
        assert (tmp_path / "credentials").read_text().splitlines()[0] == "r3"
        assert (tmp_path / "credentials-access").read_text().split()[0] == "a2"
        for name in ("credentials", "credentials-access"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
        # an access token another session left (an older engine logged in again: it knows
        # nothing of this entry) is never used
        (tmp_path / "credentials").write_text("r3-other-session")
        other = CredentialStore(tmp_path, url, use_keyring=False)
        assert other.load() == "r3-other-session" and other.access() is None
        (tmp_path / "credentials").write_text("r3")
        store.save_access("a2", 1.0)  # expired: never sent
        token, store = await one_process()
        assert (token, refreshes) == ("a3", ["r1", "r2", "r3"])
        store.save(None)  # logout
        assert not (tmp_path / "credentials").exists()
        assert not (tmp_path / "credentials-access").exists()
        assert CredentialStore(tmp_path, url, use_keyring=False).load() is None
    finally:
        await runner.cleanup()


def test_a_current_state_database_is_opened_without_creating_tables(tmp_path: Path) -> None:
    """Opening the engine's database skips sqlite-utils' table creation when the schema is
    current and whole; a missing table is still created, a newer engine's database still
    refused."""
    import sqlite3

    from engine.io.state import State

    State(tmp_path).close()
    state = State(tmp_path)
    assert state._current()
    state.db.execute("DROP TABLE file_done")
    assert not state._current()
    state.close()
    state = State(tmp_path)  # the missing table is made again
    assert state._current() and state.done_files("t") == set()
    state.db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    state.close()
    with pytest.raises(EngineError) as newer:
        State(tmp_path)
    assert newer.value.code == ErrorCode.CONFIG_INVALID
    with sqlite3.connect(tmp_path / "state.sqlite") as conn:
        conn.execute("DROP TABLE meta")
    assert State(tmp_path)._current()  # no meta table: a new database, created whole


def test_new_ids_have_uuid4s_form() -> None:
    """Task and device ids, made without importing uuid, are what ``uuid.uuid4().hex`` made."""
    import uuid

    from engine.io.state import new_id

    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for i in ids:
        u = uuid.UUID(hex=i)
        assert u.hex == i and u.version == 4 and u.variant == uuid.RFC_4122
