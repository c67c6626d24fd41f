"""The FastAPI applications: the full platform API, and a CDN-only edge.

Every error leaves in the seeds' envelope (``backend.errors``): domain ``ApiError``s, FastAPI's
own 404/405/422 and unexpected exceptions (500) alike.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend import (
    achievements,
    auth_routes,
    categories,
    covers,
    downloads,
    family,
    library,
    library_downloads,
    observability,
    playtime,
    progress_ws,
    saves,
    wishlist,
    ws,
)
from backend.cdn import cdn_router
from backend.config import Secrets, Settings
from backend.context import Context
from backend.errors import ApiError, default_error, error_body, error_object
from backend.nulguard import reject_nul

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"


def _pointer(loc: tuple[Any, ...] | list[Any]) -> dict[str, str]:
    where, rest = (loc[0], list(loc[1:])) if loc else ("body", [])
    if where == "body":
        return {"pointer": "/" + "/".join(str(p) for p in rest)}
    return {"parameter": str(rest[0]) if rest else str(where)}


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(error_body(exc.to_dict()), status_code=exc.status, headers=exc.headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    return JSONResponse(error_body(default_error(exc.status_code, detail)),
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for e in exc.errors()[:20]:
        loc = tuple(e.get("loc", ()))
        errors.append(error_object(422, "VALIDATION_ERROR", "Invalid request",
                                   f"{'.'.join(str(p) for p in loc)}: {e.get('msg', 'invalid')}",
                                   _pointer(loc)))
    if not errors:
        errors.append(error_object(422, "VALIDATION_ERROR", "Invalid request", "invalid request"))
    return JSONResponse(error_body(*errors), status_code=422)


async def _database_down(_: Request, exc: Exception) -> JSONResponse:
    """The database refused or dropped the connection: the service is unavailable, not broken
    (the pool has dropped its connections; the next request reconnects)."""
    log.warning("database unavailable: %s", exc)
    return JSONResponse(error_body(default_error(503, "database unavailable")), status_code=503)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body(default_error(500, "internal error")), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(Exception, _unexpected)


def _openapi_with_error_envelope(app: FastAPI) -> dict[str, Any]:
    """FastAPI documents 422 with its own schema; ours is the seed's envelope."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    comps = doc.setdefault("components", {}).setdefault("schemas", {})
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    if "ErrorBody" not in comps:
        from backend.schemas import ErrorBody

        comps["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/"
                                                         "{model}")
        for name, sub in comps["ErrorBody"].pop("$defs", {}).items():
            comps.setdefault(name, sub)
    for path_item in doc.get("paths", {}).values():
        for op in path_item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            if "requestBody" in op:  # an unparsable body is a 400 (JSON) before validation
                op["responses"].setdefault("400", {"description": "Body is not valid JSON"})
            for status, resp in op["responses"].items():
                if status.isdigit() and int(status) >= 400:
                    resp["content"] = {"application/json": {"schema": ref}}
    comps.pop("HTTPValidationError", None)
    comps.pop("ValidationError", None)
    app.openapi_schema = doc
    return doc


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="Game launcher platform API",
        version=API_VERSION,
        description="Accounts, library, manifests, signed CDN URLs, updates, playtime, saves, "
                    "achievements and live library events (WebSocket).",
        dependencies=[Depends(reject_nul)],  # NUL in any input: 422 on every database
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(downloads.hot_router)  # first: see its comment
    app.include_router(auth_routes.router)
    app.include_router(library.router)
    app.include_router(categories.router)
    app.include_router(wishlist.router)
    app.include_router(family.router)
    app.include_router(covers.router)
    app.include_router(playtime.router)
    app.include_router(saves.router)
    app.include_router(achievements.router)
    app.include_router(achievements.icons_router)
    app.include_router(ws.router)
    app.include_router(progress_ws.router)
    app.include_router(library_downloads.router)
    library.watch_download_tasks(ctx)
    progress_ws.watch_history(ctx)
    app.include_router(downloads.router)
    app.include_router(cdn_router(ctx.settings.cdn_root, lambda r: r.app.state.ctx.secrets.cdn_key))

    @app.get("/api/v1/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    _observability_routes(app, ctx)
    app.openapi = lambda: _openapi_with_error_envelope(app)  # type: ignore[method-assign]
    return app


def _observability_routes(app: FastAPI, ctx: Context) -> None:
    writer = observability.SnapshotWriter(ctx.settings.metrics_dir)
    writer.start()
    app.add_middleware(observability.ObservabilityMiddleware,
                       log_requests=ctx.settings.access_log)

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, Any]:
        """Liveness: this worker serves (``pid`` tells which worker answered)."""
        return {"status": "ok", "pid": os.getpid()}

    def check_db() -> None:
        with ctx.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def check_redis() -> None:
        ctx.redis.ping()

    @app.get("/readyz", tags=["meta"])
    def readyz() -> JSONResponse:
        """Readiness: the database, Redis (if configured) and save storage answer."""
        checks = {"database": check_db, "storage": ctx.save_storage.check}
        if ctx.redis is not None:
            checks["redis"] = check_redis
        status, body = observability.readiness(checks)
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", tags=["meta"], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus text format, summed over every live worker."""
        total, workers = writer.collect()
        return PlainTextResponse(observability.render(total, workers),
                                 media_type="text/plain; version=0.0.4")


def create_cdn_app(settings: Settings) -> FastAPI:
    """A CDN-only edge sharing the data dir's CDN secret (``launcher-backend cdn``)."""
    secrets = Secrets.load(settings)
    app = FastAPI(title="Game launcher CDN edge", version=API_VERSION, docs_url=None,
                  redoc_url=None, dependencies=[Depends(reject_nul)])
    install_error_handlers(app)
    app.include_router(cdn_router(settings.cdn_root, lambda _r: secrets.cdn_key))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
