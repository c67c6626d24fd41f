"""The signed delta index for one version step: which per-file binary patches exist.

A patch is keyed by (from file SHA-256 → to file SHA-256); the engine applies it only to a local
file whose hash matches and checks the output hash, so a stale or wrong patch can never corrupt
an install (it falls back to chunks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import zstandard

from patcher.errors import ManifestError
from patcher.manifest import _hex, _int, _need, check_id, check_relative_path

DELTA_FORMAT_VERSION = 1
MAX_DELTA_BYTES = 64 * 1024 * 1024
METHODS = ("bsdiff", "zstd")


@dataclass(frozen=True, slots=True)
class PatchEntry:
    path: str  # target path in the new version
    source_path: str  # file in the old version the patch applies to
    from_sha256: str
    to_sha256: str
    to_size: int
    method: str
    patch_id: str  # BLAKE3 of the patch bytes; also its file name on the CDN
    patch_size: int


@dataclass(frozen=True, slots=True)
class DeltaIndex:
    product_id: str
    from_version: str
    to_version: str
    patches: tuple[PatchEntry, ...]

    @property
    def patch_bytes(self) -> int:
        return sum(p.patch_size for p in self.patches)


def encode_delta_index(d: DeltaIndex) -> bytes:
    doc = {
        "formatVersion": DELTA_FORMAT_VERSION,
        "productId": d.product_id,
        "fromVersion": d.from_version,
        "toVersion": d.to_version,
        "patches": [
            {
                "path": p.path,
                "sourcePath": p.source_path,
                "fromSha256": p.from_sha256,
                "toSha256": p.to_sha256,
                "toSize": p.to_size,
                "method": p.method,
                "patchId": p.patch_id,
                "patchSize": p.patch_size,
            }
            for p in d.patches
        ],
    }
    return zstandard.ZstdCompressor(level=10).compress(json.dumps(doc, separators=(",", ":")).encode())


def decode_delta_index(blob: bytes) -> DeltaIndex:
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=MAX_DELTA_BYTES)
        doc = json.loads(raw)
    except (zstandard.ZstdError, ValueError) as exc:
        raise ManifestError("DELTA_INDEX_CORRUPT", "delta", str(exc)) from exc
    if _need(doc, "formatVersion", int, "") != DELTA_FORMAT_VERSION:
        raise ManifestError("MANIFEST_FORMAT_UNSUPPORTED", "formatVersion", "delta index")
    patches = []
    for i, p in enumerate(_need(doc, "patches", list, "")):
        w = f"patches[{i}]"
        method = _need(p, "method", str, w)
        if method not in METHODS:
            raise ManifestError("MANIFEST_SCHEMA", f"{w}.method", f"unknown method {method!r}")
        patches.append(
            PatchEntry(
                path=check_relative_path(_need(p, "path", str, w), f"{w}.path"),
                source_path=check_relative_path(_need(p, "sourcePath", str, w), f"{w}.sourcePath"),
                from_sha256=_hex(_need(p, "fromSha256", str, w), f"{w}.fromSha256"),
                to_sha256=_hex(_need(p, "toSha256", str, w), f"{w}.toSha256"),
                to_size=_int(_need(p, "toSize", int, w), f"{w}.toSize", 0, 1 << 42),
                method=method,
                patch_id=_hex(_need(p, "patchId", str, w), f"{w}.patchId"),
                patch_size=_int(_need(p, "patchSize", int, w), f"{w}.patchSize", 1, 1 << 40),
            )
        )
    return DeltaIndex(
        check_id(_need(doc, "productId", str, ""), "productId"),
        check_id(_need(doc, "fromVersion", str, ""), "fromVersion"),
        check_id(_need(doc, "toVersion", str, ""), "toVersion"),
        tuple(patches),
    )
