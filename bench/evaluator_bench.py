"""Evaluator benchmark, each number against its baseline in the same run.

1. Throughput: N progress events already in a Redis Stream, drained by the real worker (parse, unnest +
   ON CONFLICT with the projection, XACK) vs raw asyncpg ``copy_records_to_table`` of the same rows into
   the same table (goal >= 0.5x). The baseline runs as the superuser: PostgreSQL refuses COPY FROM into a
   table under row-level security, which is one reason the worker uses unnest. Also printed: the write
   statement alone, the ceiling for the worker.
2. End-to-end lag: events XADDed at a fixed rate while the worker runs; p50/p99 from XADD (the entry id's
   time) to the committed row (measured right after each commit).

Usage: .venv/bin/python -m bench.evaluator_bench [--events 50000] [--rate 5000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import redis.asyncio as aioredis

from learner_api.data.progress import Event, Written, write_events
from learner_api.dependencies import Database
from learner_api.evaluator.metrics import EvaluatorMetrics
from learner_api.evaluator.worker import Worker, entry_time
from learner_api.progress_intake import stream_entry
from learner_api.streams import FIELD
from scripts.api_dev import ADMIN_URL, REDIS_URL, prepare

TENANT = "default"


class TimedWorker(Worker):
    """The real worker, noting when each entry's batch committed."""

    lags: list[float]

    async def _acknowledge(self, ids: list[str], written: Written, handled: int) -> None:
        now = time.time()
        self.lags.extend(now - entry_time(entry_id) for entry_id in ids)
        await super()._acknowledge(ids, written, handled)


def entries(n: int) -> list[tuple[str, bytes]]:
    """(event id, stream entry) exactly as learner-api writes them."""
    now = datetime.now(UTC).isoformat()
    out = []
    for i in range(n):
        event_id = str(uuid.uuid4())
        out.append((event_id, stream_entry(
            tenant=TENANT, learner=f"learner-{i % 1000}", event_id=event_id,
            verb="lesson_completed" if i % 5 == 0 else "lesson_viewed", lesson_id=f"lesson-{i % 50}",
            occurred_at=now)))
    return out


async def fill(client: aioredis.Redis, stream: str, items: list[tuple[str, bytes]]) -> None:
    for start in range(0, len(items), 5000):
        async with client.pipeline(transaction=False) as pipe:
            for _, data in items[start:start + 5000]:
                pipe.xadd(stream, {FIELD: data})
            await pipe.execute()


async def drain(worker: TimedWorker, total: int) -> float:
    await worker.setup()
    start = time.perf_counter()
    while len(worker.lags) < total:
        await worker.step()
    await worker.quiesce()
    return time.perf_counter() - start


async def main(events: int, rate: int, batch: int, concurrency: int) -> None:
    database_url = await prepare("learner_bench")
    admin_url = ADMIN_URL.rsplit("/", 1)[0] + "/learner_bench"
    client = aioredis.from_url(REDIS_URL)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    admin = await asyncpg.connect(admin_url)
    stream = f"bench:evaluator:{secrets.token_hex(4)}"
    try:
        # 1. throughput: worker vs COPY, same rows, same table
        items = entries(events)
        await fill(client, stream, items)
        worker = TimedWorker(client, Database(pool, 10), EvaluatorMetrics(), stream=stream, consumer="bench",
                             batch_size=batch, block_ms=10, concurrency=concurrency)
        worker.lags = []
        worker_seconds = await drain(worker, events)
        copy_rows = [(TENANT, uuid.uuid4(), f"learner-{i % 1000}", f"lesson-{i % 50}", "lesson_viewed",
                      datetime.now(UTC)) for i in range(events)]
        start = time.perf_counter()
        await admin.copy_records_to_table(
            "progress_events", records=copy_rows,
            columns=["tenant_id", "event_id", "learner_id", "lesson_id", "verb", "occurred_at"])
        copy_seconds = time.perf_counter() - start
        # the write statement alone (parsed events, one connection, no Redis): the worker's ceiling
        parsed = [Event(TENANT, uuid.uuid4(), f"learner-{i % 1000}", f"lesson-{i % 50}", "lesson_viewed",
                        datetime.now(UTC)) for i in range(events)]
        start = time.perf_counter()
        async with pool.acquire() as connection:
            for at in range(0, events, batch):
                async with connection.transaction():
                    await write_events(connection, parsed[at:at + batch])
        statement_seconds = time.perf_counter() - start
        stored = await admin.fetchval("SELECT count(*) FROM progress_events WHERE event_id = ANY($1::uuid[])",
                                      [uuid.UUID(event_id) for event_id, _ in items])

        # 2. lag at a fixed rate
        await client.delete(stream)
        lag_worker = TimedWorker(client, Database(pool, 10), EvaluatorMetrics(), stream=stream, consumer="bench",
                                 batch_size=batch, block_ms=5, concurrency=concurrency)
        lag_worker.lags = []
        await lag_worker.setup()
        stop = asyncio.Event()

        async def run_worker() -> None:
            while not stop.is_set():
                await lag_worker.step()
            await lag_worker.quiesce()

        producer_items = entries(rate * 5)
        task = asyncio.create_task(run_worker())
        tick, per_tick, begin = 0.01, max(1, rate // 100), time.perf_counter()
        for i in range(0, len(producer_items), per_tick):
            async with client.pipeline(transaction=False) as pipe:
                for _, data in producer_items[i:i + per_tick]:
                    pipe.xadd(stream, {FIELD: data})
                await pipe.execute()
            await asyncio.sleep(max(0.0, begin + (i // per_tick + 1) * tick - time.perf_counter()))
        while len(lag_worker.lags) < len(producer_items):  # noqa: ASYNC110  # polling a plain list
            await asyncio.sleep(0.05)
        stop.set()
        await task
        lags = sorted(lag_worker.lags)
    finally:
        await client.delete(stream)
        await client.aclose()
        await pool.close()
        await admin.close()

    worker_rate, copy_rate = events / worker_seconds, events / copy_seconds
    print(f"\n{events} events, batches of {batch}, {concurrency} in flight, one worker process, PostgreSQL and "
          "Redis on this machine\n")
    print(f"worker (parse, unnest + ON CONFLICT + projection, XACK): {worker_rate:9.0f} rows/s "
          f"({worker_seconds:.2f} s; {stored} of {events} stored)")
    print(f"baseline copy_records_to_table (superuser, no RLS):      {copy_rate:9.0f} rows/s ({copy_seconds:.2f} s)")
    print(f"the write statement alone (no Redis, no parsing):        {events / statement_seconds:9.0f} rows/s")
    ratio = worker_rate / copy_rate
    print(f"ratio: {ratio:.2f}x (goal >= 0.5x: {'met' if ratio >= 0.5 else 'MISSED'})")
    print(f"\nend-to-end lag at {rate} events/s for 5 s (XADD -> committed row), {len(lags)} events: "
          f"p50 {lags[len(lags) // 2] * 1000:.0f} ms, p99 {lags[int(len(lags) * 0.99)] * 1000:.0f} ms, "
          f"max {lags[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2, help="batches in flight (EVALUATOR_CONCURRENCY)")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rate, args.batch, args.concurrency))
    sys.exit(0)
