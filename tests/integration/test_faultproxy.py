"""The fault-injecting reverse proxy (testing/faultproxy.py) against a real loopback origin.

Every test talks real HTTP: a plain client (httpx, or a raw socket where the TCP-level
behaviour matters) -> FaultProxy -> a threaded http.server origin serving a random 2 MiB blob
with Range support.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from testing.faultproxy import Fault, FaultProxy

BLOB = os.urandom(2 * 1024 * 1024)
KIB = 1024


class _Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True
    hits = 0
    last_headers: dict[str, str] = {}  # noqa: RUF012 - replaced per request, read by tests

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the proxy dropping its upstream connection mid-body is expected here


class _OriginHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Origin

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _record(self) -> None:
        self.server.hits += 1
        self.server.last_headers = {k.lower(): v for k, v in self.headers.items()}

    def _send(self, status: int, body: bytes, headers: dict[str, str], *, head: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _serve(self, *, head: bool) -> None:
        self._record()
        if self.path.split("?")[0] == "/headers":
            body = json.dumps(self.server.last_headers).encode()
            self._send(200, body, {"Content-Type": "application/json"}, head=head)
            return
        if not self.path.startswith("/files/"):
            self._send(404, b"not found", {"Content-Type": "text/plain"}, head=head)
            return
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        if rng is None:
            self._send(200, BLOB, headers, head=head)
            return
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if not m or m.groups() == ("", ""):
            self._send(416, b"", {"Content-Range": f"bytes */{len(BLOB)}"}, head=head)
            return
        if m.group(1) == "":
            start, end = max(0, len(BLOB) - int(m.group(2))), len(BLOB) - 1
        else:
            start = int(m.group(1))
            end = min(int(m.group(2)), len(BLOB) - 1) if m.group(2) else len(BLOB) - 1
        if start >= len(BLOB) or start > end:
            self._send(416, b"", {"Content-Range": f"bytes */{len(BLOB)}"}, head=head)
            return
        headers["Content-Range"] = f"bytes {start}-{end}/{len(BLOB)}"
        self._send(206, BLOB[start : end + 1], headers, head=head)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_POST(self) -> None:
        self._record()
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ctype = self.headers.get("Content-Type", "application/octet-stream")
        self._send(201, body[::-1], {"Content-Type": ctype}, head=False)


@pytest.fixture(scope="module")
def origin() -> Iterator[_Origin]:
    server = _Origin(("127.0.0.1", 0), _OriginHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture()
def proxy(origin: _Origin) -> Iterator[FaultProxy]:
    with FaultProxy(f"http://127.0.0.1:{origin.server_address[1]}") as p:
        yield p


@pytest.fixture()
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as c:
        yield c


def _stream(client: httpx.Client, url: str, **kw: object) -> tuple[bytes, BaseException | None]:
    """GET ``url`` streaming; return (bytes received, exception or None)."""
    got = bytearray()
    try:
        with client.stream("GET", url, **kw) as resp:  # type: ignore[arg-type]
            for piece in resp.iter_raw():
                got += piece
    except httpx.HTTPError as exc:
        return bytes(got), exc
    return bytes(got), None


def _raw_get(port: int, path: str, timeout: float = 5.0) -> tuple[bytes, bytes, str]:
    """HTTP/1.1 GET over a raw socket; return (head, body, how the stream ended)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        ending = "fin"
        while True:
            try:
                piece = sock.recv(256 * KIB)
            except ConnectionResetError:
                ending = "rst"
                break
            except TimeoutError:
                ending = "timeout"
                break
            if not piece:
                break
            data += piece
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return head, body, ending


# --------------------------------------------------------------------------- pass-through


def test_passthrough_identical_bytes_and_headers(
    proxy: FaultProxy, origin: _Origin, client: httpx.Client
) -> None:
    r = client.get(f"{proxy.url}/files/game.pak")
    assert r.status_code == 200
    assert r.content == BLOB
    assert r.headers["content-length"] == str(len(BLOB))
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["accept-ranges"] == "bytes"
    assert proxy.requests == 1
    assert proxy.bytes_sent == len(BLOB)
    assert proxy.faults_injected == 0


def test_range_requests_are_forwarded(
    proxy: FaultProxy, origin: _Origin, client: httpx.Client
) -> None:
    r = client.get(f"{proxy.url}/files/game.pak", headers={"Range": "bytes=1000-66535"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 1000-66535/{len(BLOB)}"
    assert r.headers["content-length"] == str(65536)
    assert r.content == BLOB[1000:66536]

    r = client.get(f"{proxy.url}/files/game.pak", headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == BLOB[-10:]

    r = client.get(f"{proxy.url}/files/game.pak", headers={"Range": f"bytes={len(BLOB)}-"})
    assert r.status_code == 416

    # Range, custom headers and the query string reach the origin; Host is the origin's.
    r = client.get(
        f"{proxy.url}/headers?sig=a%2Fb",
        headers={"Range": "bytes=0-9", "X-Request-Id": "abc", "If-Match": '"e1"'},
    )
    seen = r.json()
    assert seen["range"] == "bytes=0-9"
    assert seen["x-request-id"] == "abc"
    assert seen["if-match"] == '"e1"'
    assert seen["host"] == f"127.0.0.1:{origin.server_address[1]}"
    assert [h.path_qs for h in proxy.history][-1] == "/headers?sig=a%2Fb"
    assert [h.range for h in proxy.history] == [
        "bytes=1000-66535",
        "bytes=-10",
        f"bytes={len(BLOB)}-",
        "bytes=0-9",
    ]


def test_head_post_and_upstream_errors(proxy: FaultProxy, client: httpx.Client) -> None:
    r = client.head(f"{proxy.url}/files/game.pak")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(BLOB)) and r.content == b""

    r = client.post(f"{proxy.url}/echo", content=b"hello", headers={"Content-Type": "text/x"})
    assert (r.status_code, r.content, r.headers["content-type"]) == (201, b"olleh", "text/x")

    assert client.get(f"{proxy.url}/nope").status_code == 404

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with FaultProxy(f"http://127.0.0.1:{dead}") as p:
        assert client.get(f"{p.url}/files/x").status_code == 502


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "status"), [(Fault.HTTP_500, 500), (Fault.HTTP_503, 503), (Fault.HTTP_403, 403)]
)
def test_status_faults_skip_upstream(
    proxy: FaultProxy, origin: _Origin, client: httpx.Client, fault: Fault, status: int
) -> None:
    proxy.set_fault(fault)
    hits = origin.hits
    for _ in range(2):
        r = client.get(f"{proxy.url}/files/game.pak")
        assert r.status_code == status
        assert len(r.content) < 100
    assert origin.hits == hits  # never contacted
    assert proxy.requests == 2 and proxy.faults_injected == 2 and proxy.bytes_sent == 0


def test_reset_mid_stream(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.set_fault(Fault.RESET, after_bytes=300 * KIB)
    got, exc = _stream(client, f"{proxy.url}/files/game.pak")
    assert exc is not None
    assert len(got) < len(BLOB)
    assert got == BLOB[: len(got)]

    # At TCP level it is a real RST, after exactly after_bytes body bytes.
    head, body, ending = _raw_get(proxy.port, "/files/game.pak")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"Content-Length: {len(BLOB)}".encode() in head
    assert ending == "rst"
    assert body == BLOB[: 300 * KIB]
    assert proxy.faults_injected == 2


def test_stall_trips_client_read_timeout(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.set_fault(Fault.STALL, after_bytes=128 * KIB)
    t0 = time.monotonic()
    got, exc = _stream(client, f"{proxy.url}/files/game.pak", timeout=httpx.Timeout(5, read=1.0))
    elapsed = time.monotonic() - t0
    assert isinstance(exc, httpx.ReadTimeout)
    assert got == BLOB[: 128 * KIB]
    assert 0.9 <= elapsed < 4
    assert proxy.faults_injected == 1

    # Stall before any body byte: headers arrive, body never does.
    proxy.set_fault(Fault.STALL)
    with (
        pytest.raises(httpx.ReadTimeout),
        client.stream("GET", f"{proxy.url}/files/x", timeout=httpx.Timeout(5, read=0.5)) as r,
    ):
        assert r.status_code == 200
        r.read()


def test_stop_does_not_hang_on_stalled_connections(origin: _Origin) -> None:
    p = FaultProxy(f"http://127.0.0.1:{origin.server_address[1]}").start()
    p.set_fault(Fault.STALL, after_bytes=64 * KIB)
    results: list[tuple[bytes, bytes, str]] = []
    readers = [
        threading.Thread(target=lambda: results.append(_raw_get(p.port, "/files/a", 30)))
        for _ in range(3)
    ]
    for t in readers:
        t.start()
    deadline = time.monotonic() + 5
    while p.faults_injected < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.faults_injected == 3
    t0 = time.monotonic()
    p.stop()
    assert time.monotonic() - t0 < 5
    for t in readers:
        t.join(5)
    assert len(results) == 3
    assert all(body == BLOB[: 64 * KIB] and ending != "timeout" for _, body, ending in results)
    p.stop()  # idempotent


def test_corrupt_keeps_length_flips_bytes(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.set_fault(Fault.CORRUPT, after_bytes=100_000)
    r = client.get(f"{proxy.url}/files/game.pak")
    assert r.status_code == 200
    assert len(r.content) == len(BLOB)
    assert r.content[:100_000] == BLOB[:100_000]
    assert all(
        a != b for a, b in zip(r.content[100_000:100_100], BLOB[100_000:100_100], strict=True)
    )
    assert r.content[100_000:] != BLOB[100_000:]

    # Applies to ranged responses too (offsets are relative to the response body).
    r = client.get(f"{proxy.url}/files/game.pak", headers={"Range": "bytes=0-99999"})
    assert r.status_code == 206
    assert len(r.content) == 100_000 and r.content == BLOB[:100_000]  # body <= after_bytes
    assert proxy.faults_injected == 1


def test_truncate_sends_full_length_then_closes(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.set_fault(Fault.TRUNCATE, after_bytes=500_000)
    got, exc = _stream(client, f"{proxy.url}/files/game.pak")
    assert isinstance(exc, httpx.RemoteProtocolError)
    assert got == BLOB[:500_000]

    head, body, ending = _raw_get(proxy.port, "/files/game.pak")
    assert f"Content-Length: {len(BLOB)}".encode() in head
    assert ending == "fin"  # a clean close, not a reset
    assert body == BLOB[:500_000]


def test_times_injects_then_passes(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.set_fault(Fault.RESET, after_bytes=KIB, times=1)
    _, exc = _stream(client, f"{proxy.url}/files/game.pak")
    assert exc is not None
    assert proxy.fault is Fault.NONE
    assert client.get(f"{proxy.url}/files/game.pak").content == BLOB

    proxy.set_fault(Fault.HTTP_503, times=2)
    codes = [client.get(f"{proxy.url}/files/game.pak").status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    assert proxy.faults_injected == 3
    assert [h.fault for h in proxy.history] == [Fault.RESET, Fault.NONE] + [Fault.HTTP_503] * 2 + [
        Fault.NONE
    ]


def test_path_contains_filters(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.set_fault(Fault.HTTP_403, path_contains="/files/b", times=1)
    # A non-matching request passes and does not use up `times`.
    assert client.get(f"{proxy.url}/files/a.pak").status_code == 200
    assert client.get(f"{proxy.url}/files/b.pak").status_code == 403
    assert client.get(f"{proxy.url}/files/b.pak").status_code == 200
    assert proxy.faults_injected == 1


def test_slow_throttles(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.set_fault(Fault.SLOW, after_bytes=64 * KIB, rate_bps=1024 * KIB)
    t0 = time.monotonic()
    r = client.get(f"{proxy.url}/files/game.pak", headers={"Range": "bytes=0-327679"})
    elapsed = time.monotonic() - t0
    assert r.content == BLOB[:327680]
    assert 0.22 <= elapsed < 2  # 256 KiB throttled at 1 MiB/s = 0.25 s
    assert proxy.faults_injected == 1


def test_counters_and_reset(proxy: FaultProxy, client: httpx.Client) -> None:
    client.get(f"{proxy.url}/files/game.pak", headers={"Range": "bytes=0-999"})
    client.get(f"{proxy.url}/files/game.pak", headers={"Range": "bytes=0-1999"})
    proxy.set_fault(Fault.HTTP_500, times=1)
    client.get(f"{proxy.url}/files/game.pak")
    assert (proxy.requests, proxy.faults_injected, proxy.bytes_sent) == (3, 1, 3000)
    proxy.reset_counters()
    assert (proxy.requests, proxy.faults_injected, proxy.bytes_sent) == (0, 0, 0)
    assert proxy.history == []


def test_argument_validation(origin: _Origin) -> None:
    with pytest.raises(ValueError):
        FaultProxy("http://127.0.0.1:1", host="0.0.0.0")
    with pytest.raises(ValueError):
        FaultProxy("ftp://127.0.0.1:1")
    p = FaultProxy("http://127.0.0.1:1")
    with pytest.raises(RuntimeError):
        _ = p.url
    with pytest.raises(ValueError):
        p.set_fault(Fault.SLOW)
    with pytest.raises(ValueError):
        p.set_fault(Fault.RESET, after_bytes=-1)
    p.set_fault(Fault.CORRUPT, times=0)
    assert p.fault is Fault.NONE
