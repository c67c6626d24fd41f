"""``launcher-backend``: the thin platform (serve) and the publisher's commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

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
            workers=args.workers, patch_previous=args.patch_previous,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launcher-backend", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("publish", help="turn a build folder into a released version")
    p.add_argument("--store", required=True, help="content store folder")
    p.add_argument("--product", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--level", type=int, default=19, help="zstd level for blocks and patches")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except PatcherError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": {"code": exc.code, "message": exc.message}}))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
