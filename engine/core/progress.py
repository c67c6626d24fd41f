"""Progress of one task: bytes, smoothed speed and ETA, emitted at a bounded rate."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SpeedMeter:
    """Exponentially smoothed bytes/second over irregular samples."""

    half_life_s: float = 2.0
    rate: float = 0.0
    _last_time: float | None = None
    _last_bytes: int = 0

    def sample(self, total_bytes: int, now: float) -> float:
        if self._last_time is None:
            self._last_time, self._last_bytes = now, total_bytes
            return self.rate
        dt = now - self._last_time
        if dt <= 0:
            return self.rate
        inst = (total_bytes - self._last_bytes) / dt
        alpha = 1 - 0.5 ** (dt / self.half_life_s)
        self.rate = inst if self.rate == 0 else self.rate + alpha * (inst - self.rate)
        self._last_time, self._last_bytes = now, total_bytes
        return self.rate


@dataclass(slots=True)
class TaskProgress:
    download_total: int = 0  # bytes on the wire this task needs in all (including done)
    downloaded: int = 0
    install_total: int = 0
    written: int = 0
    speed: SpeedMeter = field(default_factory=SpeedMeter)

    def eta(self) -> float | None:
        left = self.download_total - self.downloaded
        if left <= 0:
            return 0.0
        if self.speed.rate <= 1:
            return None
        return left / self.speed.rate
