"""The sync agent end to end: real backend on loopback, real engine subprocesses (two data
dirs of one user acting as two devices), real games (the demo game, or a scripted stand-in
written over it) started from the manifest's launch entry, real kill -9.

Covered: playtime sessions reach the backend (also after an outage, and closed at the last
heartbeat when the engine is killed), saves move between devices, conflicts never overwrite
(resolution both ways; every version recoverable), clock skew decides nothing, a game's
children are tracked, the local game API needs the launch token, achievements unlocked twice
arrive once, downloads pause while a game runs, uninstall reaches the backend, refusals."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from testing.daemon import DaemonProcess
from testing.enginekit import EngineCli
from testing.faultproxy import Fault, FaultProxy

PRODUCT = "tiny-tactics"

# A stand-in game: does what ``game-spec.json`` beside it says (play time, a child process
# that outlives it, calls to the launcher's local API, a save's content, its exit code).
SCRIPTED_GAME = textwrap.dedent('''\
    #!/usr/bin/env python3
    import json, os, subprocess, sys, time, urllib.request
    here = os.path.dirname(os.path.abspath(__file__))
    spec = json.load(open(os.path.join(here, "game-spec.json")))

    def call(path, body=None, token=None):
        req = urllib.request.Request(os.environ["LAUNCHER_API_URL"] + path,
                                     data=json.dumps(body or {}).encode(), method="POST")
        req.add_header("Authorization", "Bearer " + (token or os.environ["LAUNCHER_API_TOKEN"]))
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    json.dump({"GAME_LAUNCHED_BY": os.environ.get("GAME_LAUNCHED_BY"), "argv": sys.argv[1:],
               "cwd": os.getcwd()}, open(os.path.join(here, "launch-env.json"), "w"))
    results = [call(path, body) for path, body in spec.get("api", [])]
    if spec.get("api"):
        results.append(call("/v1/saves/sync", token="not-the-token"))
    json.dump(results, open(os.path.join(here, "api-results.json"), "w"))
    if "save" in spec:
        os.makedirs("saves", exist_ok=True)
        open("saves/slot1.sav", "w").write(spec["save"])
    if spec.get("child_seconds"):
        subprocess.Popen([sys.executable, "-c",
                          "import time; time.sleep(%f)" % spec["child_seconds"]])
    time.sleep(spec.get("seconds", 0))
    sys.exit(spec.get("exit", 0))
''')


def install(cli: EngineCli, target: Path, product: str = PRODUCT) -> Path:
    cli.ok("install", product, "--target", str(target))
    return target


def script_game(folder: Path, **spec: Any) -> None:
    (folder / "game.py").write_text(SCRIPTED_GAME)
    (folder / "game.py").chmod(0o755)
    (folder / "game-spec.json").write_text(json.dumps(spec))


def result(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The final JSON line of a command (its result or its error)."""
    assert lines, "no JSON output"
    return lines[-1]


def backend_playtime(backend: Any, token: str, product: str = PRODUCT) -> int:
    with backend.client(token) as c:
        rows = c.get("/api/v1/library/playtime/summary").json()["data"]
    return next((int(r["attributes"]["total_playtime_seconds"]) for r in rows
                 if r["attributes"]["product_id"] == product), 0)


def save_versions(backend: Any, token: str, product: str = PRODUCT) -> list[dict[str, Any]]:
    with backend.client(token) as c:
        slots = c.get("/api/v1/library/savegames", params={"product_id": product}).json()["data"]
    return [v["attributes"] for s in slots for v in s["attributes"]["versions"]]


@pytest.fixture
def devices(backend: Any, tmp_path: Path) -> tuple[EngineCli, EngineCli, str]:
    name, token = backend.new_user(products=["star-courier", PRODUCT])
    a = EngineCli(tmp_path / "device-a", backend.url)
    b = EngineCli(tmp_path / "device-b", backend.url)
    for cli in (a, b):
        cli.login(name, "secret-pw")
        cli.ok("settings", "heartbeat_interval_s", "0.2")
    return a, b, token


def test_play_on_two_devices_moves_saves_and_counts_playtime(backend: Any, tmp_path: Path,
                                                            devices: Any) -> None:
    a, b, token = devices
    game_a = install(a, tmp_path / "a" / PRODUCT)
    game_b = install(b, tmp_path / "b" / PRODUCT)
    # device A plays the real demo game (its manifest's launch entry: 1 s of play)
    r = result(a.ok("launch", PRODUCT))
    game = r["game"]
    assert r["result"] == "exited" and game["exitCode"] == 0 and not game["crashed"]
    # the save and the game's settings file (declared as a second save location) went up
    assert game["savesAfter"]["uploaded"] == ["install:saves%2Fslot1.sav",
                                              "install:settings%2Fplayer.ini"]
    assert 0.9 <= game["seconds"] < 10
    save_a = json.loads((game_a / "saves" / "slot1.sav").read_text())
    assert save_a["counter"] == 1
    # the session reached the backend (the in-process engine replays its journal as it ends)
    assert backend_playtime(backend, token) >= 1
    # and the demo game reported its achievement through the launcher's local API
    with backend.client(token) as c:
        status = c.get(f"/api/v1/library/achievements/status/{PRODUCT}").json()["data"]
    assert next(s for s in status if s["id"] == "first-battle")["attributes"]["is_unlocked"]
    # device B: the cloud save arrives before its game starts, so B continues A's game
    (game_a / "settings" / "player.ini").write_text("[audio]\nvolume = 15\n")  # A's choice
    r = result(b.ok("launch", PRODUCT))
    assert r["game"]["savesBefore"]["downloaded"] == ["install:saves%2Fslot1.sav",
                                                      "install:settings%2Fplayer.ini"]
    assert json.loads((game_b / "saves" / "slot1.sav").read_text())["counter"] == 2
    # and A gets B's progress next time
    r = result(a.ok("launch", PRODUCT))
    assert r["game"]["savesBefore"]["downloaded"] == ["install:saves%2Fslot1.sav"]
    assert r["game"]["savesBefore"]["uploaded"] == ["install:settings%2Fplayer.ini"]
    assert json.loads((game_a / "saves" / "slot1.sav").read_text())["counter"] == 3
    result(b.ok("saves", PRODUCT, "sync"))  # B gets A's settings
    assert (game_b / "settings" / "player.ini").read_text() == "[audio]\nvolume = 15\n"
    lines = a.ok("playtime", PRODUCT)
    rows = next(line["playtime"] for line in lines if "playtime" in line)
    assert len(rows[0]["sessions"]) == 2 and rows[0]["pendingCalls"] == 0
    assert rows[0]["serverSeconds"] >= int(rows[0]["localSeconds"]) - 1  # both devices count
    assert len(save_versions(backend, token)) == 3 + 2  # every state of both slots kept


def test_conflicts_never_overwrite_and_resolve_both_ways(backend: Any, tmp_path: Path,
                                                         devices: Any) -> None:
    a, b, token = devices
    game_a = install(a, tmp_path / "a" / PRODUCT)
    game_b = install(b, tmp_path / "b" / PRODUCT)
    save_a, save_b = game_a / "saves" / "slot1.sav", game_b / "saves" / "slot1.sav"
    save_a.parent.mkdir()
    save_a.write_text("from A, first")
    assert result(a.ok("saves", PRODUCT, "sync"))["saves"]["uploaded"]
    assert result(b.ok("saves", PRODUCT, "sync"))["saves"]["downloaded"]
    assert save_b.read_text() == "from A, first"
    # clock skew: A's file an hour in the future, B's an hour in the past: nothing moves
    future, past = time.time() + 3600, time.time() - 3600
    os.utime(save_a, (future, future))
    os.utime(save_b, (past, past))
    for cli in (a, b):
        report = result(cli.ok("saves", PRODUCT, "sync"))["saves"]
        assert not report["uploaded"] and not report["downloaded"] and report["inSync"] == 1
    # both play offline: both change the save
    save_a.write_text("from A, second")
    save_b.write_text("from B, second")
    assert result(a.ok("saves", PRODUCT, "sync"))["saves"]["uploaded"]
    code, lines, _ = b.run("saves", PRODUCT, "sync")
    assert code != 0 and result(lines)["saves"]["conflicts"] == ["install:saves%2Fslot1.sav"]
    assert save_b.read_text() == "from B, second"  # untouched
    code, lines, _ = b.run("launch", PRODUCT)  # a launch is refused too: nothing starts
    assert code != 0 and result(lines)["error"]["errorCode"] == "SAVEGAME_VERSION_CONFLICT"
    assert save_b.read_text() == "from B, second"
    # B keeps the cloud's: its own copy goes to a backup set first
    report = result(b.ok("saves", PRODUCT, "resolve", "--keep", "cloud"))["saves"]
    assert report["downloaded"] and save_b.read_text() == "from A, second"
    backups = sorted(Path(report["backup"]).iterdir())
    assert [p.read_text() for p in backups] == ["from B, second"]
    # the other way: both change again, A keeps its local copy; B's stays in the cloud's history
    save_a.write_text("from A, third")
    save_b.write_text("from B, third")
    assert result(b.ok("saves", PRODUCT, "sync"))["saves"]["uploaded"]
    code, lines, _ = a.run("saves", PRODUCT, "sync")
    assert code != 0
    assert result(a.ok("saves", PRODUCT, "resolve", "--keep", "local"))["saves"]["uploaded"]
    versions = save_versions(backend, token)
    assert len(versions) == 4
    by_sha = {v["sha256"]: v for v in versions}
    import hashlib
    for text in ("from A, first", "from A, second", "from B, third", "from A, third"):
        assert hashlib.sha256(text.encode()).hexdigest() in by_sha  # every version recoverable
    # restore an older cloud version on B: it becomes the newest, the others stay
    first = by_sha[hashlib.sha256(b"from A, first").hexdigest()]
    old_id = next(v["savegameId"] for line in b.ok("saves", PRODUCT, "list") if "saves" in line
                  for s in line["saves"]["slots"] for v in s["cloudVersions"]
                  if v["version"] == first["version"])
    b.ok("saves", PRODUCT, "restore", "--savegame-id", old_id)
    assert save_b.read_text() == "from A, first"
    assert len(save_versions(backend, token)) == 5


def test_a_scripted_game_children_api_achievements_and_crash(backend: Any, tmp_path: Path,
                                                             devices: Any) -> None:
    a, _, token = devices
    folder = install(a, tmp_path / "a" / PRODUCT)
    script_game(folder, seconds=0.2, child_seconds=1.5, exit=3, save="scripted", api=[
        ["/v1/achievements/first-battle/unlock", {}],
        ["/v1/achievements/first-battle/unlock", {}],
        ["/v1/achievements/no%20such%20id/unlock", {}],
        ["/v1/saves/sync", {}],
    ])
    started = time.monotonic()
    code, lines, err = a.run("launch", PRODUCT)
    elapsed = time.monotonic() - started
    r = result(lines)
    assert r["result"] == "crashed" and r["game"]["exitCode"] == 3, err
    assert code != 0
    assert r["game"]["seconds"] >= 1.4  # the child that outlived the game was waited for
    assert elapsed >= 1.5
    env = json.loads((folder / "launch-env.json").read_text())  # the manifest's launch entry
    assert env == {"GAME_LAUNCHED_BY": "game-launcher", "argv": ["--play-seconds", "1"],
                   "cwd": str(folder)}
    calls = json.loads((folder / "api-results.json").read_text())
    assert calls[0][0] == 200 and calls[0][1]["newlyUnlocked"] is True
    assert calls[1][0] == 200 and calls[1][1]["newlyUnlocked"] is False  # once only
    assert calls[2][0] == 400  # not an achievement id
    assert calls[3][0] == 200 and "saves" in calls[3][1]
    assert calls[4][0] == 401 and calls[4][1]["error"]["code"] == "UNAUTHENTICATED"
    with backend.client(token) as c:
        status = c.get(f"/api/v1/library/achievements/status/{PRODUCT}").json()["data"]
    first = next(s for s in status if s["id"] == "first-battle")
    assert first["attributes"]["is_unlocked"] is True
    rows = next(line["achievements"] for line in a.ok("achievements", PRODUCT)
                if "achievements" in line)
    assert any(r["achievementId"] == "first-battle" and r["is_unlocked"] for r in rows)


def test_playtime_survives_a_backend_outage(backend: Any, tmp_path: Path) -> None:
    name, token = backend.new_user(products=[PRODUCT])
    with FaultProxy(backend.url) as proxy:
        cli = EngineCli(tmp_path / "engine", proxy.url)
        cli.login(name, "secret-pw")
        cli.ok("settings", "heartbeat_interval_s", "0.2")
        folder = install(cli, tmp_path / "game")
        # the game unlocks an achievement while the backend is down
        script_game(folder, seconds=1.0, api=[["/v1/achievements/first-battle/unlock", {}]])
        proxy.set_fault(Fault.HTTP_503)  # the backend is down for everything from now on
        r = result(cli.ok("launch", PRODUCT))
        assert r["game"]["savesBefore"]["offline"] is True  # played anyway
        rows = next(line["playtime"] for line in cli.ok("playtime", PRODUCT) if "playtime" in line)
        assert rows[0]["pendingCalls"] >= 2 and rows[0]["serverSeconds"] is None
        assert backend_playtime(backend, token) == 0
        local = rows[0]["localSeconds"]
        proxy.clear_fault()  # back: the next engine run sends the journal, in order
        rows = next(line["playtime"] for line in cli.ok("playtime", PRODUCT) if "playtime" in line)
    assert rows[0]["pendingCalls"] == 0
    assert backend_playtime(backend, token) == int(local)  # exact: the replayed end time
    with backend.client(token) as c:
        status = c.get(f"/api/v1/library/achievements/status/{PRODUCT}").json()
    first = next(s for s in status["data"] if s["id"] == "first-battle")["attributes"]
    assert first["is_unlocked"] and status["meta"]["unlocked"] == 1  # arrived, once


def test_a_killed_engine_closes_the_session_at_its_last_heartbeat(backend: Any,
                                                                  tmp_path: Path) -> None:
    name, token = backend.new_user(products=[PRODUCT])
    data = tmp_path / "engine"
    cli = EngineCli(data, backend.url)
    cli.login(name, "secret-pw")
    cli.ok("settings", "heartbeat_interval_s", "0.2")
    folder = install(cli, tmp_path / "game")
    script_game(folder, seconds=2.5)
    daemon = DaemonProcess(data, backend.url)
    daemon.start()
    try:
        started = result(cli.ok("launch", PRODUCT, "--no-wait"))
        assert started["result"] == "running"
        time.sleep(1.2)
        daemon.kill(signal.SIGKILL)  # the engine dies; the game plays on
    finally:
        daemon.stop()
    # the game ends unobserved; the session is stale by now (no heartbeat for more than three
    # intervals and a second: 1.6 s)
    time.sleep(2.0)
    rows = next(line["playtime"] for line in cli.ok("playtime", PRODUCT) if "playtime" in line)
    session = rows[0]["sessions"][0]
    assert session["endedAt"] is not None
    assert 0.8 <= session["seconds"] <= 1.8  # to the last heartbeat, not to "now"
    assert rows[0]["pendingCalls"] == 0
    assert 0 <= backend_playtime(backend, token) <= 2


def test_downloads_pause_while_a_game_runs_and_refusals(backend: Any, tmp_path: Path) -> None:
    name, token = backend.new_user(products=["star-courier", PRODUCT])
    data = tmp_path / "engine"
    cli = EngineCli(data, backend.url)
    cli.login(name, "secret-pw")
    code, lines, _ = cli.run("launch", PRODUCT)
    assert code != 0 and result(lines)["error"]["errorCode"] == "NOT_INSTALLED"
    folder = install(cli, tmp_path / "game")
    cli.ok("settings", "gameplay_downloads", "pause")
    code, lines, _ = cli.run("settings", "gameplay_downloads", "sometimes")
    assert code != 0 and "gameplay_downloads" in result(lines)["error"]["errorMessage"]
    script_game(folder, seconds=30.0)
    daemon = DaemonProcess(data, backend.url)
    daemon.start()
    try:
        cli.ok("launch", PRODUCT, "--no-wait")
        code, lines, _ = cli.run("launch", PRODUCT, "--no-wait")
        assert code != 0 and result(lines)["error"]["errorCode"] == "GAME_RUNNING"
        code, lines, _ = cli.run("uninstall", PRODUCT)
        assert code != 0 and result(lines)["error"]["errorCode"] == "GAME_RUNNING"
        task = result(cli.ok("install", "star-courier", "--target", str(tmp_path / "sc"),
                             "--no-wait"))["task"]
        time.sleep(1.5)
        queued = next(t for t in result(cli.ok("queue", "list"))["tasks"]
                      if t["taskId"] == task["taskId"])
        assert queued["status"] == "queued" and queued["downloadedBytes"] == 0
        cli.ok("stop", PRODUCT)  # the player closes the game: downloads go on
        final = result(cli.ok("queue", "list", "--all"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            final = next(t for t in result(cli.ok("queue", "list", "--all"))["tasks"]
                         if t["taskId"] == task["taskId"])
            if final["status"] == "completed":
                break
            time.sleep(0.5)
        assert final["status"] == "completed"
    finally:
        daemon.stop()
    # uninstall reaches the backend's library
    cli.ok("uninstall", PRODUCT)
    with backend.client(token) as c:
        items = {i["attributes"]["product_id"]: i["attributes"]
                 for i in c.get("/api/v1/library/items").json()["data"]}
    assert items[PRODUCT]["installation_status"] == "not_installed"


def test_the_daemon_keeps_games_up_to_date_unless_told_not_to(backend: Any,
                                                              tmp_path: Path) -> None:
    name, _ = backend.new_user(products=[PRODUCT])
    data = tmp_path / "engine"
    cli = EngineCli(data, backend.url)
    cli.login(name, "secret-pw")
    cli.ok("install", PRODUCT, "--version", "1.0.0", "--target", str(tmp_path / "game"))
    cli.ok("settings", "auto_update", "false")
    daemon = DaemonProcess(data, backend.url)
    daemon.start()
    try:
        time.sleep(2.0)  # the daemon's first update check has run by now
        assert result(cli.ok("installed"))["installed"][0]["versionId"] == "1.0.0"
        assert not result(cli.ok("queue", "list"))["tasks"]
    finally:
        daemon.stop()
    cli.ok("settings", "auto_update", "true")
    daemon = DaemonProcess(data, backend.url)
    daemon.start()
    try:
        deadline = time.monotonic() + 60
        version = "1.0.0"
        while time.monotonic() < deadline and version != "1.0.1":
            time.sleep(0.5)
            version = result(cli.ok("installed"))["installed"][0]["versionId"]
        assert version == "1.0.1"
    finally:
        daemon.stop()


def test_changes_made_elsewhere_reach_the_running_engine(backend: Any, tmp_path: Path) -> None:
    """Another device (here: the seed's REST API directly) hides a game and unlocks nothing;
    the daemon of this device hears it on the backend's library channel and tells its clients."""
    from testing.enginekit import read_until

    name, token = backend.new_user(products=[PRODUCT])
    data = tmp_path / "engine"
    cli = EngineCli(data, backend.url)
    cli.login(name, "secret-pw")
    daemon = DaemonProcess(data, backend.url)
    daemon.start()
    events = cli.popen("events")
    watchdog = threading.Timer(60, events.kill)  # readline never blocks past this
    watchdog.start()
    try:
        time.sleep(1.5)  # the daemon's channel to the backend is up by now
        with backend.client(token) as c:
            item = c.get("/api/v1/library/items").json()["data"][0]
            assert c.patch(f"/api/v1/library/items/{item['id']}", json={"data": {
                "type": "libraryItemUpdate", "attributes": {"is_hidden": True}}}).status_code == 200
        seen = read_until(events, lambda line: line.get("type") == "library.item.updated", 30)
        change = seen[-1]["payload"]
        assert change["productId"] == PRODUCT and change["changes"].get("is_hidden") is True
    finally:
        watchdog.cancel()
        events.kill()
        events.communicate()
        daemon.stop()


def test_large_saves_arrive_byte_exact(backend: Any, tmp_path: Path, devices: Any) -> None:
    """Several MB per file: the body arrives in many pieces (a single read would be short)."""
    a, b, _ = devices
    game_a = install(a, tmp_path / "a" / PRODUCT)
    game_b = install(b, tmp_path / "b" / PRODUCT)
    (game_a / "saves").mkdir()
    data = os.urandom(3 * 1024 * 1024 + 17)
    (game_a / "saves" / "big.sav").write_bytes(data)
    assert result(a.ok("saves", PRODUCT, "sync"))["saves"]["uploaded"]
    assert result(b.ok("saves", PRODUCT, "sync"))["saves"]["downloaded"]
    assert (game_b / "saves" / "big.sav").read_bytes() == data


def test_quota_and_size_refusals_are_clear_and_keep_local_saves(backend_factory: Any,
                                                                tmp_path: Path) -> None:
    server = backend_factory(settings={"save_quota_bytes": 4096, "save_max_bytes": 2048})
    name, _ = server.new_user(products=[PRODUCT])
    cli = EngineCli(tmp_path / "engine", server.url)
    cli.login(name, "secret-pw")
    game = install(cli, tmp_path / "game")
    (game / "saves").mkdir()
    big = os.urandom(3000)
    (game / "saves" / "big.sav").write_bytes(big)
    code, lines, _ = cli.run("saves", PRODUCT, "sync")
    error = result(lines)["error"]
    assert code != 0 and error["errorCode"] == "SAVEGAME_FILE_TOO_LARGE", error
    assert (game / "saves" / "big.sav").read_bytes() == big  # nothing local touched
    (game / "saves" / "big.sav").unlink()
    for i in range(3):
        (game / "saves" / f"s{i}.sav").write_bytes(os.urandom(1500))
    code, lines, _ = cli.run("saves", PRODUCT, "sync")
    error = result(lines)["error"]
    assert code != 0 and error["errorCode"] == "USER_QUOTA_EXCEEDED", error
    assert len(list((game / "saves").glob("*.sav"))) == 3
