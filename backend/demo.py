"""``serve --demo``: on first start, generate the demo catalog, publish every version into the
store, draw each product's cover (``store/covers``) and publish its achievements
(``store/achievements``), create user ``demo``/``demo`` and grant it
every demo product."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from backend import auth
from backend.achievements import sync_store_definitions
from backend.config import Settings
from backend.covers import ensure_covers
from backend.db import Database, User
from backend.library import ensure_product, grant
from patcher.publish import publish
from patcher.store import Store

log = logging.getLogger(__name__)

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"


@dataclass(frozen=True, slots=True)
class DemoCatalog:
    products: list[tuple[str, str, list[str]]]  # (product id, title, versions)
    created: bool


def publish_catalog(store_dir: Path, builds_dir: Path, size_mb: float, seed: int = 1, *,
                    level: int = 19, workers: int = 2,
                    only: list[str] | None = None) -> list[tuple[str, str, list[str]]]:
    """Generate (idempotent) and publish every version of each demo product (``only`` these, if
    given), oldest first, and give each product a generated cover (``backend.covers``).
    Publishing is idempotent too: a version already in the store is left as it is."""
    from backend.democatalog import generate

    products = generate(builds_dir, size_mb=size_mb, seed=seed, only=only)
    store = Store(store_dir)
    try:
        for p in products:
            for v in p.versions:
                publish(store, p.product_id, v, builds_dir / p.product_id / v, level=level,
                        workers=workers)
    finally:
        store.close()
    ensure_covers(store_dir, [(p.product_id, p.title) for p in products])
    ensure_demo_achievements(store_dir)
    return [(p.product_id, p.title, list(p.versions)) for p in products]


def ensure_demo_achievements(store_dir: Path) -> None:
    """Publish the demo games' achievements (``democatalog.ACHIEVEMENTS``) into the store unless
    a product has its own definitions already; the server imports them when it starts."""
    from backend.achievements import Definition, definitions_path, publish_definitions
    from backend.democatalog import ACHIEVEMENTS

    for product_id, items in ACHIEVEMENTS.items():
        if not definitions_path(store_dir, product_id).exists():
            publish_definitions(store_dir, product_id, [Definition.from_dict(d) for d in items])


def ensure_demo(settings: Settings, db: Database, size_mb: float, *, level: int = 19,
                background: bool = False) -> DemoCatalog:
    """The demo user, products, grants, covers and achievements at once (a second or two), so the
    server answers and the launcher shows the library right away; the builds are generated and
    published in a background thread, the smallest game first (a product shows "not available
    yet" until its first version is in the store). ``demo.json`` marks a finished catalog."""
    from backend.democatalog import describe

    marker = settings.data_dir / "demo.json"
    if marker.exists():
        doc = json.loads(marker.read_text())
        products = [(p["productId"], p["title"], p["versions"]) for p in doc["products"]]
        # a demo data dir made before covers (achievements) existed gets them now
        ensure_covers(settings.store_dir, [(pid, title) for pid, title, _ in products])
        ensure_demo_achievements(settings.store_dir)
        sync_store_definitions(db, settings.store_dir)
        return DemoCatalog(products, False)
    described = describe(size_mb=size_mb)
    products = [(p.product_id, p.title, list(p.versions)) for p in described]
    ensure_covers(settings.store_dir, [(pid, title) for pid, title, _ in products])
    ensure_demo_achievements(settings.store_dir)
    with db.session() as s:
        if s.scalar(select(User).where(User.username == DEMO_USER)) is None:
            auth.create_user(s, DEMO_USER, DEMO_PASSWORD)
        for pid, title, _ in products:
            ensure_product(s, pid, title)
            grant(s, DEMO_USER, pid, title=title)
    sync_store_definitions(db, settings.store_dir)

    def publish_all() -> None:
        started = time.monotonic()
        for pid, title, versions in products:
            log.warning("demo catalog: generating and publishing %s (%s)", title,
                        ", ".join(versions))
            publish_catalog(settings.store_dir, settings.data_dir / "builds", size_mb,
                            level=level, only=[pid])
        marker.write_text(json.dumps({"products": [
            {"productId": pid, "title": title, "versions": versions}
            for pid, title, versions in products]}, indent=2))
        log.warning("demo catalog ready in %.0f s (%.0f MB per version)",
                    time.monotonic() - started, size_mb)

    if background:
        threading.Thread(target=publish_all, name="demo-catalog", daemon=True).start()
    else:
        publish_all()
    return DemoCatalog(products, True)
