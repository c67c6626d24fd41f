"""Ed25519 checks through the interpreter's libcrypto (``patcher.sigcheck``) answer what
``cryptography`` answers, leave no OpenSSL error behind, and spare the engine's manifest checks
the import of ``cryptography`` (issue 13: 10-30 ms of an install's first byte)."""

from __future__ import annotations

import ctypes
import random
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from patcher import sigcheck
from patcher.errors import ManifestError
from patcher.signing import load_public_key, public_key_hex, verify_signature
from testing.processes import REPO, subprocess_env

# Ed25519's group order: S at or past it is not a canonical signature (both must refuse it)
L = 2**252 + 27742317777372353535851937790883648493


def _both(key: bytes, sig: bytes, msg: bytes) -> tuple[bool, bool]:
    lib = sigcheck._openssl()
    assert lib is not None
    return (sigcheck._verifies_with_openssl(lib, key, sig, msg),
            sigcheck._verifies_with_cryptography(key, sig, msg))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libcrypto by soname: Linux")
def test_the_interpreters_libcrypto_is_used() -> None:
    assert sigcheck._openssl() is not None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libcrypto by soname: Linux")
def test_libcrypto_answers_what_cryptography_answers() -> None:
    rng = random.Random(25)
    cases = 0
    for n in range(60):
        priv = Ed25519PrivateKey.generate()
        key = bytes.fromhex(public_key_hex(priv))
        msg = rng.randbytes(rng.choice([0, 1, 63, 64, 1000, 70_000]))
        sig = priv.sign(msg)
        variants: list[tuple[bytes, bytes, bytes]] = [(key, sig, msg)]
        if msg:
            bad = bytearray(msg)
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
            variants.append((key, sig, bytes(bad)))
        for _ in range(3):
            bad_sig = bytearray(sig)
            bad_sig[rng.randrange(64)] ^= 1 << rng.randrange(8)
            variants.append((key, bytes(bad_sig), msg))
        # S + L: the same signature, not canonical
        s = int.from_bytes(sig[32:], "little") + L
        if s < 2**256:
            variants.append((key, sig[:32] + s.to_bytes(32, "little"), msg))
        variants.append((bytes.fromhex(public_key_hex(Ed25519PrivateKey.generate())), sig, msg))
        variants.append((rng.randbytes(32), sig, msg))  # most are no curve point at all
        variants.append((bytes(32), sig, msg))
        variants.append((key, bytes(64), msg))
        variants.append((bytes(32), bytes(64), msg))  # a small-order key: both accept some
        for k, sg, m in variants:
            openssl, reference = _both(k, sg, m)
            assert openssl == reference, (n, k.hex(), sg.hex(), len(m))
            cases += 1
        assert _both(key, sig, msg) == (True, True)
    assert cases > 500


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libcrypto by soname: Linux")
def test_a_refusal_leaves_no_openssl_error_behind() -> None:
    """A key OpenSSL refuses queues an error on this thread, which ssl would read as its own."""
    lib = sigcheck._openssl()
    peek = lib.ERR_peek_error
    peek.argtypes, peek.restype = [], ctypes.c_ulong
    assert peek() == 0
    assert not sigcheck._verifies_with_openssl(lib, b"abc", sigcheck._KAT_SIGNATURE, b"x")
    assert peek() == 0
    for key, sig, msg in ((sigcheck._KAT_KEY, sigcheck._KAT_SIGNATURE, b"another message"),
                          (sigcheck._KAT_KEY, bytes(63), b"x"), ((2).to_bytes(32, "little"),
                                                                 bytes(64), b"x")):
        assert not sigcheck._verifies_with_openssl(lib, key, sig, msg)
        assert peek() == 0


def test_bad_keys_and_signatures_are_refused_by_name() -> None:
    for text in ("", "zz", "00" * 31, "00" * 33):
        with pytest.raises(ManifestError) as exc:
            load_public_key(text)
        assert exc.value.code == "MANIFEST_KEY_INVALID"
    key = load_public_key(sigcheck._KAT_KEY.hex())
    for sig in (b"", sigcheck._KAT_SIGNATURE[:63], sigcheck._KAT_SIGNATURE + b"\0"):
        with pytest.raises(ManifestError) as exc:
            verify_signature(sigcheck._KAT_MESSAGE, sig, key)
        assert exc.value.code == "MANIFEST_SIGNATURE_INVALID"
    verify_signature(sigcheck._KAT_MESSAGE, sigcheck._KAT_SIGNATURE, key)
    # the publisher's own key objects are still taken
    priv = Ed25519PrivateKey.generate()
    verify_signature(b"doc", priv.sign(b"doc"), priv.public_key())
    with pytest.raises(ManifestError):
        verify_signature(b"doc!", priv.sign(b"doc"), priv.public_key())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libcrypto by soname: Linux")
def test_checking_a_manifest_signature_does_not_import_cryptography() -> None:
    priv = Ed25519PrivateKey.generate()
    sig = priv.sign(b"manifest bytes")
    script = (
        "import sys\n"
        "from patcher.signing import load_public_key, verify_signature\n"
        f"verify_signature(b'manifest bytes', bytes.fromhex({sig.hex()!r}),"
        f" load_public_key({public_key_hex(priv)!r}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=subprocess_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
