#!/usr/bin/env bash
# The demo: the embedded backend with a demo catalog and the demo user logged in; then the
# launcher window where a display exists, else the headless walk-through (install a game live,
# update it with a delta, verify it, play it: playtime, cloud saves, achievements).
# Safe to run again (the catalog is generated and published once; the engine starts fresh).
# The backend answers at once; the builds are published in the background, the small game
# first, so the window is up in seconds on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
SIZE=${DEMO_SIZE:-200}            # MB per game version
DATA=${DEMO_DATA:-demo-data}
export PYTHON_KEYRING_BACKEND=${PYTHON_KEYRING_BACKEND:-keyring.backends.fail.Keyring}
export LAUNCHER_FORCE_PROGRESS=1
mkdir -p "$DATA"
BACKEND_LOG="$DATA/backend.log"
echo "== starting the platform backend (a first run publishes a ${SIZE} MB-per-version demo catalog in the background)"
.venv/bin/launcher-backend serve --data "$DATA/backend" --port 0 --demo --demo-size "$SIZE" --demo-background \
    > "$DATA/backend.out" 2> "$BACKEND_LOG" &
BACKEND_PID=$!
trap 'kill $BACKEND_PID 2>/dev/null; wait $BACKEND_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 1200); do
  grep -q "^listening on " "$DATA/backend.out" 2>/dev/null && break
  kill -0 $BACKEND_PID 2>/dev/null || { cat "$BACKEND_LOG"; exit 1; }
  sleep 0.5
done
URL=$(sed -n 's/^listening on //p' "$DATA/backend.out" | head -1)
cat "$DATA/backend.out"
rm -rf "$DATA/engine" "$DATA/games"
E=(.venv/bin/launcher-engine --data "$DATA/engine" --backend "$URL")
echo; echo "== launcher-engine login demo"
"${E[@]}" login demo --password demo
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -z "${DEMO_HEADLESS:-}" ]; then
  echo; echo "== opening the launcher (close the window to end the demo; DEMO_HEADLESS=1 for the CLI walk-through)"
  .venv/bin/launcher --data "$DATA/engine" --backend "$URL"
  pkill -f "engine.cli --data $DATA/engine" 2>/dev/null || true
  exit 0
fi
echo; echo "== no display: the headless walk-through (on a desktop this opens the launcher window:"
echo "   .venv/bin/launcher --data $DATA/engine --backend $URL)"
if [ ! -f "$DATA/backend/demo.json" ]; then
  echo "   waiting for the demo builds to be published (first run only; see $BACKEND_LOG)"
  for _ in $(seq 1 1800); do [ -f "$DATA/backend/demo.json" ] && break; sleep 0.5; done
fi
echo; echo "== launcher-engine library"
"${E[@]}" library
echo; echo "== launcher-engine install star-courier --version 1.0.0 (live)"
"${E[@]}" install star-courier --version 1.0.0 --target "$DATA/games/star-courier"
echo; echo "== launcher-engine check-updates"
"${E[@]}" check-updates
echo; echo "== launcher-engine update star-courier (reuses local chunks, applies patches)"
"${E[@]}" update star-courier
echo; echo "== launcher-engine verify star-courier"
"${E[@]}" verify star-courier
echo; echo "== launcher-engine installed"
"${E[@]}" installed
echo; echo "== launcher-engine launch star-courier (saves synced before and after, playtime counted)"
"${E[@]}" launch star-courier
echo; echo "== launcher-engine playtime / saves / achievements"
"${E[@]}" playtime star-courier
"${E[@]}" saves star-courier list
"${E[@]}" achievements star-courier
echo; echo "demo done: backend log in $BACKEND_LOG; try '${E[*]} --help'"
