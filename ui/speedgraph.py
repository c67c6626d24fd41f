"""A live speed graph: the last N samples of download (network) and write (disk) speed, drawn
with QPainter over a ring buffer (no chart library: QtCharts lives in the large Addons wheel)."""

from __future__ import annotations

from collections import deque

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from ui.models import human_bytes

SAMPLES = 120  # 30 s at the engine's 4 Hz progress events


class SpeedGraph(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.network: deque[float] = deque([0.0] * SAMPLES, maxlen=SAMPLES)
        self.disk: deque[float] = deque([0.0] * SAMPLES, maxlen=SAMPLES)
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setAccessibleName(self.tr("Download speed graph"))

    def add_sample(self, network_bps: float, disk_bps: float) -> None:
        self.network.append(max(0.0, network_bps))
        self.disk.append(max(0.0, disk_bps))
        self.setAccessibleDescription(self.tr("Network {0}/s, disk {1}/s").format(
            human_bytes(network_bps), human_bytes(disk_bps)))
        self.update()

    def _path(self, values: deque[float], rect: QRectF, top: float) -> QPainterPath:
        path = QPainterPath(QPointF(rect.left(), rect.bottom()))
        step = rect.width() / (SAMPLES - 1)
        for i, v in enumerate(values):
            path.lineTo(rect.left() + i * step, rect.bottom() - rect.height() * v / top)
        path.lineTo(rect.right(), rect.bottom())
        path.closeSubpath()
        return path

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        painter.fillRect(self.rect(), pal.color(QPalette.ColorRole.Base))
        rect = QRectF(self.rect()).adjusted(6, 18, -6, -6)
        top = max(1.0, *self.network, *self.disk) * 1.1
        net = QColor(48, 140, 220)
        disk = QColor(230, 140, 40)
        for values, colour in ((self.network, net), (self.disk, disk)):
            fill = QColor(colour)
            fill.setAlpha(70)
            painter.setPen(QPen(colour, 1.5))
            painter.setBrush(fill)
            painter.drawPath(self._path(values, rect, top))
        painter.setPen(pal.color(QPalette.ColorRole.Text))
        painter.drawText(QRectF(6, 0, self.width() - 12, 16),
                         int(Qt.AlignmentFlag.AlignLeft),
                         self.tr("Network {0}/s").format(human_bytes(self.network[-1])))
        painter.drawText(QRectF(6, 0, self.width() - 12, 16),
                         int(Qt.AlignmentFlag.AlignRight),
                         self.tr("Disk {0}/s").format(human_bytes(self.disk[-1])))
        painter.end()
