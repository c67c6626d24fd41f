"""The signed delta index for one version step: which per-file binary patches exist.

A patch is keyed by (from file SHA-256 → to file SHA-256); the engine applies it only to a local
file whose hash matches and checks the output hash, so a stale or wrong patch can never corrupt
an install (it falls back to chunks).

Two documents per step. Format 1 (``<from>--<to>.delta``) lists only what engines released before
format 2 understand: ``bsdiff`` and ``zstd`` patches of a file the old version holds (an engine
refuses a whole index with an unknown method, so a new kind there would cost it every patch).
Format 2 (``<from>--<to>.v2.delta``) lists every patch: ``hdiffpatch`` too, and whole-file zstd
frames of a new file with no predecessor (``sourcePath``/``fromSha256`` null: applied to empty
input).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import zstandard

from patcher.errors import ManifestError
from patcher.manifest import MAX_JSON_BYTES, _hex, _int, _need, check_id, check_relative_path

DELTA_FORMAT_VERSION = 2
V1_METHODS = ("bsdiff", "zstd")
METHODS = ("bsdiff", "zstd", "hdiffpatch")
MAX_DELTA_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_PATCH = 256 * 1024 * 1024
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@dataclass(frozen=True, slots=True)
class PatchEntry:
    path: str  # target path in the new version
    source_path: str | None  # file in the old version the patch applies to; None: empty input
    from_sha256: str  # EMPTY_SHA256 when source_path is None
    to_sha256: str
    to_size: int
    method: str
    patch_id: str  # BLAKE3 of the patch bytes; also its file name on the CDN
    patch_size: int


@dataclass(frozen=True, slots=True)
class ManifestPatch:
    """The new manifest's JSON as a patch against the old manifest's JSON (format 2 only)."""

    method: str  # "zstd": the old JSON as a raw-content dictionary
    patch_id: str  # BLAKE3 of the patch bytes; stored as patches/<id>.patch
    patch_size: int
    json_size: int  # the new manifest's JSON size: the output bound when applying


@dataclass(frozen=True, slots=True)
class DeltaIndex:
    product_id: str
    from_version: str
    to_version: str
    patches: tuple[PatchEntry, ...]
    manifest_patch: ManifestPatch | None = None

    @property
    def patch_bytes(self) -> int:
        return sum(p.patch_size for p in self.patches)

    def for_v1(self) -> DeltaIndex:
        """The entries a format-1 reader understands."""
        return DeltaIndex(self.product_id, self.from_version, self.to_version,
                          tuple(p for p in self.patches
                                if p.method in V1_METHODS and p.source_path is not None))

    @property
    def metadata_bytes(self) -> int:
        return self.manifest_patch.patch_size if self.manifest_patch is not None else 0


def encode_delta_index(d: DeltaIndex, format_version: int = DELTA_FORMAT_VERSION) -> bytes:
    if format_version == 1 and d.for_v1() != d:
        raise ValueError("format 1 holds only bsdiff/zstd patches of an existing file")
    doc = {
        "formatVersion": format_version,
        "productId": d.product_id,
        "fromVersion": d.from_version,
        "toVersion": d.to_version,
        "patches": [
            {
                "path": p.path,
                "sourcePath": p.source_path,
                "fromSha256": p.from_sha256 if p.source_path is not None else None,
                "toSha256": p.to_sha256,
                "toSize": p.to_size,
                "method": p.method,
                "patchId": p.patch_id,
                "patchSize": p.patch_size,
            }
            for p in d.patches
        ],
    }
    if format_version >= 2 and d.manifest_patch is not None:
        mp = d.manifest_patch
        doc["manifestPatch"] = {"method": mp.method, "patchId": mp.patch_id,
                                "patchSize": mp.patch_size, "jsonSize": mp.json_size}
    return zstandard.ZstdCompressor(level=10).compress(json.dumps(doc, separators=(",", ":")).encode())


def decode_delta_index(blob: bytes) -> DeltaIndex:
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=MAX_DELTA_BYTES)
        doc = json.loads(raw)
    except (zstandard.ZstdError, ValueError) as exc:
        raise ManifestError("DELTA_INDEX_CORRUPT", "delta", str(exc)) from exc
    if not isinstance(doc, dict):
        raise ManifestError("MANIFEST_SCHEMA", "delta", "not a JSON object")
    version = _need(doc, "formatVersion", int, "")
    if version not in (1, DELTA_FORMAT_VERSION):
        raise ManifestError("MANIFEST_FORMAT_UNSUPPORTED", "formatVersion", "delta index")
    methods = V1_METHODS if version == 1 else METHODS
    patches = []
    for i, p in enumerate(_need(doc, "patches", list, "")):
        w = f"patches[{i}]"
        method = _need(p, "method", str, w)
        if method not in methods:
            raise ManifestError("MANIFEST_SCHEMA", f"{w}.method", f"unknown method {method!r}")
        source: str | None = None
        from_sha = EMPTY_SHA256
        if version == 1 or p.get("sourcePath") is not None:
            source = check_relative_path(_need(p, "sourcePath", str, w), f"{w}.sourcePath")
            from_sha = _hex(_need(p, "fromSha256", str, w), f"{w}.fromSha256")
        elif method != "zstd":  # only a whole-file frame decodes from empty input
            raise ManifestError("MANIFEST_SCHEMA", f"{w}.sourcePath",
                                f"a {method} patch needs a source file")
        patches.append(
            PatchEntry(
                path=check_relative_path(_need(p, "path", str, w), f"{w}.path"),
                source_path=source,
                from_sha256=from_sha,
                to_sha256=_hex(_need(p, "toSha256", str, w), f"{w}.toSha256"),
                to_size=_int(_need(p, "toSize", int, w), f"{w}.toSize", 0, 1 << 42),
                method=method,
                patch_id=_hex(_need(p, "patchId", str, w), f"{w}.patchId"),
                patch_size=_int(_need(p, "patchSize", int, w), f"{w}.patchSize", 1, 1 << 40),
            )
        )
    manifest_patch = None
    mp = doc.get("manifestPatch") if version >= 2 else None
    if mp is not None:
        w = "manifestPatch"
        if _need(mp, "method", str, w) != "zstd":
            raise ManifestError("MANIFEST_SCHEMA", f"{w}.method", "unknown manifest patch method")
        manifest_patch = ManifestPatch(
            "zstd", _hex(_need(mp, "patchId", str, w), f"{w}.patchId"),
            _int(_need(mp, "patchSize", int, w), f"{w}.patchSize", 1, MAX_MANIFEST_PATCH),
            _int(_need(mp, "jsonSize", int, w), f"{w}.jsonSize", 1, MAX_JSON_BYTES),
        )
    return DeltaIndex(
        check_id(_need(doc, "productId", str, ""), "productId"),
        check_id(_need(doc, "fromVersion", str, ""), "fromVersion"),
        check_id(_need(doc, "toVersion", str, ""), "toVersion"),
        tuple(patches),
        manifest_patch,
    )


def rebuild_manifest_blob(old_blob: bytes, patch: bytes, mp: ManifestPatch) -> bytes:
    """The new manifest's signed bytes from the old manifest's signed bytes and a manifest patch.

    The caller checks the new manifest's signature over the result: this only refuses, with
    ``MANIFEST_PATCH_FAILED``, what cannot be a rebuild (a corrupt frame, or other than
    ``mp.json_size`` bytes of JSON, checked before the output is allocated)."""
    from patcher.manifest import compress_manifest_json

    try:
        old_json = zstandard.ZstdDecompressor().decompress(old_blob, max_output_size=MAX_JSON_BYTES)
        frame = zstandard.get_frame_parameters(patch)
        if frame.content_size != mp.json_size:
            raise ManifestError("MANIFEST_PATCH_FAILED", "manifestPatch",
                                f"patch declares {frame.content_size} bytes, expected {mp.json_size}")
        dict_data = zstandard.ZstdCompressionDict(
            old_json, dict_type=zstandard.DICT_TYPE_RAWCONTENT) if old_json else None
        window = max(len(old_json) + mp.json_size - 1, 1).bit_length()
        new_json = zstandard.ZstdDecompressor(
            dict_data=dict_data,
            max_window_size=1 << min(max(window, zstandard.WINDOWLOG_MIN), zstandard.WINDOWLOG_MAX),
        ).decompress(patch, max_output_size=mp.json_size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ManifestError("MANIFEST_PATCH_FAILED", "manifestPatch", str(exc)) from exc
    if len(new_json) != mp.json_size:
        raise ManifestError("MANIFEST_PATCH_FAILED", "manifestPatch",
                            f"patch produced {len(new_json)} bytes, expected {mp.json_size}")
    return compress_manifest_json(new_json)
