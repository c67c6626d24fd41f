#!/usr/bin/env bash
# The whole test suite: lint (ruff), types (mypy), import rules (import-linter), then pytest.
# Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
export QT_QPA_PLATFORM=offscreen
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports
# Two workers, one test module per worker (a module's servers stay its own): most tests wait on
# subprocesses and sockets, so the suite takes ~1.1 cores run alone. `-n 0` after the command
# runs it in one process.
.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
