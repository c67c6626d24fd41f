#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian machine; safe to run again.
# Debian packages: nginx (CDN edge), postgresql and redis-server (the scaled stack and its tests:
# started by the tests and scripts/stack.sh on 127.0.0.1, never as system services),
# xdelta3/zstd/bsdiff/aria2/curl (peer tools in tests and benches),
# Qt's runtime libraries (offscreen GUI tests; the xcb ones for the launcher window on a desktop),
# gcc, the Python headers, BLAKE3's C sources (librust-blake3-dev: sources only, no Rust) and
# libzstd-dev for the engine's native block hashing and processing (scripts/build_native.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PKGS=(nginx-light postgresql redis-server xdelta3 zstd bsdiff aria2 curl libgl1 libegl1 libxkbcommon0 libfontconfig1 libdbus-1-3
          libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libxcb-randr0
          libxcb-render-util0 libxcb-image0 libxcb-xinerama0)
# for the native block modules only: a system without them still sets up (Python does their work)
NATIVE_PKGS=(gcc python3-dev librust-blake3-dev libzstd-dev)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
not_installed() {  # the named Debian packages that are not installed
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"
  done
}
mapfile -t missing < <(not_installed "${APT_PKGS[@]}")
mapfile -t native < <(not_installed "${NATIVE_PKGS[@]}")
if ((${#missing[@]} + ${#native[@]})); then
  # a failed update stops the set-up only when a package it cannot do without is missing
  $SUDO apt-get update -qq || ((${#missing[@]} == 0))
fi
if ((${#missing[@]})); then
  # policy-rc.d 101: the packages' own services are not started (our tests and the stack start
  # private servers on free ports; a system PostgreSQL/Redis would only take memory and ports)
  rc=/usr/sbin/policy-rc.d
  if [ ! -e "$rc" ]; then
    trap '$SUDO rm -f "$rc"' EXIT
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$rc" >/dev/null
    $SUDO chmod +x "$rc"
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ((${#native[@]})); then
  # a module that failed to build may build now (scripts/build_native.sh does not retry one
  # that failed from the same inputs)
  rm -f engine/io/*.failed
  # all at once, else one by one: without libzstd-dev alone the hashing module still builds
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${native[@]}" >/dev/null 2>&1 || for p in "${native[@]}"; do
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "$p" >/dev/null 2>&1 || echo "bootstrap: could not install $p: the engine does" \
        "its part in Python" >&2
    done
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pinned: constraints.txt holds the exact versions, so a new upstream release cannot break a
# fresh clone; EXTRAS picks the install (dev = everything the tests need)
EXTRAS=${EXTRAS:-dev}
stamp=.venv/.installed-$EXTRAS-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # compat: the checkout on sys.path by a plain .pth line; the default editable finder costs
  # every Python start ~7 ms of site imports (pathlib, re, fnmatch), a quarter of a quick CLI
  # command's. setuptools calls that mode transitional: where it is gone, the default mode
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[$EXTRAS]" \
    --config-settings editable_mode=compat 2>/dev/null \
    || .venv/bin/python -m pip install -q -c constraints.txt -e ".[$EXTRAS]"
  touch "$stamp"
fi
PY=.venv/bin/python ./scripts/build_native.sh
