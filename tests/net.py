"""Small network helpers for tests that start real processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_pair() -> int:
    """A free port whose next one is free too (`scripts/run api` gives the API's metrics METRICS_PORT + 1)."""
    while True:
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def serving(command: list[str], ready_url: str) -> Iterator[None]:
    """Run a server process until the block ends, once ``ready_url`` answers."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(ready_url)
        yield
    finally:
        process.terminate()
        process.wait(10)


@contextlib.asynccontextmanager
async def forwarding(port: int, target: tuple[str, int] | None) -> AsyncIterator[None]:
    """A TCP forwarder on ``port`` to ``target``: a server "coming back" at the address a process was
    given (see ``behind``). With no target, one that accepts connections and never answers (a hung one)."""
    clients: set[asyncio.StreamWriter] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.add(writer)
        if target is None:
            return  # held open, never answered, until the block ends
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        clients.add(upstream_writer)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(connected, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for client in clients:
            client.close()
        await server.wait_closed()


def behind(url: str, port: int) -> tuple[str, tuple[str, int]]:
    """``url`` (postgresql://, redis://) pointed at 127.0.0.1:``port`` instead, and the address it named."""
    parts = urlsplit(url)
    assert parts.hostname, url
    assert parts.port, url
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc)), (parts.hostname, parts.port)
