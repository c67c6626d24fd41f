"""``launcher-backend serve --demo --demo-background``: the server answers, the demo user logs
in and sees the library (with covers and achievements) at once, while the builds are published
in the background, the small game first."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import StartBackend


def test_the_demo_serves_at_once_and_publishes_in_the_background(
        backend_factory: StartBackend) -> None:
    started = time.monotonic()
    server = backend_factory(with_store=False,
                             args=["--demo", "--demo-size", "1", "--demo-background"])
    token = server.login("demo", "demo")

    def items() -> dict[str, Any]:
        with server.client(token) as c:
            return {i["attributes"]["product_id"]: i["attributes"]
                    for i in c.get("/api/v1/library/items").json()["data"]}

    first = items()
    assert set(first) == {"star-courier", "tiny-tactics"}
    assert all(a["cover_image_url"] for a in first.values())
    marker = server.data_dir / "demo.json"
    deadline = started + 240
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marker.exists(), "the background publishing never finished"
    done = items()
    assert len(done["tiny-tactics"]["versions"]) == 2
    assert len(done["star-courier"]["versions"]) == 4
    with server.client(token) as c:
        status = c.get("/api/v1/library/achievements/status/star-courier").json()["data"]
    assert {s["id"] for s in status} >= {"first-launch", "frequent-flyer"}
