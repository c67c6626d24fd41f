"""A manifest taken from the backend beside a grant is used only for the grant's product and
version (``engine.jobs.context.early_for``)."""

from __future__ import annotations

from engine.io.backend_client import TaskGrant
from engine.jobs.context import EarlyManifest, early_for
from patcher.manifest import (
    Block,
    ChunkEntry,
    ChunkLocation,
    Codec,
    FileEntry,
    Manifest,
    decode_manifest,
    encode_manifest,
)


def manifest(product: str, version: str) -> Manifest:
    cid = "ab" * 32
    return decode_manifest(encode_manifest(Manifest(
        product, version, (FileEntry("f", 100, 0o644, "e3" * 32, (ChunkEntry(0, 100, cid),)),),
        (Block("cd" * 32, 0, 100, 100, Codec.RAW),), {cid: ChunkLocation(0, 0)})))


def grant(product: str, version: str) -> TaskGrant:
    return TaskGrant("t1", product, version, f"{product}/manifests/{version}.manifest",
                     f"{product}/manifests/{version}.sig", ())


def early(product: str, version: str, said: str | None = None) -> EarlyManifest:
    return EarlyManifest(said or version, b"blob", b"s" * 64, manifest(product, version))


def test_the_grants_product_and_version_are_taken() -> None:
    got = early("p", "2")
    assert early_for(got, grant("p", "2")) is got


def test_another_version_product_or_a_header_that_lies_is_not_taken() -> None:
    assert early_for(early("p", "1"), grant("p", "2")) is None  # a newer one was published
    assert early_for(early("q", "2"), grant("p", "2")) is None
    # the version the backend named beside a manifest of another (the signed one decides
    # what is installed; early_manifest refuses that pair before it gets here)
    assert early_for(early("p", "1", said="2"), grant("p", "2")) is None
    assert early_for(None, grant("p", "2")) is None
