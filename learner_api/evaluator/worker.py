"""The progress pipeline: Redis Stream consumer group -> PostgreSQL, nothing lost, nothing twice.

- Read own pending entries first (what this consumer had when it died), then new ones (``>``).
- Every ``claim_interval`` XAUTOCLAIM entries idle longer than ``claim_idle`` from any consumer (a dead
  replica's, or our own that failed), which also counts a delivery.
- A batch is written in one transaction (unnest + ON CONFLICT on the named key), and XACKed only after
  the commit. A crash between the two redelivers the batch; ON CONFLICT makes it a no-op, and counters
  move only by the rows RETURNING says were new.
- An entry that cannot be parsed goes to the dead-letter stream at once; an entry that fails in the
  database is retried alone, and dead-lettered (with the reason) on its ``max_deliveries``-th delivery,
  so one poison entry never blocks the others.
- The stream is trimmed to the oldest entry still pending or undelivered, never past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from learner_api.data.progress import Event, Written, write_events
from learner_api.dependencies import POSTGRES_DOWN, REDIS_DOWN, Database
from learner_api.evaluator.metrics import EvaluatorMetrics
from learner_api.streams import CONSUMER_GROUP, FIELD, dead_letters

logger = logging.getLogger("learner_api.evaluator")

Entry = tuple[str, dict[bytes, bytes]]
VERBS = ("lesson_viewed", "lesson_completed")


def entry_time(entry_id: str) -> float:
    """Stream ids start with the XADD time in milliseconds."""
    return int(entry_id.split("-", 1)[0]) / 1000


def entries_at_fault(exc: asyncpg.PostgresError) -> bool:
    """Data exceptions (class 22) and constraint violations (23) are about the rows: retry them alone and
    dead-letter them in the end. Anything else (a missing table, a privilege, a read-only replica) is
    about the deployment: stop and retry later, without spending anyone's deliveries."""
    return not isinstance(exc, POSTGRES_DOWN) and (exc.sqlstate or "")[:2] in ("22", "23")


def parse(fields: dict[bytes, bytes]) -> Event:
    """A stream entry as learner-api wrote it; ValueError says what is wrong with it."""
    try:
        data = json.loads(fields[FIELD.encode()])
        event = Event(tenant=str(data["tenant"]), event_id=uuid.UUID(data["id"]), learner=str(data["learner"]),
                      lesson_id=str(data["lesson_id"]), verb=str(data["verb"]),
                      occurred_at=datetime.fromisoformat(data["occurred_at"]))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a progress event: {type(exc).__name__}: {exc}") from None
    if event.verb not in VERBS:
        raise ValueError(f"unknown verb {event.verb!r}")
    if event.occurred_at.tzinfo is None:
        raise ValueError("occurred_at has no timezone")
    return event


class Worker:
    def __init__(self, client: aioredis.Redis, database: Database, metrics: EvaluatorMetrics, *, stream: str,
                 consumer: str, batch_size: int = 500, block_ms: int = 1000, claim_idle: float = 60.0,
                 claim_interval: float = 5.0, max_deliveries: int = 5, trim_interval: float = 30.0,
                 concurrency: int = 1) -> None:
        self.redis, self.database, self.metrics = client, database, metrics
        self.stream, self.dead = stream, dead_letters(stream)
        self.consumer, self.batch_size, self.block_ms = consumer, batch_size, block_ms
        self.claim_idle, self.claim_interval = claim_idle, claim_interval
        self.max_deliveries, self.trim_interval = max_deliveries, trim_interval
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._own_pending = True  # read our own pending entries before anything new
        self._next_claim = 0.0
        self._next_trim = 0.0

    async def setup(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; the batches in hand are finished (written and acknowledged) first."""
        await self.setup()
        backoff = 0.5
        try:
            while not stop.is_set():
                try:
                    await self.step()
                    if self._failure is not None:  # a batch in flight met a dependency that is down
                        failure, self._failure = self._failure, None
                        raise failure
                    backoff = 0.5
                except (*REDIS_DOWN, *POSTGRES_DOWN, asyncpg.PostgresError) as exc:
                    if isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, POSTGRES_DOWN):
                        logger.error("PostgreSQL refused a batch for a reason that is not the entries' (%s: %s); "
                                     "is the database migrated? retrying in %.1fs", type(exc).__name__, exc, backoff)
                    else:
                        logger.warning("dependency unavailable (%s); retrying in %.1fs", type(exc).__name__, backoff)
                    await self.quiesce()
                    self._own_pending = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
                    backoff = min(backoff * 2, 10)
        finally:
            await self.quiesce()

    async def quiesce(self) -> None:
        """Wait for the batches in flight (their entries stay pending if they fail: nothing is lost)."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def step(self) -> int:
        """One round: own pending, abandoned entries, or new ones. Returns how many entries were taken
        (with concurrency 1 they are also written; above it, new entries are written in the background)."""
        now = time.monotonic()
        if self._own_pending:
            await self.quiesce()  # what is in flight is pending too: do not take it twice
            entries = await self._read("0", block=None)
            if entries:
                await self.handle(entries)
                return len(entries)
            self._own_pending = False
        if now >= self._next_claim:
            self._next_claim = now + self.claim_interval
            claimed = await self._claim()
            if claimed:
                await self.handle(claimed)
                return len(claimed)
        if now >= self._next_trim:
            self._next_trim = now + self.trim_interval
            await self.trim()
        if self.concurrency == 1:
            entries = await self._read(">", block=self.block_ms)
            if entries:
                await self.handle(entries)
            return len(entries)
        await self._slots.acquire()  # read no more than can be written: the rest stays in Redis
        try:
            entries = await self._read(">", block=self.block_ms)
        except BaseException:
            self._slots.release()
            raise
        if not entries:
            self._slots.release()
            return 0
        task = asyncio.create_task(self._handle_in_background(entries))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return len(entries)

    async def _handle_in_background(self, entries: list[Entry]) -> None:
        """Reading and parsing the next batch overlaps PostgreSQL writing this one."""
        try:
            await self.handle(entries)
        except (*REDIS_DOWN, *POSTGRES_DOWN, asyncpg.PostgresError) as exc:
            self._failure = exc  # the entries stay pending; run() backs off and reads them again
        finally:
            self._slots.release()

    async def _read(self, start: str, block: int | None) -> list[Entry]:
        reply: Any = await self.redis.xreadgroup(CONSUMER_GROUP, self.consumer, {self.stream: start},
                                            count=self.batch_size, block=block)
        entries: list[Entry] = []
        for _, messages in reply or []:
            entries += [(_id(entry_id), fields) for entry_id, fields in messages if fields]
        return entries

    async def _claim(self) -> list[Entry]:
        reply: Any = await self.redis.xautoclaim(self.stream, CONSUMER_GROUP, self.consumer,
                                            min_idle_time=int(self.claim_idle * 1000), start_id="0-0",
                                            count=self.batch_size)
        claimed = [(_id(entry_id), fields) for entry_id, fields in reply[1] if fields]
        if claimed:
            logger.info("claimed %d entries idle for over %.0fs", len(claimed), self.claim_idle)
        return claimed

    async def handle(self, entries: list[Entry]) -> None:
        start = time.perf_counter()
        events: list[tuple[str, Event]] = []
        for entry_id, fields in entries:
            try:
                events.append((entry_id, parse(fields)))
            except ValueError as exc:
                await self._dead_letter(entry_id, fields, str(exc))
        if not events:
            return
        try:
            written = await self._write([event for _, event in events])
        except asyncpg.PostgresError as exc:
            if not entries_at_fault(exc):
                raise
            logger.warning("batch of %d failed (%s); writing its entries one by one", len(events), exc)
            await self._one_by_one(events, dict(entries))
            return
        await self._acknowledge([entry_id for entry_id, _ in events], written, len(events))
        self.metrics.batch_size.observe(len(events))
        self.metrics.batch_seconds.observe(time.perf_counter() - start)

    async def _write(self, events: list[Event]) -> Written:
        async with self.database.pool.acquire(timeout=self.database.timeout) as connection, \
                connection.transaction():
            return await write_events(connection, events)

    async def _acknowledge(self, ids: list[str], written: Written, handled: int) -> None:
        await self.redis.xack(self.stream, CONSUMER_GROUP, *ids)
        now = time.time()
        for entry_id in ids:
            self.metrics.commit_lag.observe(max(0.0, now - entry_time(entry_id)))
        self.metrics.lesson_views.inc(written.viewed)
        self.metrics.lesson_completed.inc(written.completed)
        self.metrics.events.labels("written").inc(written.total)
        self.metrics.events.labels("duplicate").inc(handled - written.total)
        self.metrics.last_batch.set(now)

    async def _one_by_one(self, events: list[tuple[str, Event]], fields: dict[str, dict[bytes, bytes]]) -> None:
        for entry_id, event in events:
            try:
                written = await self._write([event])
            except asyncpg.PostgresError as exc:
                if not entries_at_fault(exc):
                    raise
                deliveries = await self._deliveries(entry_id)
                if deliveries >= self.max_deliveries:
                    await self._dead_letter(entry_id, fields[entry_id],
                                            f"failed {deliveries} times; last: {type(exc).__name__}: {exc}")
                else:
                    self.metrics.events.labels("retried").inc()
                    logger.warning("entry %s failed (delivery %d of %d): %s", entry_id, deliveries,
                                   self.max_deliveries, type(exc).__name__)
                continue
            await self._acknowledge([entry_id], written, 1)

    async def _deliveries(self, entry_id: str) -> int:
        pending = await self.redis.xpending_range(self.stream, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1)
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _dead_letter(self, entry_id: str, fields: dict[bytes, bytes], reason: str) -> None:
        """Copy to the dead-letter stream and acknowledge, in one MULTI: never both lost nor both kept."""
        logger.error("dead-lettering %s: %s", entry_id, reason)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead, {**{k.decode(): v for k, v in fields.items()}, "source_id": entry_id,
                                  "reason": reason[:1000], "consumer": self.consumer})
            pipe.xack(self.stream, CONSUMER_GROUP, entry_id)
            await pipe.execute()
        self.metrics.events.labels("dead_lettered").inc()

    async def trim(self) -> None:
        """Drop what every consumer is done with: entries older than both the oldest pending entry and
        the group's last delivered id."""
        group = await self._group()
        if group is None:
            return
        floor = _id(group["last-delivered-id"])
        summary = await self.redis.xpending(self.stream, CONSUMER_GROUP)
        if summary["pending"]:
            floor = min(floor, _id(summary["min"]), key=_order)
        if floor != "0-0":
            await self.redis.xtrim(self.stream, minid=floor, approximate=False)

    async def _group(self) -> dict[str, Any] | None:
        for group in await self.redis.xinfo_groups(self.stream):
            if _id(group["name"]) == CONSUMER_GROUP:
                return dict(group)
        return None

    async def observe(self) -> dict[str, float]:
        """Refresh the stream gauges (also what the alert rules read)."""
        group = await self._group()
        summary = await self.redis.xpending(self.stream, CONSUMER_GROUP)
        dead = await self.redis.xlen(self.dead)
        pending = int(summary["pending"])
        lag = int(group.get("lag") or 0) if group else 0
        oldest: float | None = entry_time(_id(summary["min"])) if pending else None
        if lag and group is not None:
            after = await self.redis.xrange(self.stream, min="(" + _id(group["last-delivered-id"]), count=1)
            if after:
                first = entry_time(_id(after[0][0] or b"0-0"))
                oldest = first if oldest is None else min(oldest, first)
        ingest_lag = max(0.0, time.time() - oldest) if oldest is not None else 0.0
        self.metrics.pending.set(pending)
        self.metrics.lag_entries.set(lag)
        self.metrics.dead_letters.set(dead)
        self.metrics.ingest_lag.set(ingest_lag)
        return {"pending_entries": pending, "stream_lag_entries": lag, "dead_letters": dead,
                "ingest_lag_seconds": ingest_lag}


def _id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
