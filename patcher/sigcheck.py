"""Ed25519 signature checks, without importing ``cryptography`` where it can be helped.

The engine checks a manifest's signature on every install, and ``cryptography``'s bindings (a
10 MB extension) cost 9-32 ms of CPU to import: on an install's way to its first byte, which
is CPU-bound from the command to the first pack byte (issue 13). The interpreter's own ``ssl``
has already loaded OpenSSL's libcrypto, whose Ed25519 is what ``cryptography`` calls too: this
module calls it through ``ctypes`` (1-2 ms to set up). Where no such libcrypto is found, or it
fails its known-answer check, ``cryptography`` checks instead; both give the same answers
(tests/unit/test_sigcheck.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from dataclasses import dataclass
from typing import Any

KEY_SIZE = 32
SIGNATURE_SIZE = 64
_NID_ED25519 = 1087  # EVP_PKEY_ED25519 in OpenSSL 1.1.1 and 3.x
# sonames only (an unversioned libcrypto may be another library's, or abort when loaded)
_LIBCRYPTO = ("libcrypto.so.3", "libcrypto.so.1.1")

# RFC 8032, section 7.1, test 2: a known answer the library must give before it is trusted
_KAT_KEY = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
_KAT_MESSAGE = bytes.fromhex("72")
_KAT_SIGNATURE = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key: its 32 raw bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw", bytes(self.raw))  # ctypes passes bytes only
        if len(self.raw) != KEY_SIZE:
            raise ValueError(f"an Ed25519 public key is {KEY_SIZE} bytes, not {len(self.raw)}")

    def verifies(self, signature: bytes, data: bytes | bytearray | memoryview) -> bool:
        """Whether ``signature`` is this key's over ``data``."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        lib = _openssl()
        if lib is None:
            return _verifies_with_cryptography(self.raw, signature, data)
        return _verifies_with_openssl(lib, self.raw, bytes(signature), data)


def _verifies_with_openssl(lib: Any, key: bytes, signature: bytes,
                           data: bytes | bytearray | memoryview) -> bool:
    message = data if isinstance(data, bytes) else bytes(data)
    pkey = lib.EVP_PKEY_new_raw_public_key(_NID_ED25519, None, key, len(key))
    if not pkey:
        lib.ERR_clear_error()
        return False
    ctx = lib.EVP_MD_CTX_new()
    try:
        if not ctx:
            raise MemoryError("EVP_MD_CTX_new")
        ok = bool(lib.EVP_DigestVerifyInit(ctx, None, None, None, pkey) == 1
                  and lib.EVP_DigestVerify(ctx, signature, len(signature), message,
                                           len(message)) == 1)
        if not ok:  # a refusal queues errors on this thread: never left for ssl to find
            lib.ERR_clear_error()
        return ok
    finally:
        lib.EVP_MD_CTX_free(ctx)
        lib.EVP_PKEY_free(pkey)


def _verifies_with_cryptography(key: bytes, signature: bytes,
                                data: bytes | bytearray | memoryview) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(key).verify(bytes(signature), bytes(data))
    except InvalidSignature:
        return False
    return True


_lock = threading.Lock()
_loaded: list[Any] = []  # [libcrypto or None], once looked for


def openssl_ready() -> bool:
    """Find and check libcrypto now (1-2 ms), not at the first signature: the engine calls it
    beside a grant's round trip."""
    return _openssl() is not None


def _openssl() -> Any:
    """libcrypto with its Ed25519 calls typed, or None (then ``cryptography`` checks)."""
    if _loaded:
        return _loaded[0]
    with _lock:
        if not _loaded:
            _loaded.append(_load_openssl())
    return _loaded[0]


def _load_openssl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    # the interpreter's own libcrypto loaded first (the engine has it already, by hashlib):
    # the soname then finds that copy, not another one a private build might not match
    with contextlib.suppress(ImportError):  # an interpreter without it: the soname alone
        import _hashlib  # noqa: F401
    for name in _LIBCRYPTO:
        try:
            lib = ctypes.CDLL(name)
            _declare(lib)
        except (OSError, AttributeError):  # not there, or without these calls
            continue
        known = (_verifies_with_openssl(lib, _KAT_KEY, _KAT_SIGNATURE, _KAT_MESSAGE),
                 _verifies_with_openssl(lib, _KAT_KEY, _KAT_SIGNATURE, _KAT_MESSAGE + b"!"))
        if known == (True, False):
            return lib
    return None


def _declare(lib: Any) -> None:
    p, size, integer, buf = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p
    calls: dict[str, tuple[list[Any], Any]] = {
        "EVP_PKEY_new_raw_public_key": ([integer, p, buf, size], p),
        "EVP_MD_CTX_new": ([], p),
        "EVP_DigestVerifyInit": ([p, p, p, p, p], integer),
        "EVP_DigestVerify": ([p, buf, size, buf, size], integer),
        "EVP_MD_CTX_free": ([p], None),
        "EVP_PKEY_free": ([p], None),
        "ERR_clear_error": ([], None),
    }
    for name, (args, result) in calls.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
