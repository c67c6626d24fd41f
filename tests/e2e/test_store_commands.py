"""The engine's wishlist and family-sharing commands (``launcher-engine wishlist``, ``family``,
``borrow``) against the real backend on loopback: each command a real CLI subprocess talking to
the engine daemon of its data dir (as the launcher does), the backend's codes
(``GAME_NOT_FOUND_IN_WISHLIST``, ``FAMILY_ACCESS_RESTRICTED``, ...) kept with their exit codes,
and a borrowed game refused before it starts while its owner plays it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import ErrorCode, ExitCode
from engine.io.store_client import SharedGame
from engine.jobs.store import family_refusal
from testing.daemon import DaemonProcess
from testing.enginekit import EngineCli

PLAY = "/api/v1/library/playtime/sessions"


def refused(cli: EngineCli, *args: str) -> tuple[int, dict[str, Any]]:
    """A command that must fail: its exit code and its JSON error line."""
    code, lines, err = cli.run(*args)
    assert code != 0, f"{args} succeeded: {lines[-2:]}"
    assert lines and "error" in lines[-1], err
    return code, lines[-1]["error"]


@pytest.fixture
def logged_in(backend: Any, tmp_path: Path) -> Iterator[Callable[[str, str], EngineCli]]:
    """A daemon per player, logged in; each command a CLI process that goes to it (a quick
    client, not a whole engine per command)."""
    daemons: list[DaemonProcess] = []

    def start(name: str, tag: str) -> EngineCli:
        cli = EngineCli(tmp_path / f"engine-{tag}", backend.url)
        daemon = DaemonProcess(cli.data_dir, backend.url)
        daemons.append(daemon)
        daemon.start()
        cli.login(name, "secret-pw")
        return cli

    yield start
    for d in daemons:
        d.stop()


def shared(game: str, *, borrowed: bool, available: bool) -> SharedGame:
    return SharedGame(game, game.title(), "u1", "mum", available, borrowed, None, "")


def test_the_family_rule_is_a_plain_decision() -> None:
    games = [shared("a", borrowed=True, available=False), shared("b", borrowed=True,
                                                                available=True),
             shared("c", borrowed=False, available=False)]
    refusal = family_refusal("a", games)
    assert refusal is not None and refusal.code is ErrorCode.FAMILY_ACCESS_RESTRICTED
    assert refusal.item == "mum" and "mum is playing" in refusal.message
    assert family_refusal("b", games) is None  # the owner is not playing it
    assert family_refusal("c", games) is None  # not borrowed: not this player's to start
    assert family_refusal("own-game", games) is None  # bought, not shared


def test_wishlist_add_list_priority_remove_and_the_backends_refusals(
        backend: Any, logged_in: Callable[[str, str], EngineCli]) -> None:
    name, _ = backend.new_user(products=["tiny-tactics"])
    backend.grant(backend.new_user()[0], "moon-miner", title="Moon Miner")  # a store game
    cli = logged_in(name, "w")
    assert cli.ok("wishlist")[-1] == {"wishlist": []}
    added = cli.ok("wishlist", "add", "moon-miner", "3")[-1]["wishlistItem"]
    assert (added["productId"], added["title"], added["priority"]) == ("moon-miner",
                                                                       "Moon Miner", 3)
    assert added["coverImageUrl"].endswith("/api/v1/products/moon-miner/cover")
    cli.ok("wishlist", "add", "star-courier")  # priority 0
    listed = cli.ok("wishlist")[-1]["wishlist"]
    assert [(e["productId"], e["priority"]) for e in listed] == [("moon-miner", 3),
                                                                 ("star-courier", 0)]
    cli.ok("wishlist", "priority", "star-courier", "9")
    listed = cli.ok("wishlist")[-1]["wishlist"]
    assert [e["productId"] for e in listed] == ["star-courier", "moon-miner"]  # high first
    # out of range: refused by the protocol before any request, nothing changed
    code, error = refused(cli, "wishlist", "priority", "star-courier", "1001")
    assert (code, error["errorCode"], error["itemId"]) == (ExitCode.USAGE, "INVALID_PARAMS",
                                                           "priority")
    assert cli.ok("wishlist")[-1]["wishlist"][0]["priority"] == 9
    assert cli.ok("wishlist", "remove", "star-courier")[-1] == {"removed": "star-courier"}
    code, error = refused(cli, "wishlist", "remove", "star-courier")
    assert (code, error["errorCode"]) == (ExitCode.USAGE, "GAME_NOT_FOUND_IN_WISHLIST")
    code, error = refused(cli, "wishlist", "add", "no-such-game")
    assert (code, error["errorCode"]) == (ExitCode.NOT_ENTITLED, "PRODUCT_NOT_FOUND")
    code, error = refused(cli, "wishlist", "priority", "moon-miner")  # no number
    assert error["errorCode"] == "API_MISUSE"
    assert [e["productId"] for e in cli.ok("wishlist")[-1]["wishlist"]] == ["moon-miner"]


def test_a_member_borrows_installs_plays_and_is_refused_while_the_owner_plays(
        backend: Any, logged_in: Callable[[str, str], EngineCli], tmp_path: Path) -> None:
    owner_name, owner_token = backend.new_user(products=["star-courier", "tiny-tactics"])
    member_name, _ = backend.new_user()
    owner = logged_in(owner_name, "owner")
    member = logged_in(member_name, "member")
    assert member.ok("family")[-1]["family"]["role"] == "none"
    code, error = refused(member, "borrow", "tiny-tactics")  # not in a family yet
    assert (code, error["errorCode"]) == (ExitCode.NOT_ENTITLED, "FAMILY_ACCESS_RESTRICTED")
    code, error = refused(owner, "family", "add", "nobody-" + owner_name)
    assert (code, error["errorCode"]) == (ExitCode.USAGE, "USER_NOT_FOUND")
    assert owner.ok("family", "add", member_name)[-1]["member"]["username"] == member_name

    family = member.ok("family")[-1]["family"]
    assert family["role"] == "member"
    assert [(m["username"], m["role"]) for m in family["members"]] == [
        (owner_name, "owner"), (member_name, "member")]
    games = {g["productId"]: g for g in family["sharedGames"]}
    assert set(games) == {"star-courier", "tiny-tactics"}
    assert games["tiny-tactics"]["ownerName"] == owner_name
    assert games["tiny-tactics"]["isAvailable"] and not games["tiny-tactics"]["isBorrowed"]

    item = member.ok("borrow", "tiny-tactics")[-1]["libraryItem"]
    assert item["acquisition_type"] == "family_shared_access" and item["itemId"]
    library = {i["libraryItem"]["product_id"]: i["libraryItem"] for i in member.ok("library")
               if "libraryItem" in i}
    assert set(library) == {"tiny-tactics"}
    assert library["tiny-tactics"]["shared_from_user_id"] == family["ownerId"]
    member.ok("install", "tiny-tactics", "--target", str(tmp_path / "tiny"))
    member.ok("borrow", "star-courier")

    # the owner plays: the member's launch is refused in words, before anything starts
    with backend.client(owner_token) as c:
        sessions = []
        for game in ("tiny-tactics", "star-courier"):
            r = c.post(f"{PLAY}/start", json={"data": {"type": "playtimeSessionStart",
                                                       "attributes": {"product_id": game}}})
            assert r.status_code == 201, r.text
            sessions.append(r.json()["data"]["id"])
        session = sessions[0]
        # ... and so is an install (the backend refuses the download; the task says why)
        code, lines, _ = member.run("install", "star-courier", "--target", str(tmp_path / "sc"))
        task = lines[-1]["task"]
        assert (code, lines[-1]["result"], task["errorCode"]) == (
            ExitCode.NOT_ENTITLED, "error", "FAMILY_ACCESS_RESTRICTED")
        assert task["downloadedBytes"] == 0 and "playing" in task["errorMessage"]
        games = {g["productId"]: g for g in member.ok("family")[-1]["family"]["sharedGames"]}
        assert games["tiny-tactics"]["isBorrowed"] and not games["tiny-tactics"]["isAvailable"]
        code, error = refused(member, "launch", "tiny-tactics")
        assert (code, error["errorCode"]) == (ExitCode.NOT_ENTITLED, "FAMILY_ACCESS_RESTRICTED")
        assert owner_name in error["errorMessage"] and error["itemId"] == owner_name
        assert not (member.data_dir / "game-logs" / "tiny-tactics.log").exists()  # never spawned
        r = c.post(f"{PLAY}/{session}/end", json={"data": {"type": "playtimeSessionEnd",
                                                          "attributes": {"ended_at": datetime.now(
                                                              UTC).isoformat()}}})
        assert r.status_code == 200, r.text
    # the owner stopped: the borrowed game plays
    played = member.ok("launch", "tiny-tactics")[-1]
    assert played["result"] == "exited" and played["game"]["exitCode"] == 0

    # the member leaves: the borrowed game leaves the library (its files stay installed)
    member_id = next(m["userId"] for m in family["members"] if m["role"] == "member")
    assert member.ok("family", "remove", member_name)[-1] == {"removed": member_id}
    assert [i for i in member.ok("library") if "libraryItem" in i] == []
    assert member.ok("family")[-1]["family"]["role"] == "none"
    code, error = refused(member, "family", "remove", member_name)
    assert (code, error["errorCode"]) == (ExitCode.USAGE, "FAMILY_MEMBER_NOT_FOUND")
