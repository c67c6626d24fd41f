"""The threaded range client against a real socket server this test scripts: blocks byte-exact
over one kept-alive connection, a connection the server closed while idle replaced, a silent
edge judged stalled, a stop honoured while waiting, wrong spans and short bodies refused."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.core.planner import BlockJob, FetchRange
from engine.core.sources import FailureKind
from engine.io.rangeclient import FetchFailed, RangeFetch, Stopped, close_idle_connections, fetch_range
from patcher.manifest import Codec

DATA = bytes(range(256)) * 4096  # 1 MiB
PACK = "cd" * 32


def range_requests(conn: socket.socket) -> Iterator[tuple[bytes, int, int]]:
    """Each request head on a connection, with its Range's first and last byte, until the
    client closes it."""
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            try:
                part = conn.recv(65536)
            except OSError:
                return
            if not part:
                return
            buf += part
        raw, _, buf = buf.partition(b"\r\n\r\n")
        spec = next(line for line in raw.split(b"\r\n") if line.startswith(b"Range:"))
        first, last = (int(x) for x in spec.split(b"=")[1].split(b"-"))
        yield raw, first, last


class LoopbackServer:
    """Listens on a loopback port and serves each connection on a thread of its own
    (``_serve``); subclasses set their own attributes before calling ``__init__``."""

    def __init__(self, family: socket.AddressFamily = socket.AF_INET,
                 host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(family)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class ScriptedServer(LoopbackServer):
    """Serves DATA with Range support; ``mode`` changes how it answers."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.mode = "normal"
        self.requests: list[bytes] = []
        self.release = threading.Event()
        super().__init__()

    def _handshake(self, conn: socket.socket) -> socket.socket | None:
        if self.tls is None:
            return conn
        try:
            return self.tls.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()  # the client refused our certificate
            return None

    def _serve(self, raw: socket.socket) -> None:
        conn = self._handshake(raw)
        if conn is None:
            return
        with conn:
            for raw, first, last in range_requests(conn):
                self.requests.append(raw)
                body = DATA[first:last + 1]
                span = f"bytes {first}-{last}/{len(DATA)}"
                if self.mode == "wrong-span":
                    span = f"bytes 0-{last - first}/{len(DATA)}"
                head = (f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n"
                        f"Content-Range: {span}\r\n\r\n").encode()
                try:
                    if self.mode == "stall":
                        conn.sendall(head)
                        self.release.wait(30)
                        return
                    if self.mode == "truncate":
                        conn.sendall(head + body[: len(body) // 2])
                        return
                    conn.sendall(head + body)
                except OSError:
                    return
                if self.mode == "close-when-idle":
                    time.sleep(0.05)
                    return  # keep-alive was not refused, but the connection ends

    def close(self) -> None:
        self.release.set()
        super().close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    close_idle_connections()
    s = ScriptedServer()
    yield s
    s.close()
    close_idle_connections()


def blocks(spans: list[tuple[int, int]]) -> FetchRange:
    jobs = tuple(BlockJob(i, PACK, off, size, size, Codec.RAW, ()) for i, (off, size) in enumerate(spans))
    return FetchRange(PACK, spans[0][0], spans[-1][0] + spans[-1][1], jobs)


def run(server: ScriptedServer, r: FetchRange, *, window: float = 10.0, scheme: str = "http",
        stop: threading.Event | None = None, give_back: bool = False
        ) -> tuple[list[tuple[int, bytes]], RangeFetch[bytes]]:
    got: list[tuple[int, bytes]] = []
    fetch: RangeFetch[bytes] = RangeFetch(
        f"{scheme}://127.0.0.1:{server.port}/p/packs/{PACK}.pack?md5=x", r, "edge", window, 5.0,
        lambda job, view: bytes(view), lambda job, data, n: got.append((job.index, data)),
        lambda: give_back and bool(got), stop or threading.Event(), lambda: None)
    fetch_range(fetch)
    return got, fetch


def test_blocks_arrive_byte_exact_over_one_kept_alive_connection(server: ScriptedServer) -> None:
    r = blocks([(1000, 70000), (80000, 200000), (280000, 5)])  # a bridged gap after block 0
    got, fetch = run(server, r)
    assert got == [(0, DATA[1000:71000]), (1, DATA[80000:280000]), (2, DATA[280000:280005])]
    assert fetch.received == 280005 - 1000
    got2, _ = run(server, blocks([(0, 4096)]))
    assert got2 == [(0, DATA[:4096])]
    assert server.connections == 1 and len(server.requests) == 2
    assert b"Range: bytes=1000-280004" in server.requests[0]


def test_a_connection_the_server_closed_while_idle_is_replaced(server: ScriptedServer) -> None:
    server.mode = "close-when-idle"
    run(server, blocks([(0, 1000)]))
    time.sleep(0.2)  # the server has closed the idle connection by now
    got, _ = run(server, blocks([(5000, 1000)]))
    assert got == [(0, DATA[5000:6000])]
    assert server.connections == 2


def test_a_silent_edge_stalls_and_a_stop_ends_the_wait(server: ScriptedServer) -> None:
    server.mode = "stall"
    with pytest.raises(FetchFailed) as caught:
        run(server, blocks([(0, 1000)]), window=0.6)
    assert caught.value.kind is FailureKind.STALL and "edge" in caught.value.detail
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        run(server, blocks([(0, 1000)]), window=60.0, stop=stop)
    assert time.monotonic() - started < 10  # the 60 s window was not waited out


def test_wrong_span_short_body_and_giving_back(server: ScriptedServer) -> None:
    server.mode = "wrong-span"
    with pytest.raises(FetchFailed) as caught:
        run(server, blocks([(1000, 1000)]))
    assert caught.value.kind is FailureKind.CORRUPT and "bytes 1000-1999" in caught.value.detail
    server.mode = "truncate"
    with pytest.raises(FetchFailed) as caught:
        run(server, blocks([(0, 1000), (1000, 1000)]))
    assert caught.value.kind is FailureKind.RESET and "closed early" in caught.value.detail
    server.mode = "normal"
    with pytest.raises(Stopped):  # a limit now applies: the rest goes back after one block
        run(server, blocks([(0, 1000), (1000, 1000)]), give_back=True)


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own issuer) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_ranges_check_the_edge_certificate(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Real CDN edges are https: blocks arrive byte-exact over one kept-alive TLS connection
    when the edge's certificate is trusted (here through SSL_CERT_FILE, as OpenSSL reads it),
    and an edge whose certificate is not trusted is a failure of that edge, nothing read."""
    import engine.io.rangeclient as rangeclient

    trusted, trusted_key = self_signed(tmp_path, "edge")
    other, other_key = self_signed(tmp_path, "impostor")
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted))
    monkeypatch.setattr(rangeclient, "_tls", None)  # the trust store is read again
    close_idle_connections()
    servers = []
    try:
        for cert, key in ((trusted, trusted_key), (other, other_key)):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            servers.append(ScriptedServer(ctx))
        good, bad = servers
        r = blocks([(1000, 70000), (80000, 200000)])
        got, _ = run(good, r, scheme="https")
        assert got == [(0, DATA[1000:71000]), (1, DATA[80000:280000])]
        got, _ = run(good, blocks([(0, 4096)]), scheme="https")
        assert got == [(0, DATA[:4096])] and good.connections == 1
        with pytest.raises(FetchFailed) as caught:
            run(bad, blocks([(0, 1000)]), scheme="https")
        assert caught.value.kind is FailureKind.RESET and "TLS" in caught.value.detail
        assert bad.requests == []
    finally:
        for server in servers:
            server.close()
        close_idle_connections()
