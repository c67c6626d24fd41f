"""The seed's ``DownloadItem`` (download seed 4.1): a task's per-file list, derived from the
signed manifest of its version (and, for an update, of the version it starts from).

The backend sees a task's status and its downloaded bytes as the engine reports them, not each
file's progress (that lives in the engine's own daemon): an item is ``completed`` once its task
completed, ``error``/``paused``/``verifying`` with its task, else ``pending``, and its
``downloadedBytes`` is its size once completed, else 0.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Literal

from backend.catalog import Catalog
from backend.db import DownloadTask
from backend.schemas import Data, DownloadTaskResource, Model

ItemStatus = Literal["pending", "downloading", "paused", "completed", "error", "verifying",
                     "cancelled"]

_FROM_TASK = {"completed": "completed", "error": "error", "paused": "paused",
              "verifying": "verifying", "cancelled": "cancelled"}


class DownloadItemAttributes(Model):
    downloadTaskId: str
    relativePath: str
    status: ItemStatus
    downloadedBytes: int
    totalSizeBytes: int
    expectedHashSha256: str
    retryCount: int
    cdnUrlCurrent: str | None
    createdAt: datetime
    updatedAt: datetime


class DownloadItemResource(Model):
    type: Literal["downloadItem"] = "downloadItem"
    id: str
    attributes: DownloadItemAttributes


class DownloadTaskDocument(Data[DownloadTaskResource]):
    """``GET /tasks/{id}``: the task, and with ``?include=items`` its ``DownloadItem``s."""

    included: list[DownloadItemResource] | None = None


def item_id(task_id: str, path: str) -> str:
    """Stable per task and path (the same answer on every read and every worker)."""
    return hashlib.sha256(f"{task_id}\n{path}".encode()).hexdigest()[:32]


def download_items(catalog: Catalog, t: DownloadTask | SimpleNamespace) -> list[dict[str, Any]]:
    """Every file the task writes: for an install all of the version's files, for an update the
    files that are new or changed since ``fromVersionId`` (manifest order)."""
    manifest = catalog.manifest(t.product_id, t.version_id)
    unchanged: set[tuple[str, str]] = set()
    if t.kind == "update" and t.from_version_id:
        known = {v.version_id for v in catalog.versions(t.product_id)}
        if t.from_version_id in known:
            old = catalog.manifest(t.product_id, t.from_version_id)
            unchanged = {(f.path, f.hash_sha256) for f in old.files}
    status = _FROM_TASK.get(t.status, "pending")
    out = []
    for f in manifest.files:
        if (f.path, f.hash_sha256) in unchanged:
            continue
        out.append({"type": "downloadItem", "id": item_id(t.id, f.path), "attributes": {
            "downloadTaskId": t.id, "relativePath": f.path, "status": status,
            "downloadedBytes": f.size if status == "completed" else 0,
            "totalSizeBytes": f.size, "expectedHashSha256": f.hash_sha256, "retryCount": 0,
            "cdnUrlCurrent": None, "createdAt": t.created_at, "updatedAt": t.updated_at}})
    return out
