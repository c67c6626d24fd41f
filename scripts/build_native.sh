#!/usr/bin/env bash
# Builds engine/io/_blake3batch (the block workers' BLAKE3 of a block's chunks in one call, the
# GIL released once: engine/io/_blake3batch.c) with gcc from Debian's BLAKE3 C sources (package
# librust-blake3-dev, which scripts/bootstrap.sh installs). Safe to run again: it rebuilds only
# when its inputs changed. Without it the engine hashes chunk by chunk with the blake3 package
# (slower, the same result), so a failed build is reported and does not stop the set-up.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SRC=$(ls -d /usr/share/cargo/registry/blake3-*/c 2>/dev/null | sort -V | tail -n 1)
if [ -z "$SRC" ] || [ ! -f "$SRC/blake3.h" ]; then
  echo "build_native: no BLAKE3 C sources (apt-get install librust-blake3-dev); the engine" \
       "hashes chunk by chunk" >&2
  exit 0
fi
INC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SUFFIX=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
OUT=engine/io/_blake3batch$SUFFIX
STAMP=$(cat engine/io/_blake3batch.c scripts/build_native.sh "$SRC"/*.c "$SRC"/*.h | sha256sum | cut -c1-16)
if [ -f "$OUT" ] && [ "$(cat "$OUT.stamp" 2>/dev/null)" = "$STAMP" ]; then
  exit 0
fi
WORK=$(mktemp -d) || exit 0
trap 'rm -rf "$WORK"' EXIT
CC=${CC:-gcc}
FLAGS=(-O3 -fPIC -fvisibility=hidden -I"$SRC" -I"$INC")
ARCH=$(uname -m)
case "$ARCH" in  # before any file is compiled: blake3_dispatch.c reads them too
  x86_64|amd64) ;;
  aarch64|arm64) FLAGS+=(-DBLAKE3_USE_NEON=1) ;;
  *) FLAGS+=(-DBLAKE3_NO_SSE2 -DBLAKE3_NO_SSE41 -DBLAKE3_NO_AVX2 -DBLAKE3_NO_AVX512) ;;
esac
objects=()
compile() {  # compile SOURCE [FLAGS...]
  local src=$1 obj="$WORK/$(basename "$1" .c).o"
  shift
  "$CC" "${FLAGS[@]}" "$@" -c "$src" -o "$obj" || return 1
  objects+=("$obj")
}
ok=1
compile engine/io/_blake3batch.c || ok=0
compile "$SRC/blake3.c" || ok=0
compile "$SRC/blake3_dispatch.c" || ok=0
compile "$SRC/blake3_portable.c" || ok=0
case "$ARCH" in
  x86_64|amd64)  # SIMD kernels, each with its own instruction set; chosen at run time (CPUID)
    compile "$SRC/blake3_sse2.c" -msse2 || ok=0
    compile "$SRC/blake3_sse41.c" -msse4.1 || ok=0
    compile "$SRC/blake3_avx2.c" -mavx2 || ok=0
    compile "$SRC/blake3_avx512.c" -mavx512f -mavx512vl || ok=0 ;;
  aarch64|arm64)
    compile "$SRC/blake3_neon.c" || ok=0 ;;
esac
if [ "$ok" = 1 ] && "$CC" -shared -o "$WORK/out.so" "${objects[@]}" \
    && "$PY" -c "import importlib.util as u, sys; s = u.spec_from_file_location('_blake3batch', sys.argv[1]); m = u.module_from_spec(s); s.loader.exec_module(m); import blake3; d = bytes(range(256)) * 300; assert m.hash_spans(d, (1).to_bytes(8, sys.byteorder) + (70000).to_bytes(8, sys.byteorder)) == blake3.blake3(d[1:70001]).digest()" "$WORK/out.so"; then
  mv "$WORK/out.so" "$OUT"
  echo "$STAMP" > "$OUT.stamp"
  echo "build_native: built $OUT"
else
  # a module built from older sources is not kept: the engine hashes chunk by chunk instead
  rm -f "$OUT" "$OUT.stamp"
  echo "build_native: could not build $OUT; the engine hashes chunk by chunk" >&2
fi
exit 0
