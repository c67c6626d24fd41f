"""One launcher per user: a second start asks the first to show its window, then exits."""

from __future__ import annotations

import getpass

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket


def default_name() -> str:
    return f"game-launcher-{getpass.getuser()}"


class SingleInstance(QObject):
    activated = Signal()  # another start asked this one to come forward

    def __init__(self, name: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name or default_name()
        self.server: QLocalServer | None = None

    def acquire(self, timeout_ms: int = 500) -> bool:
        """True when this is the first instance (it now listens); False after waking the first."""
        probe = QLocalSocket()
        probe.connectToServer(self.name)
        if probe.waitForConnected(timeout_ms):
            probe.write(b"raise\n")
            probe.waitForBytesWritten(timeout_ms)
            probe.disconnectFromServer()
            return False
        QLocalServer.removeServer(self.name)  # a stale socket of a crashed launcher
        self.server = QLocalServer(self)
        self.server.newConnection.connect(self._wake)
        return self.server.listen(self.name)

    def _wake(self) -> None:
        assert self.server is not None
        while (conn := self.server.nextPendingConnection()) is not None:
            conn.disconnected.connect(conn.deleteLater)
            self.activated.emit()
