#!/usr/bin/env bash
# Screenshots of every launcher page into docs/screenshots/ (offscreen; no display needed):
# a demo backend on a free port, the demo user logged in, one game installed, then
# `launcher --screenshots`. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
W=$(mktemp -d)
trap 'pkill -f "engine.cli --data $W/engine" 2>/dev/null || true; kill $BPID 2>/dev/null || true; rm -rf "$W"' EXIT
export PYTHON_KEYRING_BACKEND=keyring.backends.fail.Keyring QT_QPA_PLATFORM=offscreen
.venv/bin/launcher-backend serve --data "$W/backend" --port 0 --demo --demo-size 8 > "$W/out" 2> "$W/err" &
BPID=$!
for _ in $(seq 1 240); do grep -q "^listening on " "$W/out" 2>/dev/null && break; sleep 0.5; done
URL=$(sed -n 's/^listening on //p' "$W/out" | head -1)
E=(.venv/bin/launcher-engine --data "$W/engine" --backend "$URL")
"${E[@]}" login demo --password demo > /dev/null
"${E[@]}" install tiny-tactics > /dev/null
"${E[@]}" launch tiny-tactics > /dev/null   # a session, a cloud save and an achievement
"${E[@]}" install star-courier --version 1.0.0 --no-wait --limit 300K > /dev/null
L=(.venv/bin/launcher --data "$W/engine" --backend "$URL")
"${L[@]}" --screenshots docs/screenshots --lang en
"${L[@]}" --screenshots docs/screenshots/ru --lang ru
QT_SCALE_FACTOR=1.5 "${L[@]}" --screenshots docs/screenshots/150 --lang en
QT_SCALE_FACTOR=1.5 "${L[@]}" --screenshots docs/screenshots/ru-150 --lang ru
ls docs/screenshots docs/screenshots/ru docs/screenshots/150 docs/screenshots/ru-150
