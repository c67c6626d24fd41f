"""Refresh-token storage: the OS keyring, or a 0600 file where no keyring backend exists."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)
SERVICE = "game-launcher-engine"
FAIL_BACKEND = "keyring.backends.fail.Keyring"
_warned = False


def _keyring_usable() -> bool:
    """Whether keyring finds a backend that can hold a secret (``keyring.get_keyring()``).

    Two shortcuts keep its cost (0.1-0.2 s, on every in-process command) off the engine's start
    where the answer is known without it: keyring's own ``PYTHON_KEYRING_BACKEND`` naming its
    fail backend (the tests and benchmarks do) needs no import at all; elsewhere than macOS, the
    macOS backend is kept from loading its Security framework (three ``find_library`` calls,
    each running ``ldconfig``: ~0.1 s) — its priority check refuses any other system before it
    looks at that API, so detection chooses the same backend.
    """
    if os.environ.get("PYTHON_KEYRING_BACKEND") == FAIL_BACKEND:
        return False
    if sys.platform != "darwin" and "keyring.backends.macOS.api" not in sys.modules:
        sys.modules["keyring.backends.macOS.api"] = None  # type: ignore[assignment]  # "not importable"
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
        if isinstance(backend, fail.Keyring):
            return False
        if type(backend).__name__ == "ChainerBackend":
            return bool(getattr(backend, "backends", None))
        return True
    except Exception:
        return False


class CredentialStore:
    def __init__(self, data_dir: Path, account: str, use_keyring: bool = True) -> None:
        self.file = data_dir / "credentials"
        self.account = account
        self.use_keyring = use_keyring and _keyring_usable()

    def load(self) -> str | None:
        if self.use_keyring:
            import keyring

            try:
                value = keyring.get_password(SERVICE, self.account)
                if value:
                    return value
            except Exception as exc:
                log.warning("keyring unavailable (%s); using %s", exc, self.file)
        if self.file.exists():
            return self.file.read_text().strip() or None
        return None

    def save(self, token: str | None) -> None:
        global _warned
        if self.use_keyring:
            import keyring

            try:
                if token is None:
                    with contextlib.suppress(keyring.errors.PasswordDeleteError):
                        keyring.delete_password(SERVICE, self.account)
                else:
                    keyring.set_password(SERVICE, self.account, token)
                self.file.unlink(missing_ok=True)
                return
            except Exception as exc:
                log.warning("keyring unavailable (%s)", exc)
        if token is None:
            self.file.unlink(missing_ok=True)
            return
        if not _warned and not self.file.exists():  # said once, when the file is created
            log.warning("no OS keyring: refresh token stored in %s (mode 0600)", self.file)
            _warned = True
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        os.replace(tmp, self.file)
