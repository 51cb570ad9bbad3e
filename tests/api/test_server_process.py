"""The real `learner-api serve` process under hostile clients: huge bodies and headers, half-sent requests,
too many connections. Memory is read from /proc, the way the kubelet's OOM killer would see it."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.api.conftest import JWT_SECRET, REDIS_URL, WEBHOOK_SECRET, bearer
from tests.net import free_port, wait_http

MIB = 1024 * 1024
HEADER_TIMEOUT, BODY_TIMEOUT, MAX_CONNECTIONS = 1.0, 1.5, 40


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def peak_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)

    def get(self, path: str, port: int | None = None) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port, metrics_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "NODE_ENV": "development",
           "JWT_SECRET": JWT_SECRET, "PAYMENT_WEBHOOK_SECRET": WEBHOOK_SECRET, "PORT": str(port),
           "METRICS_PORT": str(metrics_port), "PROGRESS_STREAM": f"test:{uuid.uuid4().hex[:8]}:progress",
           "HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT), "HTTP_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
           "HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "HTTP_KEEPALIVE_SECONDS": "1",
           "RATE_LIMIT_PER_LEARNER": "100000"}
    with log.open("wb") as err:
        process = subprocess.Popen([str(Path(sys.executable).parent / "learner-api"), "serve", "--host", "127.0.0.1",
                                    "--drain-seconds", "0"], env=env, stdout=err, stderr=err)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        yield Server(process, port, metrics_port, log)
    finally:
        process.terminate()
        process.wait(20)


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def read_response(sock: socket.socket, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response (the body up to its Content-Length or EOF)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without a response (got {data[:200]!r})")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def upload(server: Server, path: str, headers: dict[str, str], total: int, chunked: bool) -> tuple[int, bytes]:
    """POST ``total`` bytes, stopping as soon as the server answers (as a client would see it)."""
    sock = connect(server)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = f"POST {path} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n{framing}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    block = b"x" * MIB
    piece = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
    view, offset, sent = memoryview(piece), 0, 0
    sock.setblocking(False)
    try:
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable or not writable:
                break  # the answer is there (or nothing moves): stop sending, like any HTTP client
            try:
                count = sock.send(view[offset:offset + 256 * 1024])
            except (BlockingIOError, InterruptedError):
                continue
            sent, offset = sent + count, (offset + count) % len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.setblocking(True)
    try:
        status, _, body = read_response(sock)
    finally:
        sock.close()
    return status, body


def progress_body() -> bytes:
    return json.dumps({"events": [{"id": str(uuid.uuid4()), "verb": "lesson_viewed", "lesson_id": "python-101-hello",
                                   "occurred_at": datetime.now(UTC).isoformat()}]}).encode()


@pytest.mark.parametrize(("path", "headers", "chunked", "status"), [
    ("/v1/enrollments", {}, False, 413),  # the declared length alone is refused
    ("/v1/enrollments", {}, True, 401),  # no length declared: no token, nothing read
    ("/v1/checkout", {}, True, 401),
    ("/v1/webhooks/payments", {}, True, 400),  # no signature header: nothing read
    ("/v1/webhooks/payments", {"Payment-Signature": "t=1,v1=00"}, True, 413),  # read only up to its limit
    ("/v1/progress", "token", True, 413),  # authenticated, and still only 256 KiB are read
])
def test_150_mib_leave_memory_flat(server: Server, path: str, headers: dict[str, str] | str, chunked: bool,
                                   status: int) -> None:
    sent_headers = bearer("ada", "acme") if headers == "token" else headers
    assert isinstance(sent_headers, dict)
    server.reset_peak()
    before = server.rss_mib()
    answered, body = upload(server, path, sent_headers, 150 * MIB, chunked)
    assert answered == status, body
    assert json.loads(body)["status"] == status
    assert server.peak_mib() - before < 16, f"peak RSS grew from {before:.0f} to {server.peak_mib():.0f} MiB"
    assert server.get("/livez")[0] == 200


def test_huge_or_too_many_headers_are_431(server: Server) -> None:
    server.reset_peak()
    before = server.rss_mib()
    for head in (b"GET /v1/me HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer " + b"a" * (16 * MIB) + b"\r\n\r\n",
                 b"GET /v1/me HTTP/1.1\r\nHost: api\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n"):
        sock = connect(server)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)
        status, headers, body = read_response(sock)
        sock.close()
        assert (status, headers["content-type"]) == (431, "application/problem+json")
        assert "headers" in json.loads(body)["detail"]
    assert server.peak_mib() - before < 16
    ok = connect(server)
    ok.sendall(b"GET /livez HTTP/1.1\r\nHost: api\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(50)) + b"\r\n")
    assert read_response(ok)[0] == 200
    ok.close()


def test_silent_and_half_sent_connections_are_closed(server: Server) -> None:
    token = bearer("ada", "acme")["Authorization"]
    silent = [connect(server) for _ in range(5)]
    half_head = [connect(server) for _ in range(5)]
    half_body = [connect(server) for _ in range(5)]
    for sock in half_head:
        sock.sendall(b"GET /v1/me HTTP/1.1\r\nHost: api\r\nAuthorization: Bea")
    for sock in half_body:
        sock.sendall(f"POST /v1/progress HTTP/1.1\r\nHost: api\r\nAuthorization: {token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"events\": [".encode())
    start = time.monotonic()
    for sock in silent:
        sock.settimeout(5)
        assert sock.recv(100) == b""  # closed without a word: it never asked anything
    for sock in half_head + half_body:
        status, headers, body = read_response(sock)
        assert (status, headers["connection"]) == (408, "close")
        assert json.loads(body)["status"] == 408
        sock.settimeout(5)
        assert sock.recv(100) == b""
    assert time.monotonic() - start < BODY_TIMEOUT + 2
    for sock in silent + half_head + half_body:
        sock.close()
    assert server.get("/livez")[0] == 200
    log = server.log.read_text()
    assert "Traceback" not in log
    assert " ERROR " not in log
    metrics = server.get("/metrics", port=server.metrics_port)[1].decode()
    assert 'status="5xx"' not in metrics


def test_connections_past_the_cap_get_a_graceful_503(server: Server) -> None:
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        extra = connect(server)
        status, headers, body = read_response(extra)
        extra.close()
        assert (status, headers["retry-after"], headers["content-type"]) == (503, "1", "application/problem+json")
        assert "connection limit" in json.loads(body)["detail"]
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert server.get("/livez")[0] == 200


def test_idle_keep_alive_connections_are_closed(server: Server) -> None:
    sock = connect(server)
    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: api\r\n\r\n")
    assert read_response(sock)[0] == 200
    sock.settimeout(5)
    start = time.monotonic()
    assert sock.recv(100) == b""
    assert time.monotonic() - start < 3
    sock.close()


def test_metrics_are_on_their_own_port_only(server: Server) -> None:
    status, body = server.get("/metrics")
    assert status == 404
    assert json.loads(body)["status"] == 404
    status, body = server.get("/metrics", port=server.metrics_port)
    assert status == 200
    assert b"http_requests_total" in body
    assert b"course_enrollments_total" in body
