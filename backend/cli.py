"""``launcher-backend``: the thin platform (serve) and the publisher's commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from patcher.errors import PatcherError

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILED = 1


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_publish(args: argparse.Namespace) -> int:
    from patcher.publish import publish
    from patcher.store import Store

    store = Store(Path(args.store))
    try:
        report = publish(
            store, args.product, args.version, Path(args.build_dir), level=args.level,
            patch_level=args.patch_level, workers=args.workers, patch_previous=args.patch_previous,
        )
    finally:
        store.close()
    if args.json:
        print(json.dumps(report.to_dict()))
        return EXIT_OK
    if report.already_published:
        print(f"{report.product_id} {report.version_id}: already published, nothing stored")
        return EXIT_OK
    mbs = report.total_bytes / 1e6 / max(report.publish_seconds, 1e-9)
    print(f"published {report.product_id} {report.version_id}")
    print(f"  files        {report.files} ({_fmt_bytes(report.total_bytes)})")
    print(f"  chunks       {report.chunks}: {report.new_chunks} new, {report.reused_chunks} reused")
    print(f"  stored       {_fmt_bytes(report.stored_bytes)} in packs ({mbs:.0f} MB/s)")
    print(f"  install      {_fmt_bytes(report.install_bytes)} to download fresh")
    for p in report.patches:
        print(f"  patch        {p.from_version} -> {p.path}: {p.method} {_fmt_bytes(p.size)}"
              f" (chunks: {_fmt_bytes(p.alternative_bytes)})")
    return EXIT_OK


def cmd_demo_catalog(args: argparse.Namespace) -> int:
    from backend.democatalog import generate

    products = generate(Path(args.dest), size_mb=args.size, seed=args.seed)
    if args.json:
        print(json.dumps([{"productId": p.product_id, "title": p.title,
                           "versions": list(p.versions)} for p in products]))
    else:
        for p in products:
            print(f"{p.product_id}: {p.title} ({', '.join(p.versions)}) in {Path(args.dest) / p.product_id}")
    return EXIT_OK


# -- platform backend ----------------------------------------------------------------------------


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from backend.config import load_settings

    return load_settings(Path(args.data), database_url=getattr(args, "db", None), **extra)


def cmd_serve(args: argparse.Namespace) -> int:
    from backend import server
    from backend.app import create_app
    from backend.config import EdgeConfig
    from backend.context import Context

    edges = None
    if args.cdn_edge:
        edges = tuple(EdgeConfig.parse(v, i) for i, v in enumerate(args.cdn_edge))
    settings = _settings(args, host=args.host, port=args.port, edges=edges,
                         workers=args.workers, redis_url=args.redis, s3_endpoint=args.s3,
                         access_log=True if args.access_log else None)
    if settings.access_log:
        access = logging.getLogger("backend.access")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    sock, url = server.bind(settings.host, settings.port)
    settings.port = sock.getsockname()[1]
    settings.public_url = args.public_url or url
    ctx = Context.build(settings)
    ctx.secrets  # noqa: B018 - keys exist (mode 0600) before the first request
    ctx.catalog.store.signing_key  # noqa: B018 - manifest key too
    from backend.achievements import sync_store_definitions

    sync_store_definitions(ctx.db, settings.store_dir)  # achievements published with products
    demo = None
    if args.demo:
        from backend.demo import DEMO_PASSWORD, DEMO_USER, ensure_demo

        demo = ensure_demo(settings, ctx.db, args.demo_size, background=args.demo_background)

    def started() -> None:
        if demo is not None:
            names = ", ".join(f"{pid} ({len(v)} versions)" for pid, _, v in demo.products)
            print(f"demo catalog: {names}", flush=True)
            print(f"log in as user {DEMO_USER!r} with password {DEMO_PASSWORD!r}: POST {url}"
                  "/api/v1/auth/token", flush=True)
        print(f"API docs: {url}/docs", flush=True)

    from backend.objectstore import S3SaveStorage

    if isinstance(ctx.save_storage, S3SaveStorage):
        ctx.save_storage.ensure_bucket()
    if settings.workers > 1:
        ctx.db.dispose()  # every worker opens its own connections after the fork
        return server.run_workers(sock, url, lambda: create_app(ctx), settings.workers, started)
    return server.run(sock, url, lambda: create_app(ctx), started)


def cmd_stack(args: argparse.Namespace) -> int:
    """The scaled stack in the foreground until Ctrl-C / SIGTERM (``backend.stack``)."""
    import signal
    import threading

    from backend.stack import Stack, StackError

    stack = Stack(Path(args.dir), workers=args.workers, port=args.port, demo=args.demo,
                  demo_size=args.demo_size)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        stack.start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        info = stack.describe()
        for k, v in info.items():
            print(f"{k:9} {v}", flush=True)
        if stack.backend is not None:
            for line in stack.backend.lines:
                if line.startswith(("demo catalog", "log in as")):
                    print(line, flush=True)
        print(f"listening on {stack.url}", flush=True)
        print("Ctrl-C stops every server", flush=True)
        while not done.wait(1.0):
            if stack.backend is not None and stack.backend.proc is not None \
                    and stack.backend.proc.poll() is not None:
                print("error: the backend exited; see backend/backend.log", file=sys.stderr)
                return EXIT_FAILED
    finally:
        stack.stop()
    return EXIT_OK


def cmd_cdn(args: argparse.Namespace) -> int:
    from backend import server
    from backend.app import create_cdn_app

    settings = _settings(args, host=args.host, port=args.port)
    sock, url = server.bind(settings.host, settings.port)
    return server.run(sock, url, lambda: create_cdn_app(settings))


def cmd_user_add(args: argparse.Namespace) -> int:
    import getpass

    from backend import auth
    from backend.db import Database
    from backend.errors import ApiError

    settings = _settings(args)
    password = args.password or os.environ.get("LAUNCHER_USER_PASSWORD")
    if password is None:
        password = getpass.getpass(f"password for {args.name}: ")
    db = Database(settings.db_url)
    db.init_schema()
    try:
        with db.session() as s:
            user = auth.create_user(s, args.name, password) if not args.update else \
                auth.set_password(s, args.name, password)
            uid = user.id
    except ApiError as exc:
        print(f"error: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        db.dispose()
    print(json.dumps({"id": uid, "username": args.name}) if args.json else
          f"user {args.name} ({uid})")
    return EXIT_OK


def cmd_grant(args: argparse.Namespace) -> int:
    from backend.catalog import Catalog
    from backend.db import Database
    from backend.errors import ApiError
    from backend.library import grant

    settings = _settings(args)
    db = Database(settings.db_url)
    db.init_schema()
    try:
        with db.session() as s:
            item = grant(s, args.user, args.product, title=args.title)
            item_id = item.id
    except ApiError as exc:
        print(f"error: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        db.dispose()
    if not Catalog(settings.store_dir).versions(args.product):
        print(f"warning: {args.product} has no published version in {settings.store_dir} yet",
              file=sys.stderr)
    print(json.dumps({"libraryItemId": item_id}) if args.json else
          f"granted {args.product} to {args.user} (library item {item_id})")
    return EXIT_OK


def cmd_cover(args: argparse.Namespace) -> int:
    import re

    from backend.coverart import render_cover
    from backend.covers import PRODUCT_ID_PATTERN, write_cover
    from backend.db import Database, Product

    if not re.fullmatch(PRODUCT_ID_PATTERN, args.product):
        print(f"error: not a product id: {args.product!r}", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args)
    if args.file:
        data = Path(args.file).read_bytes()
    else:
        title = args.title
        if title is None:
            db = Database(settings.db_url)
            db.init_schema()
            try:
                with db.session() as s:
                    product = s.get(Product, args.product)
                    title = product.title if product is not None else args.product
            finally:
                db.dispose()
        data = render_cover(args.product, title)
    try:
        path = write_cover(settings.store_dir, args.product, data)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps({"productId": args.product, "path": str(path), "bytes": len(data)})
          if args.json else f"cover of {args.product}: {path} ({len(data)} bytes)")
    return EXIT_OK


def cmd_achievements(args: argparse.Namespace) -> int:
    """Publish a product's achievement definitions (JSON list, see ``backend.achievements``)."""
    from backend.achievements import Definition, import_definitions, publish_definitions
    from backend.db import Database

    settings = _settings(args)
    try:
        raw = json.loads(Path(args.file).read_text("utf-8"))
        items = raw.get("achievements", []) if isinstance(raw, dict) else raw
        defs = [Definition.from_dict(d) for d in items]
        path = publish_definitions(settings.store_dir, args.product, defs)
    except (OSError, ValueError, AttributeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    db = Database(settings.db_url)
    db.init_schema()
    try:
        with db.session() as s:
            import_definitions(s, args.product, defs)
    finally:
        db.dispose()
    print(json.dumps({"productId": args.product, "achievements": len(defs), "path": str(path)})
          if args.json else f"{args.product}: {len(defs)} achievements published ({path})")
    return EXIT_OK


def cmd_nginx_conf(args: argparse.Namespace) -> int:
    from backend.config import Secrets
    from backend.nginx import render_cdn_conf

    settings = _settings(args)
    text = render_cdn_conf(store_root=settings.cdn_root, port=args.port,
                           cdn_key=Secrets.load(settings).cdn_key, prefix=Path(args.prefix),
                           host=args.host)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _schema_mismatch() -> type[Exception]:
    from backend.db import SchemaMismatch

    return SchemaMismatch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launcher-backend", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("publish", help="turn a build folder into a released version")
    p.add_argument("--store", required=True, help="content store folder")
    p.add_argument("--product", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--level", type=int, default=3, help="zstd level of stored blocks")
    p.add_argument("--patch-level", type=int, default=19, help="zstd level of zstd patches")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--patch-previous", type=int, default=2,
                   help="build patches from this many earlier versions")
    p.add_argument("--json", action="store_true")
    p.add_argument("build_dir")
    p.set_defaults(func=cmd_publish)

    d = sub.add_parser("demo-catalog", help="generate the demo games' build folders")
    d.add_argument("dest")
    d.add_argument("--size", type=float, default=8, help="approximate MB per version")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo_catalog)

    default_data = os.environ.get("LAUNCHER_BACKEND_DATA", "demo-data")

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", default=default_data,
                       help="data dir: database, secrets, store, saves (default %(default)s)")
        p.add_argument("--db", default=os.environ.get("LAUNCHER_DATABASE_URL"),
                       help="SQLAlchemy DSN (default: sqlite file in the data dir)")

    sv = sub.add_parser("serve", help="run the platform API (and its own CDN route)")
    data_args(sv)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    sv.add_argument("--public-url", help="URL clients use to reach this server (default: bound)")
    sv.add_argument("--workers", type=int, help="worker processes on the one port (default 1)")
    sv.add_argument("--redis", default=os.environ.get("LAUNCHER_REDIS_URL"), metavar="URL",
                    help="redis://HOST:PORT/DB: rate limits and live events shared by workers")
    sv.add_argument("--s3", default=os.environ.get("LAUNCHER_S3_ENDPOINT"), metavar="URL",
                    help="S3-compatible endpoint for saves (bucket and keys: backend.json or "
                         "LAUNCHER_S3_BUCKET/ACCESS_KEY/SECRET_KEY)")
    sv.add_argument("--access-log", action="store_true", help="one JSON line per request")
    sv.add_argument("--demo", action="store_true",
                    help="on first start create the demo catalog, user demo/demo and grants")
    sv.add_argument("--demo-size", type=float, default=8, help="MB per demo version")
    sv.add_argument("--demo-background", action="store_true",
                    help="serve at once and publish the demo builds meanwhile (smallest first; "
                    "demo.json appears when all are in)")
    sv.add_argument("--cdn-edge", action="append", metavar="[MODE=]URL",
                    help="CDN edge for cdnSources, in order: 'self' (this server's /cdn/), URL "
                         "or hmac=URL (HMAC tokens) or nginx=URL (nginx secure_link); repeatable")
    sv.set_defaults(func=cmd_serve)

    st = sub.add_parser("stack", help="the scaled stack: PostgreSQL, Redis, SeaweedFS S3, nginx "
                                      "and the backend with N workers, all on 127.0.0.1")
    st.add_argument("--dir", default="stack", help="where every server keeps its data")
    st.add_argument("--workers", type=int, default=2)
    st.add_argument("--port", type=int, default=8080, help="the API port (0 picks a free one)")
    st.add_argument("--demo", action="store_true", help="demo catalog and user demo/demo")
    st.add_argument("--demo-size", type=float, default=8, help="MB per demo version")
    st.set_defaults(func=cmd_stack)

    c = sub.add_parser("cdn", help="run a CDN-only edge sharing the data dir's CDN secret")
    data_args(c)
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=0)
    c.set_defaults(func=cmd_cdn)

    u = sub.add_parser("user", help="manage dev accounts")
    usub = u.add_subparsers(dest="user_command", required=True)
    ua = usub.add_parser("add", help="create a user (bcrypt password hash)")
    data_args(ua)
    ua.add_argument("name")
    ua.add_argument("--password", help="default: $LAUNCHER_USER_PASSWORD or prompt")
    ua.add_argument("--update", action="store_true", help="set the password of an existing user")
    ua.add_argument("--json", action="store_true")
    ua.set_defaults(func=cmd_user_add)

    g = sub.add_parser("grant", help="entitle a user to a product")
    data_args(g)
    g.add_argument("user")
    g.add_argument("product")
    g.add_argument("--title", help="display title (default: the product id)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_grant)

    cv = sub.add_parser("cover", help="set a product's cover art (PNG), or draw one")
    data_args(cv)
    cv.add_argument("product")
    cv.add_argument("file", nargs="?", help="a PNG image (default: generate one from the title)")
    cv.add_argument("--title", help="title drawn on a generated cover (default: the product's)")
    cv.add_argument("--json", action="store_true")
    cv.set_defaults(func=cmd_cover)

    ac = sub.add_parser("achievements", help="publish a product's achievement definitions")
    data_args(ac)
    ac.add_argument("product")
    ac.add_argument("file", help='JSON: [{"id","name","description","hidden","progress_target"'
                                 ',"icon_url"}, ...] or {"achievements": [...]}')
    ac.add_argument("--json", action="store_true")
    ac.set_defaults(func=cmd_achievements)

    n = sub.add_parser("nginx-conf", help="render packaging/nginx/cdn.conf for this data dir")
    data_args(n)
    n.add_argument("--port", type=int, required=True)
    n.add_argument("--host", default="127.0.0.1")
    n.add_argument("--prefix", required=True, help="nginx prefix dir (pid, logs, temp files)")
    n.add_argument("--out", help="write here instead of stdout")
    n.set_defaults(func=cmd_nginx_conf)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except _schema_mismatch() as exc:
        print(f"error: SCHEMA_MISMATCH: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except PatcherError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": {"code": exc.code, "message": exc.message}}))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
