"""uvicorn as learner-api runs it: connection hygiene below the app, and the metrics port beside it.

uvicorn (httptools) on its own reads headers of any size and count, never times out a connection that
sent nothing or half a request, and accepts connections until the process runs out of file
descriptors. ``GuardedProtocol`` adds what a server facing the internet needs (docs/api-limits.md):

- the request head (request line + headers) at most ``MAX_HEAD_BYTES``, at most ``MAX_HEADERS`` headers:
  431 and the connection is closed, before the rest is buffered;
- a connection must send a whole head within ``header_timeout`` of opening (or of its first byte after
  a keep-alive pause) and a whole body within ``body_timeout`` of the head: 408, closed;
- at most ``max_connections`` open connections per worker: the next one is answered 503 + Retry-After
  at once and closed (graceful, and the process keeps its descriptors for the connections it serves);
- idle keep-alive connections are closed after ``keepalive`` seconds (uvicorn's own timer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from types import FrameType
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from learner_api.settings import Settings

logger = logging.getLogger("learner_api")

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
#: How often read deadlines are checked: a timeout fires up to this much late.
SWEEP_SECONDS = 0.25
_SWEEPING = "_learner_api_sweeping"


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_connections: int


class _Refuse(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def refusal(status: int, detail: str, retry_after: int | None = None) -> bytes:
    """A whole problem+json response that closes the connection, written below the app."""
    phrase = HTTPStatus(status).phrase
    body = json.dumps({"type": "about:blank", "title": phrase, "status": status, "detail": detail}).encode()
    head = [f"HTTP/1.1 {status} {phrase}", "content-type: application/problem+json",
            f"content-length: {len(body)}", "connection: close"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedProtocol(HttpToolsProtocol):
    limits = ConnectionLimits(header_timeout=10.0, body_timeout=30.0, max_connections=500)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request head (the first, or the next on a kept-alive connection)
        self._head_bytes = 0
        self._head_tail = b""
        self._deadline: float | None = None  # when the head or body being read must be complete
        self._received_any = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.logger.warning("connection limit (%d) reached; refusing a connection", self.limits.max_connections)
            self._refuse(503, "the server is at its connection limit; retry shortly", retry_after=1)
            return
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, plus the head's size checked before httptools buffers it, and a refusal raised in a
        parser callback answered with its own status (uvicorn would answer any such error with 400)."""
        if self._in_head:
            self._received_any = True
            if self._deadline is None:  # the first byte after a keep-alive pause
                self._arm(self.limits.header_timeout)
            seen = self._head_tail + data
            end = seen.find(b"\r\n\r\n")
            self._head_bytes += (len(data) if end < 0 else end + 4 - len(self._head_tail))
            self._head_tail = seen[-3:]
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"the request line and headers may be at most {MAX_HEAD_BYTES} bytes")
                return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:  # a callback raised (see on_headers_complete)
            if isinstance(exc.__context__, _Refuse):
                self._refuse(exc.__context__.status, exc.__context__.detail)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if len(self.headers) > MAX_HEADERS:  # counted once here, not per header (the head is small anyway)
            raise _Refuse(431, f"at most {MAX_HEADERS} headers per request")
        self._arm(self.limits.body_timeout)  # disarmed when the message is complete (at once without a body)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes, self._head_tail, self._received_any = True, 0, b"", False
        super().on_message_complete()

    # Read deadlines are plain numbers that one sweep per server checks every SWEEP_SECONDS, instead of a
    # timer armed and cancelled per request (two per request otherwise; this runs on every request).
    def _arm(self, seconds: float) -> None:
        self._deadline = self.loop.time() + seconds
        if not getattr(self.server_state, _SWEEPING, False):
            setattr(self.server_state, _SWEEPING, True)
            self.loop.call_later(SWEEP_SECONDS, _sweep, self.loop, self.server_state)

    def _disarm(self) -> None:
        self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._in_head and not self._received_any:
            self.transport.close()  # opened and said nothing: nobody to answer
            return
        waiting = "request headers" if self._in_head else "request body"
        if self.cycle is not None and not self._in_head:
            self.cycle.keep_alive = False
            if self.cycle.response_started:
                self.transport.close()
                return
        self._refuse(408, f"the {waiting} did not arrive in time; send the whole request promptly")

    def _refuse(self, status: int, detail: str, retry_after: int | None = None) -> None:
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.response_complete = True  # the app's answer, if it comes, is not written
            self.cycle.disconnected = True
        if not self.transport.is_closing():
            self.transport.write(refusal(status, detail, retry_after))
            self.transport.close()


def _sweep(loop: asyncio.AbstractEventLoop, server_state: Any) -> None:
    """Time out the connections whose read deadline passed; again in a moment while any are open."""
    now = loop.time()
    for connection in list(server_state.connections):
        deadline = getattr(connection, "_deadline", None)
        if deadline is not None and now >= deadline:
            connection._timed_out()
    if server_state.connections:
        loop.call_later(SWEEP_SECONDS, _sweep, loop, server_state)
    else:
        setattr(server_state, _SWEEPING, False)


def protocol(settings: Settings) -> type[GuardedProtocol]:
    limits = ConnectionLimits(header_timeout=settings.http_header_timeout_seconds,
                              body_timeout=settings.http_body_timeout_seconds,
                              max_connections=settings.http_max_connections)
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


def config(app: Any, settings: Settings, host: str) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=settings.port, lifespan="on", access_log=False,
                          timeout_graceful_shutdown=20, log_config=None, http=protocol(settings),
                          timeout_keep_alive=int(max(1, settings.http_keepalive_seconds)))


class MetricsServer(uvicorn.Server):
    """uvicorn for the metrics port beside the API's: the API's server owns the signals, not this one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def metrics_config(app: Any, settings: Settings, host: str) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=settings.metrics_port, lifespan="off", access_log=False,
                          log_config=None, timeout_keep_alive=5)


async def _serve_metrics(metrics: MetricsServer) -> None:
    try:
        await metrics.serve()
    except SystemExit:  # uvicorn exits when it cannot bind: the API goes on, without /metrics
        logger.error("the metrics port %d could not be opened; serving the API without /metrics",
                     metrics.config.port)


async def serve_both(api: uvicorn.Server, metrics: MetricsServer) -> None:
    """Serve until the API's server stops (SIGTERM, after draining); the metrics port stops with it."""
    metrics_task = asyncio.create_task(_serve_metrics(metrics), name="metrics")
    try:
        await api.serve()
    finally:
        metrics.should_exit = True
        await asyncio.gather(metrics_task, return_exceptions=True)


class DrainingServer(uvicorn.Server):
    """On SIGTERM: answer /readyz with 503 at once, keep serving for ``drain`` seconds so that the
    endpoints controller takes the pod out of the Service, then finish in-flight requests and exit."""

    def __init__(self, config: uvicorn.Config, app: Any, drain: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain = drain
        self._terminating = False
        self.interrupted = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.interrupted = self.interrupted or sig == signal.SIGINT
        if self._terminating or sig != signal.SIGTERM or self.drain <= 0:
            super().handle_exit(sig, frame)
            return
        self._terminating = True
        self.app.state.draining = True
        logger.info("SIGTERM: not ready any more; draining for %.0fs", self.drain)
        asyncio.get_event_loop().call_later(self.drain, super().handle_exit, sig, frame)
