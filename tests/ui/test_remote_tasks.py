"""The downloads page says which tasks another of the player's devices queued (remote
downloads), in the player's language."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt

from ui.i18n import use_language
from ui.models import TasksModel


def _task(task_id: str, remote: bool) -> dict[str, Any]:
    return {"taskId": task_id, "productId": "star-courier", "versionId": "1.1.0",
            "status": "queued", "downloadedBytes": 0, "downloadSizeBytes": 10, "errorCode": None,
            "remote": remote}


def test_a_remote_download_is_marked_in_the_queue(qapp: Any) -> None:
    model = TasksModel()
    model.set_tasks([_task("local", False), _task("remote", True)])
    game = TasksModel.COLUMNS.index("game")

    def shown(row: int) -> str:
        return str(model.data(model.index(row, game), Qt.ItemDataRole.DisplayRole))

    try:
        use_language("en")
        assert shown(0) == "star-courier 1.1.0"
        assert shown(1) == "star-courier 1.1.0 (from another device)"
        use_language("ru")
        assert shown(1) == "star-courier 1.1.0 (с другого устройства)"
    finally:
        use_language("en")
