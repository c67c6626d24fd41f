"""Building the engine's events (typed, see ``engine.core.messages``): the rules for what a
status update says — progress percentage, speed, ETA — live here, in one place."""

from __future__ import annotations

from typing import Any

from engine.core.fetchrules import FetchState, final_error
from engine.core.messages import DownloadError, DownloadRetry, ItemProgress, RetryKind, TaskStatus

STATUS = TaskStatus.TYPE
ITEM = ItemProgress.TYPE
ERROR = DownloadError.TYPE
RETRY = DownloadRetry.TYPE


def status_event(task_id: str, status: str, *, downloaded: int = 0, total: int = 0,
                 speed_bps: float = 0.0, eta_s: float | None = None,
                 error: dict[str, Any] | None = None, product_id: str | None = None,
                 written: int = 0, install_total: int = 0) -> TaskStatus:
    pct = 100.0 * downloaded / total if total else (100.0 if status == "completed" else 0.0)
    return TaskStatus(
        task_id=task_id, product_id=product_id, status=str(status),
        total_progress_percentage=round(pct, 2), download_speed_bps=int(speed_bps),
        estimated_time_left_seconds=None if eta_s is None else int(eta_s),
        downloaded_bytes=downloaded, total_size_bytes=total, written_bytes=written,
        install_size_bytes=install_total, error_details=error)


def item_event(task_id: str, item_id: str, path: str, status: str, done: int,
               total: int) -> ItemProgress:
    return ItemProgress(task_id, item_id, path, status, done, total)


def error_event(task_id: str, code: str, message: str, item_id: str | None = None,
                fatal: bool = True) -> DownloadError:
    return DownloadError(task_id, item_id, str(code), message, fatal)


def retry_event(task_id: str, state: FetchState, next_source_id: str, what: str,
                path: str | None = None) -> DownloadRetry | None:
    """What a unit of work fetched again after a failure says (None on a first try): failover
    when the next source differs from the one that failed, and the code it would end with."""
    last = state.last
    if last is None:
        return None
    kind = RetryKind.RETRY if next_source_id == last.source_id else RetryKind.FAILOVER
    return DownloadRetry(task_id, path, last.source_id, next_source_id, state.attempt,
                         str(final_error(state, what).code), last.detail, kind)
