"""NUL characters (U+0000) in request input are refused at the boundary, for every route.

PostgreSQL cannot store or even compare a text value containing NUL (the driver raises, which
was a 500) while SQLite accepts it, so the same request answered differently on the two
databases. One app-wide dependency (``reject_nul``, installed by ``backend.app``) runs after
routing and before the endpoint: a NUL in a path parameter, a query parameter (name or value)
or any string or key of a JSON request body is 422 ``VALIDATION_ERROR`` naming where it is
(``source.parameter`` / ``source.pointer``), and the endpoint does not run (nothing read or
written). Raw bodies an endpoint streams itself (save blobs) are not JSON input and are not
looked at: their bytes are the player's data. The usual request pays substring searches of the
raw path, query string and body; only a hit is decoded to name the parameter or member.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import Request
from starlette.datastructures import QueryParams
from starlette.requests import HTTPConnection
from starlette.types import Scope

from backend.errors import ValidationFailed

NUL = "\x00"


def json_pointer(parts: Iterable[str | int]) -> str:
    """RFC 6901: ``~`` and ``/`` inside a key are escaped."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def find_nul_in_json(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where the first NUL is in a parsed JSON document (a string value, or a key: then the
    path ends with that key), or None. Iterative: nesting depth is the client's choice."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if NUL in node:
                return where
        elif isinstance(node, dict):
            items = list(node.items())
            for key, _ in items:
                if NUL in key:
                    return (*where, key)
            stack.extend((v, (*where, k)) for k, v in reversed(items))
        elif isinstance(node, list):
            stack.extend((v, (*where, i)) for i, v in reversed(list(enumerate(node))))
    return None


def nul_parameter(path_params: Mapping[str, Any],
                  query: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """The first path or query parameter containing NUL, as (kind, name), or None."""
    for name, value in path_params.items():
        if isinstance(value, str) and NUL in value:
            return "path", name
    for name, value in query:
        if NUL in name or NUL in value:
            return "query", name
    return None


def _refuse_parameter(kind: str, name: str) -> ValidationFailed:
    shown = name.replace(NUL, "\\u0000")
    return ValidationFailed(f"{kind} parameter {shown!r} contains a NUL character (U+0000), "
                            "which is not allowed", parameter=shown)


def check_body(body: bytes) -> None:
    """Raise ``ValidationFailed`` if the JSON body holds a NUL in a string or a key."""
    # in JSON a NUL is the escape \u0000 (a raw NUL byte is invalid JSON, which FastAPI
    # refuses); a NUL byte also catches UTF-16/32 bodies, which json.loads accepts
    if b"\\u0000" not in body and b"\x00" not in body:
        return
    try:
        document = json.loads(body)
    except ValueError:
        return  # not JSON: FastAPI's own validation answers
    where = find_nul_in_json(document)
    if where is not None:
        pointer = json_pointer(where).replace(NUL, "\\u0000")
        raise ValidationFailed(f"{pointer or 'the body'} contains a NUL character (U+0000), "
                               "which is not allowed", pointer=pointer or "/")


def check_parameters(scope: Scope, path_params: Mapping[str, Any]) -> None:
    """Raise ``ValidationFailed`` if a path or query parameter holds a NUL (the raw path and
    query string are searched first; only a hit is decoded to name the parameter)."""
    query = scope.get("query_string", b"")
    if NUL in scope.get("path", "") or b"%00" in query or b"\x00" in query:
        found = nul_parameter(path_params, QueryParams(query).multi_items())
        if found is not None:
            raise _refuse_parameter(*found)


async def reject_nul(conn: HTTPConnection) -> None:
    """App-wide dependency (``FastAPI(dependencies=...)``): raise ``ValidationFailed`` for a NUL
    anywhere in the request's input. It runs after routing (path parameters are known) and
    after FastAPI has read the body, before the endpoint's own parameters are validated."""
    if conn.scope["type"] != "http":
        return  # WebSocket routes take only a token, refused by their own checks
    check_parameters(conn.scope, conn.path_params)
    if isinstance(conn, Request) and getattr(conn.scope.get("route"), "body_field", None):
        # FastAPI has read the body (kept on the request) because the route takes one; routes
        # reading raw bytes themselves (save blobs) have no body field and are not looked at
        check_body(await conn.body())
