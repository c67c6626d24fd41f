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
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
