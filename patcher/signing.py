"""Ed25519 signatures over the exact manifest bytes that are served.

The signature covers the compressed bytes, so the engine verifies before it decompresses
anything an attacker could have crafted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from patcher.errors import ManifestError
from patcher.manifest import Manifest, decode_manifest, encode_manifest
from patcher.sigcheck import SIGNATURE_SIZE, PublicKey

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# ``cryptography`` is imported by what signs (the publisher, the store, tests); checking a
# signature does without it (``patcher.sigcheck``): the engine's installs never import it

__all__ = ["SIGNATURE_SIZE", "PublicKey"]


def generate_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_key_of(key: Ed25519PrivateKey | Ed25519PublicKey | PublicKey) -> PublicKey:
    """The key as this package checks with it (a signer's keys are ``cryptography``'s)."""
    if isinstance(key, PublicKey):
        return key
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return PublicKey(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey | PublicKey) -> str:
    return public_key_of(key).raw.hex()


def load_public_key(hex_key: str) -> PublicKey:
    try:
        return PublicKey(bytes.fromhex(hex_key))
    except ValueError as exc:
        raise ManifestError("MANIFEST_KEY_INVALID", "publicKey", str(exc)) from exc


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a raw 32-byte key, or create one with mode 0600 on first use."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(path.read_bytes())
    key = generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_key_bytes(key))
    return key


def sign_manifest(manifest: Manifest, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """Return (manifest bytes, signature)."""
    blob = encode_manifest(manifest)
    return blob, key.sign(blob)


def verify_signature(blob: bytes, signature: bytes,
                     public_key: PublicKey | Ed25519PublicKey) -> None:
    if len(signature) != SIGNATURE_SIZE:
        raise ManifestError("MANIFEST_SIGNATURE_INVALID", "signature", f"{len(signature)} bytes")
    if not public_key_of(public_key).verifies(signature, blob):
        raise ManifestError(
            "MANIFEST_SIGNATURE_INVALID", "signature", "does not match the manifest bytes"
        )


def load_signed_manifest(blob: bytes, signature: bytes,
                         public_key: PublicKey | Ed25519PublicKey) -> Manifest:
    """The engine's entry point: signature first, then size limits, then the strict schema."""
    verify_signature(blob, signature, public_key)
    return decode_manifest(blob)
