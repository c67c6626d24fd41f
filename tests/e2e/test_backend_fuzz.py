"""Property-based fuzzing of every documented operation with schemathesis (bounded examples).

For each operation, with valid (positive) and invalid (negative) generated requests: no 5xx,
every error in the seeds' envelope, and responses conform to the OpenAPI document the server
publishes (status codes, content types, schemas).

(schemathesis' lazy ``from_fixture`` loader does not work with pytest 9, so the operations are
iterated here with one Hypothesis run each.)

Drawing the cases is most of the cost (hypothesis-jsonschema) and nothing drawn depends on a
response, so an operation's cases are drawn first and sent while the next operation's are drawn
(the server works on its own core meanwhile), and the second database kind gets the cases drawn
for the first (the same OpenAPI document, the same seed: the same cases) instead of drawing them
again. They go out one at a time, in the order drawn, on one kept-alive connection.
"""

from __future__ import annotations

import ast
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.transport.requests import ManagedCookiesSession

# drawn lazily by the first st.randoms(): imported here, in the main thread, before any case is
# drawn beside a sending thread (see one_ast_parse_at_a_time)
import hypothesis.strategies._internal.random  # noqa: F401  # isort: skip

from tests.conftest import BackendServer, PublishedStore, assert_error

EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 8}
MALFORMED_REQUEST = b"Invalid HTTP request received."  # uvicorn's own reply to broken HTTP
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]

Batch = tuple[str, GenerationMode, list[Any]]  # operation label, mode, its cases in order
# The cases are derandomized: every run sends the same ones, so CI cannot fail on a lucky draw.
# This is the seed `derandomize=True` derived (from the source of the function drawing them)
# before drawing and sending were split: the same draws, and editing this file no longer
# re-rolls them. (Five other seeds were tried once NUL characters got a 422 on both databases,
# and passed; the seed stays pinned so that a red CI run always names a real regression.)
SEED = int("a77e39b9f670beb33f8d7b995750bc4191eaf5c802fa84946332c9f4d70081dc"
           "1a96e71a0c736b8e543f90429ed9f9b5", 16)
_DRAWN: dict[str, list[Batch]] = {}  # by the digest of the OpenAPI document they were drawn from


@pytest.fixture(autouse=True)
def one_ast_parse_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cases are drawn in one thread while another sends and checks them. CPython 3.11 keeps
    the AST constructor's recursion depth per interpreter, not per thread, so two threads in
    ``ast.parse`` at once fail with "SystemError: AST constructor recursion depth mismatch"
    (python/cpython#106905; seen once here: a first import while drawing, in a fresh venv,
    beside the other thread's parse). The test's threads take turns in ast.parse."""
    lock = threading.RLock()
    real = ast.parse

    def parse(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return real(*args, **kwargs)

    monkeypatch.setattr(ast, "parse", parse)


def _check(case: Any, send: dict[str, Any]) -> int:
    """Send one case and check the answer; returns its status."""
    response = case.call(**send)
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, (where, response.text, case.as_curl_command())
    if response.status_code == 400 and response.content == MALFORMED_REQUEST:
        return 400  # not valid HTTP (a generated path or header): the HTTP server refused it
        # before the application saw it, so there is no application answer to check
    if response.status_code >= 400 and case.method.upper() != "HEAD":
        headers = {k: v[0] if isinstance(v, list) else v for k, v in response.headers.items()}
        assert_error(httpx.Response(response.status_code, headers=headers,
                                    content=response.content), response.status_code)
    case.validate_response(response, checks=CHECKS)
    return int(response.status_code)


def _draw(op: Any, mode: GenerationMode, n: int) -> list[Any]:
    """One operation's cases in one mode, in the order @given draws them."""
    cases: list[Any] = []

    @given(case=op.as_strategy(generation_mode=mode))
    @seed(SEED)
    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def collect(case: Any) -> None:
        cases.append(case)

    try:
        collect()
    except Unsatisfiable:
        # nothing invalid to generate (e.g. no parameters and no body)
        assert mode is GenerationMode.NEGATIVE, op.label
    return cases


def _generate(schema: Any) -> Iterator[Batch]:
    """Each operation's cases, positive then negative."""
    for op in [r.ok() for r in schema.get_all_operations()]:
        for mode, n in EXAMPLES.items():
            yield op.label, mode, _draw(op, mode, n)


def _send_all(batch: Batch, send: dict[str, Any]) -> list[int]:
    """Send the cases one at a time, in the order drawn; their statuses."""
    return [_check(case, send) for case in batch[2]]


def _digest(document: dict[str, Any]) -> str:
    """The document's digest, blind to key order and operationIds: the backend serves /cdn/{path}
    for a set of methods, so which method names its operationIds (and the order of its keys)
    varies from one backend process to the next; the cases drawn do not depend on either."""
    def canonical(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: canonical(v) for k, v in node.items() if k != "operationId"}
        if isinstance(node, list):
            return [canonical(v) for v in node]
        return node

    text = json.dumps(canonical(document), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def test_api_fuzz(backend: BackendServer, published_store: PublishedStore) -> None:
    _, token = backend.new_user([p.product_id for p in published_store.products])
    document = httpx.get(f"{backend.url}/openapi.json", timeout=30)
    assert document.status_code == 200, document.text
    digest = _digest(document.json())
    started = time.monotonic()
    statuses: list[int] = []
    # a fresh schemathesis session per request (cookies dropped, no default headers), but kept
    # alive: one connection instead of one per case
    with ManagedCookiesSession() as session, ThreadPoolExecutor(1) as sender:
        session.headers.clear()
        send = {"session": session, "base_url": backend.url, "timeout": 30,
                "headers": {"Authorization": f"Bearer {token}"}}
        drawn = _DRAWN.get(digest)
        if drawn is None:  # draw, sending each operation's cases while the next are drawn
            drawn = []
            previous: Future[list[int]] | None = None
            for batch in _generate(schemathesis.openapi.from_dict(document.json())):
                drawn.append(batch)
                if previous is not None:
                    statuses += previous.result()  # a failed check stops the run here
                previous = sender.submit(_send_all, batch, send)
            if previous is not None:
                statuses += previous.result()
            _DRAWN[digest] = drawn
        else:  # the other database kind: the same document, so the same cases
            for batch in drawn:
                statuses += _send_all(batch, send)
        labels = {label for label, _, _ in drawn}
    assert len(labels) >= 35
    assert len(statuses) >= 20 * 35  # the cases were sent, not only drawn
    assert statuses.count(200) >= 35  # ... with a token this backend accepts
    assert time.monotonic() - started < 120
