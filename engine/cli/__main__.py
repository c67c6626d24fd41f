import sys

if sys.platform.startswith("linux"):
    # glibc gives every thread that allocates its own malloc arena (up to 8 per core), and the
    # engine's block workers each touch a few MiB of them: ~11 MB of RSS for nothing at 4 GiB.
    # Two arenas are enough: the big block buffers are mmap'ed, the rest is small and short.
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): keep its default
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX, before any thread exists

from engine.cli.main import main

raise SystemExit(main())
