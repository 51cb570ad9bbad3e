"""A small open-loop HTTP/1.1 load generator: requests are due at a constant rate whatever the server
does, and each latency is measured from when its request was due (not from when a connection was
free), so a slow server cannot hide its queueing (no coordinated omission, as wrk2 does it). wrk2 and
oha are not packaged for this machine; at the few thousand requests per second measured here one
asyncio process keeps its schedule (it reports how late it started requests, to show that it did)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Result:
    offered: float
    achieved: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    max_start_delay_ms: float


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run(host: str, port: int, make_request: Callable[[], bytes], rate: float, seconds: float,
              connections: int = 64) -> Result:
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    late = 0.0

    async def one(due: float, request: bytes) -> None:
        reader, writer = await idle.get()
        try:
            status = await _exchange(reader, writer, request)
        finally:
            idle.put_nowait((reader, writer))
        latencies.append(time.perf_counter() - due)
        statuses[status] = statuses.get(status, 0) + 1

    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        late = max(late, time.perf_counter() - due)
        tasks.append(asyncio.create_task(one(due, make_request())))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not idle.empty():
        idle.get_nowait()[1].close()
    latencies.sort()
    return Result(rate, total / elapsed, latencies[len(latencies) // 2] * 1000,
                  latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, statuses, late * 1000)
