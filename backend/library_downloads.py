"""Flow 14.1's entry point (download seed): ``POST /api/v1/library/me/downloads``.

The client asks the Library Service; it checks the entitlement and has the Download Service
create the task. Here both are one process: the route creates exactly the task ``POST
/api/v1/download/tasks`` creates (same checks, queue limit, rate limit and answer: 202 with the
``downloadTask``, its ``queuePosition`` and signed ``cdnSources``) and says where it lives in
``Location``. The client then follows it on ``/ws/download/progress?taskId=``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import Field, model_validator

from backend.context import CtxDep, UserDep
from backend.downloads import Announcements, _position, create_task, task_change, task_resource
from backend.family import check_lent_access
from backend.library import require_entitlement
from backend.schemas import (
    Data,
    DeviceId,
    DownloadTaskResource,
    Model,
    ProductId,
    VersionId,
    error_responses,
)

router = APIRouter(prefix="/api/v1/library/me", tags=["library"])


class LibraryDownloadAttributes(Model):
    """The seed's ``(productId, versionId)``; ``product_id``/``version_id`` are taken too."""

    productId: ProductId | None = None
    versionId: VersionId | None = None
    product_id: ProductId | None = None
    version_id: VersionId | None = None
    targetPath: str | None = Field(default=None, min_length=1, max_length=4096)
    priority: int = Field(default=0, ge=0, le=10)
    deviceId: DeviceId | None = None
    targetDeviceId: DeviceId | None = None

    @model_validator(mode="after")
    def _one_name(self) -> LibraryDownloadAttributes:
        for ours, seeds in (("productId", "product_id"), ("versionId", "version_id")):
            a, b = getattr(self, ours), getattr(self, seeds)
            if a is not None and b is not None and a != b:
                raise ValueError(f"{ours} and {seeds} disagree")
        if (self.productId or self.product_id) is None:
            raise ValueError("productId is required")
        return self


class LibraryDownloadRequest(Model):
    type: Literal["downloadTaskRequest", "libraryDownloadRequest"] = "downloadTaskRequest"
    attributes: LibraryDownloadAttributes


@router.post("/downloads", status_code=202, response_model=Data[DownloadTaskResource],
             responses=error_responses(401, 403, 404, 409, 422, 429))
def start_download(body: Data[LibraryDownloadRequest], response: Response, ctx: CtxDep,
                   user: UserDep) -> dict[str, Any]:
    a = body.data.attributes
    product = a.productId or a.product_id
    assert product is not None
    version = a.versionId or a.version_id
    with Announcements(ctx, user.id) as changed, ctx.db.session() as s:
        item = require_entitlement(s, user.id, product, "/data/attributes/productId",
                                   catalog=ctx.catalog)
        check_lent_access(ctx, s, item)
        v = ctx.catalog.resolve_version(product, version, "/data/attributes/versionId")
        info = ctx.catalog.manifest_info(product, v.version_id)
        task, sources = create_task(
            ctx, s, user.id, product=product, version=v.version_id, from_version=None,
            kind="install", target_path=a.targetPath or product, priority=a.priority,
            total=info.total_size, download=info.install_bytes, device_id=a.deviceId,
            target_device_id=a.targetDeviceId)
        changed.append(task_change(task, "created"))
        doc = task_resource(ctx, task, position=_position(s, task), sources=sources)
    response.headers["Location"] = doc["links"]["self"]
    return {"data": doc}
