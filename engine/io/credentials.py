"""Session storage: the OS keyring, or a 0600 file where no keyring backend exists.

What is kept: the refresh token and, beside it, the last access token with its expiry (wall
clock). An in-process command started while that access token is still good asks the backend
for nothing before its first real request (a refresh is a round trip and a database write on
the backend: 20-300 ms before an install's grant, issue 13). The access token is no more
exposed than the refresh token stored with it, which can mint new ones; a token the backend
refuses (401) is dropped and the refresh token asked for a new one, as before.

The refresh token is stored alone, as every version has stored it, so an older engine (a
launcher rolled back) still reads it; the access token is a second entry (keyring account
``ACCOUNT#access``, or the 0600 file ``credentials-access``): ``ACCESS EXPIRES_AT REFRESH_TAG``,
where the tag names the refresh token it came with, so an access token left by another session
(an older engine that logged in again does not know this entry) is never used. A refresh token
stored with an access token on a second line (how this was first written) is still read; that
access token is not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
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


AccessToken = tuple[str, float]  # (token, expiry as a wall-clock timestamp)


def stored_refresh(text: str) -> str | None:
    """The refresh token of the stored text: its first line (a second one, as this was first
    written, held an access token, which is simply asked for again)."""
    lines = text.strip().splitlines()
    return (lines[0].strip() or None) if lines else None


def refresh_tag(refresh: str) -> str:
    """Names a refresh token without revealing it."""
    return hashlib.sha256(refresh.encode()).hexdigest()[:16]


def access_text(access: AccessToken, refresh: str) -> str:
    return f"{access[0]} {access[1]:.3f} {refresh_tag(refresh)}\n"


def parse_access(text: str, refresh: str) -> AccessToken | None:
    """The stored access token when it came with ``refresh``; nothing malformed is trusted."""
    parts = text.split()
    if len(parts) != 3 or parts[2] != refresh_tag(refresh):
        return None
    try:
        return parts[0], float(parts[1])
    except ValueError:
        return None


ACCESS_ENTRY = "#access"
ACCOUNT_LINE = "account "  # a later line of the refresh file: the backend it was written for


def written_for(text: str) -> str | None:
    """The backend a stored refresh file names (None: an older engine's, which named none)."""
    for line in text.splitlines()[1:]:
        if line.startswith(ACCOUNT_LINE):
            return line[len(ACCOUNT_LINE):].strip()
    return None


class CredentialStore:
    def __init__(self, data_dir: Path, account: str, use_keyring: bool = True) -> None:
        self.file = data_dir / "credentials"
        self.access_file = data_dir / "credentials-access"
        self.account = account
        self._keyring: bool | None = None if use_keyring else False
        self._refresh: str | None = None
        self._access: AccessToken | None = None

    @property
    def use_keyring(self) -> bool:
        """Whether secrets go to the OS keyring: asked of keyring once, when first needed (its
        detection costs 0.1-0.2 s, and a command whose tokens are in the file needs none)."""
        if self._keyring is None:
            self._keyring = _keyring_usable()
        return self._keyring

    def load(self) -> str | None:
        """The stored refresh token (the access token kept beside it: ``access``)."""
        text, in_file = self._read_refresh()
        self._refresh = stored_refresh(text) if text else None
        self._access = None
        if self._refresh is not None:
            # kept where its refresh token is (both are written through ``_write`` together;
            # the access entry's tag names its refresh token, so no other session's is used)
            stored = (self.access_file.read_text() if self.access_file.exists() else None) \
                if in_file else self._read(self.account + ACCESS_ENTRY, self.access_file)
            if stored:
                self._access = parse_access(stored, self._refresh)
        return self._refresh

    def _read_refresh(self) -> tuple[str | None, bool]:
        """The stored refresh token's text, and whether it came from the file. The file first
        when it was written for this account: every keyring write removes it (``_write``), so
        it then holds this account's last value (the keyring was missing or failing), and
        reading it needs no keyring detection on the engine's start (issue 13, first byte).
        The file is one per data folder, the keyring's entries one per backend: a file written
        for another backend (or by an older engine, which did not name it) comes after this
        backend's keyring entry, as it always did."""
        text = self.file.read_text() if self.file.exists() else None
        if text is not None and written_for(text) == self.account:
            return text, True
        if self.use_keyring:
            from_keyring = self._keyring_get(self.account, self.file)
            if from_keyring:
                return from_keyring, False
        return text, text is not None

    def access(self, min_left_s: float = 60.0) -> AccessToken | None:
        """The access token stored with the refresh token ``load`` returned, while it has at
        least ``min_left_s`` to live."""
        if self._access is None or self._access[1] - time.time() < min_left_s:
            return None
        return self._access

    def _read(self, account: str, file: Path) -> str | None:
        if self.use_keyring:
            value = self._keyring_get(account, file)
            if value:
                return value
        if file.exists():
            return file.read_text()
        return None

    def _keyring_get(self, account: str, file: Path) -> str | None:
        import keyring

        try:
            value: str | None = keyring.get_password(SERVICE, account)
            return value
        except Exception as exc:
            log.warning("keyring unavailable (%s); using %s", exc, file)
            return None

    def save(self, token: str | None) -> None:
        """A new refresh token (None: logged out, the access token goes with it)."""
        if token != self._refresh:
            # a new session or a logout: what was cached belonged to the last one (its tag no
            # longer matches either; removing it keeps nothing of an ended session stored)
            self._access = None
            self._write(self.account + ACCESS_ENTRY, self.access_file, None)
        self._refresh = token
        # the file (where no keyring holds it) names the backend it is for (``written_for``)
        self._write(self.account, self.file, token,
                    file_text=None if token is None else f"{token}\n{ACCOUNT_LINE}{self.account}\n")

    def save_access(self, token: str, expires_at: float) -> None:
        """The current access token, kept with the refresh token (nothing without one)."""
        self._access = (token, expires_at)
        if self._refresh is not None:
            self._write(self.account + ACCESS_ENTRY, self.access_file,
                        access_text(self._access, self._refresh))

    def _write(self, account: str, file: Path, text: str | None, *,
               file_text: str | None = None) -> None:
        global _warned
        if self.use_keyring:
            import keyring

            try:
                if text is None:
                    with contextlib.suppress(keyring.errors.PasswordDeleteError):
                        keyring.delete_password(SERVICE, account)
                else:
                    keyring.set_password(SERVICE, account, text)
                file.unlink(missing_ok=True)
                return
            except Exception as exc:
                log.warning("keyring unavailable (%s)", exc)
        if text is None:
            file.unlink(missing_ok=True)
            return
        if not _warned and not file.exists():  # said once, when the file is created
            log.warning("no OS keyring: session tokens stored in %s (mode 0600)", file.parent)
            _warned = True
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(file_text or text)
        os.replace(tmp, file)
