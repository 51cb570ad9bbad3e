"""The edge of the app (plain ASGI): what a request may cost before any route code runs.

- Bodies are bounded per route (``BODY_LIMITS``): a declared Content-Length over the limit is refused
  with 413 before a byte is read, a body that grows past it is refused as soon as it does.
- Routes that take a body and a bearer token authenticate (and count against the rate limit) before
  the body is read: an anonymous 150 MiB upload costs one header check, not 150 MiB. The webhook, whose
  authentication is a signature over the body, needs its signature header before its body is read.
- Every request has a deadline: past it the client gets 503 + Retry-After at once and the request's
  work is cancelled (a frozen dependency must not hold a client, nor a connection, for ever).
- A client that hangs up mid-body is not an error: nothing is logged above INFO and the metrics count
  it as a 4xx (499, nginx's "client closed request"), not as a 5xx.

Refusals here close the connection (``Connection: close``): the unread rest of a body is never read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from learner_api.auth import IDENTITY, identity_from_header
from learner_api.metrics import CLIENT_GONE
from learner_api.problems import PROBLEM_JSON, Problem

logger = logging.getLogger("learner_api")


@dataclass(frozen=True)
class BodyRule:
    limit: int  # bytes
    auth: str  # "bearer": token (and rate limit) before the body; "signature": the header must be there


KIB = 1024
#: Bodies the API reads, by exact path; any other request may carry at most DEFAULT_BODY_LIMIT bytes
#: (no other route reads a body, so a bigger one is refused rather than left to buffer).
BODY_LIMITS = {
    "/v1/progress": BodyRule(256 * KIB, "bearer"),  # up to 500 events
    "/v1/enrollments": BodyRule(4 * KIB, "bearer"),  # {"course_id": ...}
    "/v1/checkout": BodyRule(4 * KIB, "bearer"),  # {"product_id": ...}
    "/v1/webhooks/payments": BodyRule(64 * KIB, "signature"),  # providers add fields over time
}
DEFAULT_BODY_LIMIT = 4 * KIB
#: How often request deadlines are checked: a deadline fires up to this much late.
SWEEP_SECONDS = 0.1
SIGNATURE_HEADER = b"payment-signature"
_BODYLESS = frozenset(("GET", "HEAD", "OPTIONS", "DELETE"))


def problem_bytes(problem: Problem, instance: str) -> bytes:
    body = {"type": problem.type, "title": problem.title, "status": problem.status, "detail": problem.detail,
            "instance": instance, **problem.extra}
    return json.dumps(body, separators=(",", ":")).encode()


async def send_problem(send: Send, problem: Problem, instance: str, *, close: bool = True) -> None:
    body = problem_bytes(problem, instance)
    headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in problem.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Edge:
    """Wraps the FastAPI app; ``state`` is the app's state (verified tokens, rate limiter, settings)."""

    def __init__(self, app: ASGIApp, state: Any, deadline: float) -> None:
        self.app, self.state, self.deadline = app, state, deadline
        self._inflight: dict[asyncio.Task[Any], tuple[float, Callable[[], None]]] = {}
        self._sweeping = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in _BODYLESS:
            try:
                receive = await self._admit(scope, receive)
            except Problem as problem:
                await send_problem(send, problem, scope["path"])
                return
            except _ClientGone:
                scope[CLIENT_GONE] = True
                logger.info("client went away mid-body on %s %s", scope["method"], scope["path"])
                return
        await self._within_deadline(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive) -> Receive:
        """Check what the headers promise, authenticate, then read the (bounded) body and replay it."""
        rule = BODY_LIMITS.get(scope["path"])
        limit = rule.limit if rule is not None else DEFAULT_BODY_LIMIT
        declared = authorization = signature = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"authorization":
                authorization = value
            elif name == SIGNATURE_HEADER:
                signature = value
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise Problem(413, f"the body may be at most {limit} bytes on {scope['path']}")
        if rule is not None and rule.auth == "bearer":
            identity = identity_from_header(self.state.verified_tokens,
                                            authorization.decode("latin-1") if authorization else "")
            scope[IDENTITY] = identity
            limiter = getattr(self.state, "rate_limiter", None)
            if limiter is not None:
                limiter.check(identity)
        elif rule is not None and rule.auth == "signature" and not signature:
            raise Problem(400, "the Payment-Signature header is missing")
        if rule is None:
            return receive  # no route reads it: whatever arrives stays within uvicorn's flow control
        body = await _read(receive, limit, scope["path"])
        return _replay(body, receive)

    async def _within_deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        """At the deadline the client is answered at once, and the request's task is cancelled to stop
        its work. Deadlines are checked by one sweep every SWEEP_SECONDS, not by a timer per request
        (arming and cancelling one, or asyncio.timeout's two, would cost every request)."""
        started = fired = False
        answer: asyncio.Task[None] | None = None
        task = asyncio.current_task()
        assert task is not None

        async def guarded(message: Message) -> None:
            nonlocal started
            if answer is not None:
                return  # the deadline already answered this request
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        def on_deadline() -> None:
            nonlocal fired, answer
            fired = True
            if not started:
                problem = Problem(503, f"the request did not finish within {self.deadline:g}s; a dependency is "
                                       "slow or unavailable, try again shortly", headers={"Retry-After": "5"})
                answer = asyncio.get_running_loop().create_task(send_problem(send, problem, scope["path"]))
            task.cancel()

        loop = asyncio.get_running_loop()
        self._inflight[task] = (loop.time() + self.deadline, on_deadline)
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(SWEEP_SECONDS, self._sweep)
        try:
            await self.app(scope, receive, guarded)
        except asyncio.CancelledError:
            if not fired:
                raise  # not ours (the server is shutting down)
            task.uncancel()  # ours: this request is over, the task goes on to finish it
            logger.warning("%s %s passed its %gs deadline%s", scope["method"], scope["path"], self.deadline,
                           "; answered 503" if answer is not None else " while responding")
        finally:
            self._inflight.pop(task, None)
            if answer is not None:
                await answer  # before uvicorn sees the app return, so that it sends nothing itself


    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, (when, on_deadline) in list(self._inflight.items()):
            if now >= when:
                del self._inflight[task]
                on_deadline()
        if self._inflight:
            loop.call_later(SWEEP_SECONDS, self._sweep)
        else:
            self._sweeping = False


class _ClientGone(Exception):
    pass


async def _read(receive: Receive, limit: int, path: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"the body may be at most {limit} bytes on {path}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the real channel (which reports a disconnect when it happens)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay

