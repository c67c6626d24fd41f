#!/usr/bin/env bash
# Screenshots of every launcher page into docs/screenshots/ (offscreen; no display needed):
# a demo backend on a free port, the demo user logged in, one game installed, then
# `launcher --screenshots`; then the library's wishlist and family views as "kid", a member of
# demo's family who borrowed a game and wishes for two. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
W=$(mktemp -d)
# the daemons the launcher started, each stopped by the pid in its data dir's daemon.json
stop_daemons() {
  .venv/bin/python -c 'import sys; from pathlib import Path; from testing.daemon import stop_daemon_of
for d in sys.argv[1:]: stop_daemon_of(Path(d))' "$W/engine" "$W/kid" 2>/dev/null || true
}
trap 'stop_daemons; kill $BPID 2>/dev/null || true; rm -rf "$W"' EXIT
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
# kid: borrows tiny-tactics from demo's family, wishes for a store game and for star-courier
B=(.venv/bin/launcher-backend)
"${B[@]}" user add --data "$W/backend" kid --password kid > /dev/null
"${B[@]}" user add --data "$W/backend" shop --password shop > /dev/null
"${B[@]}" grant --data "$W/backend" shop moon-miner --title "Moon Miner" > /dev/null 2>&1
"${E[@]}" family add kid > /dev/null
K=(.venv/bin/launcher-engine --data "$W/kid" --backend "$URL")
"${K[@]}" login kid --password kid > /dev/null
"${K[@]}" borrow tiny-tactics > /dev/null
"${K[@]}" install tiny-tactics > /dev/null
"${K[@]}" wishlist add moon-miner 5 > /dev/null
"${K[@]}" wishlist add star-courier 2 > /dev/null
KL=(.venv/bin/launcher --data "$W/kid" --backend "$URL")
"${KL[@]}" --screenshots "$W/kid-en" --lang en
"${KL[@]}" --screenshots "$W/kid-ru" --lang ru
for view in library-wishlist library-family; do
  cp "$W/kid-en/$view.png" docs/screenshots/
  cp "$W/kid-ru/$view.png" docs/screenshots/ru/
done
ls docs/screenshots docs/screenshots/ru docs/screenshots/150 docs/screenshots/ru-150
