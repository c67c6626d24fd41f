#!/usr/bin/env bash
# Builds the engine's native block modules with gcc from Debian's BLAKE3 C sources (package
# librust-blake3-dev, which scripts/bootstrap.sh installs):
#   engine/io/_blake3batch  a block's chunks hashed in one call, the GIL released once
#   engine/io/_blockproc    a block decompressed (libzstd, libzstd-dev), its chunks hashed and
#                           written in one call, the GIL released once
# Safe to run again: each is rebuilt only when its inputs changed. Without them the engine does
# the same in Python (slower, the same result: engine/io/blockio.py), so a failed build is
# reported and does not stop the set-up; without libzstd-dev only _blake3batch is built.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CC=${CC:-gcc}
SRC=$(ls -d /usr/share/cargo/registry/blake3-*/c 2>/dev/null | sort -V | tail -n 1)
if [ -z "$SRC" ] || [ ! -f "$SRC/blake3.h" ]; then
  echo "build_native: no BLAKE3 C sources (apt-get install librust-blake3-dev); the engine" \
       "hashes chunk by chunk" >&2
  exit 0
fi
INC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])') || exit 0
SUFFIX=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))') || exit 0
ZSTD_H=$(echo '#include <zstd.h>' | "$CC" -E -M -x c - 2>/dev/null | tr ' \\' '\n\n' \
         | grep '/zstd\.h$' | head -n 1)
# the tools a build depends on besides its sources: a new compiler, Python or libzstd is
# another build (and a module that failed to build is tried again)
TOOLS=$("$CC" -dumpfullversion 2>&1; "$CC" -print-file-name=libzstd.so 2>&1; "$PY" -V 2>&1)
stamp() {  # stamp MODULE [FILE...]: the hash of what the module is built from
  local mod=$1
  shift
  # a missing file (no python3-dev yet: no Python.h) gives another hash than a present one
  { cat "engine/io/$mod.c" scripts/build_native.sh "$SRC"/*.c "$SRC"/*.h "$SRC"/*.S \
        "$INC/Python.h" "$INC/pyconfig.h" "$@" 2>/dev/null; echo "$TOOLS"; } \
    | sha256sum | cut -c1-16
}
failed_before() {  # failed_before MODULE STAMP: failed to build from these very inputs
  [ -n "$2" ] && [ "$(cat "engine/io/$1$SUFFIX.failed" 2>/dev/null)" = "$2" ]
}
fresh() {  # fresh MODULE STAMP: built from these very inputs, or failed to build from them
  # (a build that failed is not tried again from the same inputs: it cost every set-up the
  # compiling of BLAKE3; remove engine/io/MODULE*.failed to try again)
  { [ -f "engine/io/$1$SUFFIX" ] && [ "$(cat "engine/io/$1$SUFFIX.stamp" 2>/dev/null)" = "$2" ]; } \
    || failed_before "$1" "$2"
}
HASH_STAMP=$(stamp _blake3batch)
PROC_STAMP=""
[ -n "$ZSTD_H" ] && PROC_STAMP=$(stamp _blockproc "$ZSTD_H")
# without zstd.h no block processor is kept: one built from older sources would be stale
[ -z "$PROC_STAMP" ] && rm -f "engine/io/_blockproc$SUFFIX" "engine/io/_blockproc$SUFFIX.stamp"
# said once, whether the build below runs or not
for m in "_blake3batch $HASH_STAMP" "_blockproc $PROC_STAMP"; do
  read -r mod st <<<"$m"
  if failed_before "$mod" "${st:-}"; then
    echo "build_native: engine/io/$mod$SUFFIX failed to build from these sources before;" \
         "not tried again (remove engine/io/$mod$SUFFIX.failed to retry)" >&2
  fi
done
if fresh _blake3batch "$HASH_STAMP" && { [ -z "$PROC_STAMP" ] || fresh _blockproc "$PROC_STAMP"; }; then
  exit 0
fi
WORK=$(mktemp -d) || exit 0
trap 'rm -rf "$WORK"' EXIT
FLAGS=(-O3 -fPIC -fvisibility=hidden -I"$SRC" -I"$INC")
ARCH=$(uname -m)
case "$ARCH" in  # before any file is compiled: blake3_dispatch.c reads them too
  x86_64|amd64) ;;
  aarch64|arm64) FLAGS+=(-DBLAKE3_USE_NEON=1) ;;
  *) FLAGS+=(-DBLAKE3_NO_SSE2 -DBLAKE3_NO_SSE41 -DBLAKE3_NO_AVX2 -DBLAKE3_NO_AVX512) ;;
esac
compile() {  # compile SOURCE [FLAGS...]: its object in $WORK
  "$CC" "${FLAGS[@]}" "${@:2}" -c "$1" -o "$WORK/$(basename "$1" .c).o"
}
blake3=()  # BLAKE3's objects, linked into both modules
ok=1
for src in blake3 blake3_dispatch blake3_portable; do
  compile "$SRC/$src.c" || ok=0
  blake3+=("$WORK/$src.o")
done
kernels=()  # SIMD kernels, each with its own instruction set; chosen at run time (CPUID)
case "$ARCH" in
  x86_64|amd64) kernels=("blake3_sse2 -msse2" "blake3_sse41 -msse4.1" "blake3_avx2 -mavx2"
                         "blake3_avx512 -mavx512f -mavx512vl") ;;
  aarch64|arm64) kernels=("blake3_neon") ;;
esac
for k in "${kernels[@]}"; do
  read -r src flags <<<"$k"
  # BLAKE3's hand-written x86-64 kernels where they assemble: hashing a block's chunks ran
  # 4.8 GiB/s with the intrinsics and 6.0 GiB/s with these (AVX-512 here, 18 chunks of a
  # 1 MiB block, issue 13); the intrinsics otherwise
  asm="$SRC/${src}_x86-64_unix.S"
  if [ "$(uname -s)" = Linux ] && [ -f "$asm" ] \
      && "$CC" -fPIC -c "$asm" -o "$WORK/$src.o" 2>/dev/null; then
    :
  else
    # shellcheck disable=SC2086  # the flags are words
    compile "$SRC/$src.c" $flags || ok=0
  fi
  blake3+=("$WORK/$src.o")
done
# only the module's init is exported: the kernels' global symbols stay inside the module
printf '{ global: PyInit_*; local: *; };\n' > "$WORK/exports.map"

# a built module is checked by loading it and comparing it with the Python packages
HASH_TEST='
import blake3, importlib.util as u, sys
s = u.spec_from_file_location("_blake3batch", sys.argv[1]); m = u.module_from_spec(s)
s.loader.exec_module(m)
d = bytes(range(256)) * 300
spans = (1).to_bytes(8, sys.byteorder) + (70000).to_bytes(8, sys.byteorder)
assert m.hash_spans(d, spans) == blake3.blake3(d[1:70001]).digest()'
PROC_TEST='
import blake3, importlib.util as u, os, sys, tempfile, zstandard
from array import array
s = u.spec_from_file_location("_blockproc", sys.argv[1]); m = u.module_from_spec(s)
s.loader.exec_module(m)
d = bytes(range(256)) * 1000
fd, path = tempfile.mkstemp()
try:
    dfd = os.open(path, os.O_WRONLY | os.O_DIRECT)
except OSError:  # a file system without direct I/O: the page cache only
    dfd = -1
try:
    for direct in {-1, dfd}:
        for stored, zstd in ((d, False), (zstandard.ZstdCompressor().compress(d), True)):
            assert m.process(stored, zstd, len(d), array("Q", [1, 200000]),
                             blake3.blake3(d[1:200001]).digest(),
                             array("q", [fd, direct, 5, 0])) == -1
            assert os.pread(fd, 200001, 4) == b"\0" + d[1:200001]
            os.ftruncate(fd, 0)
finally:
    os.close(fd)
    if dfd >= 0:
        os.close(dfd)
    os.unlink(path)'

build() {  # build MODULE STAMP TEST [LINK FLAGS...]: built and checked, or removed
  local mod=$1 stamp=$2 test=$3 out="engine/io/$1$SUFFIX"
  fresh "$mod" "$stamp" && return 0  # built, or failed before (said above)
  if [ "$ok" = 1 ] && compile "engine/io/$mod.c" \
      && "$CC" -shared -Wl,--version-script="$WORK/exports.map" -o "$WORK/$mod.so" \
         "$WORK/$mod.o" "${blake3[@]}" "${@:4}" \
      && "$PY" -c "$test" "$WORK/$mod.so"; then
    mv "$WORK/$mod.so" "$out"
    echo "$stamp" > "$out.stamp"
    rm -f "$out.failed"
    echo "build_native: built $out"
  else
    # a module built from older sources is not kept: the engine does its work in Python
    rm -f "$out" "$out.stamp"
    echo "build_native: could not build $out; the engine does its work in Python" >&2
    if [ "$ok" = 1 ]; then  # the compiler works (BLAKE3 built): the module itself fails
      echo "$stamp" > "$out.failed"
      echo "build_native: not tried again from the same sources (remove $out.failed to" \
           "retry)" >&2
    fi
  fi
}
build _blake3batch "$HASH_STAMP" "$HASH_TEST"
if [ -n "$PROC_STAMP" ]; then
  build _blockproc "$PROC_STAMP" "$PROC_TEST" -lzstd
else  # the module was removed above
  echo "build_native: no zstd.h (apt-get install libzstd-dev); blocks are decompressed and" \
       "written in Python" >&2
fi
exit 0
