"""Deterministic test data shared by the content-format tests."""

from __future__ import annotations

import random

KiB = 1024
MiB = 1024 * KiB


def rand(seed: int, size: int) -> bytes:
    """Incompressible bytes (like textures and audio)."""
    return random.Random(seed).randbytes(size)


def text(seed: int, size: int, vocabulary: int = 400) -> bytes:
    """Compressible, varied text (so FastCDC finds content-defined cut points in it too)."""
    rnd = random.Random(seed)
    words = [
        "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randrange(2, 10)))
        for _ in range(vocabulary)
    ]
    out: list[str] = []
    n = 0
    while n < size:
        line = " ".join(rnd.choice(words) for _ in range(rnd.randrange(3, 14))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]
