"""The progress pipeline: Redis Stream consumer group -> PostgreSQL, nothing lost, nothing twice.

- Read own pending entries first (what this consumer had when it died), then new ones (``>``).
- Every ``claim_interval`` XAUTOCLAIM entries idle longer than ``claim_idle`` from any consumer (a dead
  replica's, or our own that failed), which also counts a delivery.
- A batch is written in one transaction, one statement per tenant under its row-level security, and
  XACKed only after the commit. A crash between the two redelivers the batch; the primary key makes it a
  no-op, and counters move only by the rows RETURNING says were new. Entries read for the first time go
  through the cheaper plain INSERT; a duplicate among them (a redelivery) makes the batch run again with
  ON CONFLICT (see learner_api.data.progress).
- The entries are not checked here: msgspec takes them apart into columns and PostgreSQL casts and checks
  the values (see learner_api.data.progress). When a batch fails because of what is
  in it (a data exception, a constraint, a program limit such as an index row too large: SQLSTATE classes
  22, 23 and 54), it is split in halves until the entries at fault stand alone; every other entry is
  stored and acknowledged at once, whatever its tenant. An entry at fault that is not even a progress
  event is dead-lettered at once; one that is (and might be stored later, say after a fix) stays pending
  and is dead-lettered on its ``max_deliveries``-th delivery, with the reason.
- Any other database error is about the deployment (down, not migrated, no privilege): the entries stay
  pending, nobody's deliveries are spent, and ``run`` backs off. A deadlock or serialization failure is
  retried at once.
- If the consumer group disappears (Redis restarted empty, or someone deleted the stream), it is made
  again and reading goes on.
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
from typing import Any, Literal

import asyncpg
import redis.asyncio as aioredis
from hiredis import pack_command
from redis.exceptions import ResponseError

from learner_api.data.progress import Written, batch, write_entries
from learner_api.dependencies import POSTGRES_DOWN, REDIS_DOWN, Database
from learner_api.evaluator.metrics import EvaluatorMetrics
from learner_api.streams import CONSUMER_GROUP, FIELD, TENANT_FIELD, dead_letters

logger = logging.getLogger("learner_api.evaluator")

#: Field names and values as Redis sent them: a flat list from XREADGROUP (see Worker._reader), a dict from
#: XAUTOCLAIM.
Fields = dict[bytes, bytes] | list[bytes]
Entry = tuple[bytes, Fields]
VERBS = ("lesson_viewed", "lesson_completed")
#: SQLSTATE classes that say the rows are at fault: data exception, integrity constraint violation,
#: program limit exceeded (54000 "index row size exceeds maximum" for a 3 KB learner id, say).
ENTRY_CLASSES = ("22", "23", "54")
#: Deadlock and serialization failures: try the same batch again.
RETRY_CLASS = "40"
RETRIES = 3
_FIELD, _TENANT = FIELD.encode(), TENANT_FIELD.encode()
_GROUP = CONSUMER_GROUP.encode()


def entry_time(entry_id: str | bytes) -> float:
    """Stream ids start with the XADD time in milliseconds."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0]) / 1000


def mapping(fields: Fields) -> dict[bytes, bytes]:
    return fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))


def _raw(response: Any, **options: Any) -> Any:
    return response


class BadEntries(ValueError):
    """Entries that cannot even be handed to PostgreSQL (not UTF-8)."""


def blame(exc: BaseException) -> Literal["entries", "duplicate", "retry", "deployment"]:
    """Whose fault a failed write is. Only the entries' faults may ever cost an entry a delivery."""
    if isinstance(exc, BadEntries):
        return "entries"
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return "entries"  # asyncpg could not encode an argument: what it was given is wrong
    if not isinstance(exc, asyncpg.PostgresError) or isinstance(exc, POSTGRES_DOWN):
        return "deployment"
    if isinstance(exc, asyncpg.UniqueViolationError):
        return "duplicate"
    state = exc.sqlstate or ""
    if state[:2] == RETRY_CLASS:
        return "retry"
    return "entries" if state[:2] in ENTRY_CLASSES else "deployment"


def parse(fields: dict[bytes, bytes]) -> str:
    """Check a stream entry as learner-api writes it and return its tenant; ValueError says what is wrong.
    Only used for the few entries that need a closer look: PostgreSQL checks the rest."""
    try:
        data = json.loads(fields[_FIELD])
        tenant = str(data["tenant"])
        uuid.UUID(data["id"])
        for name in ("learner", "lesson_id", "verb"):
            if not isinstance(data[name], str):
                raise TypeError(f"{name} is not a string")
        occurred_at = datetime.fromisoformat(data["occurred_at"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a progress event: {type(exc).__name__}: {exc}") from None
    if data["verb"] not in VERBS:
        raise ValueError(f"unknown verb {data['verb']!r}")
    if occurred_at.tzinfo is None:
        raise ValueError("occurred_at has no timezone")
    return tenant


#: One entry on its way to PostgreSQL: (entry id, tenant, the event's JSON).
Item = tuple[bytes, bytes, bytes]


class Worker:
    """Consumes one stream (one shard); the evaluator runs one per stream, sharing ``writers``."""

    def __init__(self, client: aioredis.Redis, database: Database, metrics: EvaluatorMetrics, *, stream: str,
                 consumer: str, batch_size: int = 500, block_ms: int = 1000, claim_idle: float = 60.0,
                 claim_interval: float = 5.0, max_deliveries: int = 5, trim_interval: float = 30.0,
                 concurrency: int = 1, writers: asyncio.Semaphore | None = None) -> None:
        self.redis, self.database, self.metrics = client, database, metrics
        self.stream, self.dead = stream, dead_letters(stream)
        self.consumer, self.batch_size, self.block_ms = consumer, batch_size, block_ms
        self.claim_idle, self.claim_interval = claim_idle, claim_interval
        self.max_deliveries, self.trim_interval = max_deliveries, trim_interval
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)  # batches read ahead of this stream
        self._writers = writers or asyncio.Semaphore(concurrency)  # transactions at once, all streams
        self._inflight: set[asyncio.Task[None]] = set()
        self._reader = _raw_reader(client)
        self._stream_key = stream.encode()
        self._failure: BaseException | None = None
        self._own_pending = True  # read our own pending entries before anything new
        self._next_claim = 0.0
        self._next_trim = 0.0
        #: For /livez: when entries last moved (stored, dead-lettered, or none were waiting), and whether
        #: the last read found any.
        self.last_progress = time.monotonic()
        self.busy = False

    def stalled(self, limit: float) -> bool:
        """Entries are waiting and none has moved for ``limit`` seconds."""
        return (self.busy or bool(self._inflight)) and time.monotonic() - self.last_progress > limit

    async def setup(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; the batches in hand are finished (written and acknowledged) first."""
        backoff = 0.5
        made = False  # the group, within the retries: Redis may be away when the loop starts
        try:
            while not stop.is_set():
                try:
                    if not made:
                        await self.setup()
                        made = True
                    await self.step()
                    if self._failure is not None:  # a batch in flight met a dependency that is down
                        failure, self._failure = self._failure, None
                        raise failure
                    backoff = 0.5
                    continue
                except ResponseError as exc:
                    if "NOGROUP" in str(exc) or "no such key" in str(exc):
                        logger.warning("the consumer group of %s is gone (Redis restarted empty, or the stream "
                                       "was deleted): making it again", self.stream)
                        await self.quiesce()
                        self._failure = None
                        await self.setup()
                        self._own_pending = True
                        continue
                    if "UNBLOCKED" in str(exc) or "MOVED" in str(exc):  # a cluster failing over or resharding
                        logger.warning("Redis interrupted a read (%s); retrying in %.1fs", exc, backoff)
                    else:
                        logger.error("Redis refused a command (%s); retrying in %.1fs", exc, backoff)
                except (*REDIS_DOWN, *POSTGRES_DOWN, asyncpg.PostgresError) as exc:
                    if isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, POSTGRES_DOWN):
                        logger.error("PostgreSQL refused a batch for a reason that is not the entries' (%s: %s); "
                                     "is the database migrated? retrying in %.1fs", type(exc).__name__, exc, backoff)
                    else:
                        logger.warning("dependency unavailable (%s); retrying in %.1fs", type(exc).__name__, backoff)
                except Exception:  # a bug here or in a client library: the entries stay pending, /livez watches
                    logger.exception("unexpected error; retrying in %.1fs", backoff)
                await self.quiesce()
                self._failure = None
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
                await self.handle(entries, fresh=True)
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
            await self.handle(entries, fresh=True)
        except Exception as exc:  # handed to run(), which decides
            self._failure = exc  # the entries stay pending; run() backs off and reads them again
        finally:
            self._slots.release()

    async def _read(self, start: str, block: int | None) -> list[Entry]:
        reply: Any = await self._reader.xreadgroup(CONSUMER_GROUP, self.consumer, {self.stream: start},
                                                   count=self.batch_size, block=block)
        entries: list[Entry] = []
        for _, messages in (reply.items() if isinstance(reply, dict) else reply or []):
            entries += [(entry_id, fields) for entry_id, fields in messages if fields]
        if entries:
            self.busy = True
        elif start == ">" and not self._inflight:
            self.busy, self.last_progress = False, time.monotonic()  # nothing waits: up to date
        return entries

    async def _claim(self) -> list[Entry]:
        reply: Any = await self.redis.xautoclaim(self.stream, CONSUMER_GROUP, self.consumer,
                                                 min_idle_time=int(self.claim_idle * 1000), start_id="0-0",
                                                 count=self.batch_size)
        claimed: list[Entry] = [(entry_id, fields) for entry_id, fields in reply[1] if fields]
        if claimed:
            self.busy = True
            logger.info("claimed %d entries idle for over %.0fs", len(claimed), self.claim_idle)
        return claimed

    async def handle(self, entries: list[Entry], *, fresh: bool = False) -> None:
        """Store a batch and acknowledge it. ``fresh``: read for the first time, so most likely not stored
        yet (the plain INSERT is tried first)."""
        start = time.perf_counter()
        items: list[Item] = [(entry_id, fields[1], fields[3]) for entry_id, fields in entries  # as learner-api
                             if type(fields) is list and len(fields) == 4 and fields[0] == _TENANT  # writes them
                             and fields[2] == _FIELD]
        if len(items) < len(entries):  # some are not: one by one, in order
            items = []
            for entry_id, fields in entries:
                item = await self._item(entry_id, fields)
                if item is not None:
                    items.append(item)
        if not items:
            return
        await self._store(items, entries, fresh=fresh, top=True)
        self.metrics.batch_size.observe(len(items))
        self.metrics.batch_seconds.observe(time.perf_counter() - start)

    async def _item(self, entry_id: bytes, fields: Fields) -> Item | None:
        """One entry's tenant and event, or None when it is not a progress event (then dead-lettered)."""
        if type(fields) is list and len(fields) == 4 and fields[0] == _TENANT and fields[2] == _FIELD:
            return entry_id, fields[1], fields[3]
        known = mapping(fields)
        data, tenant = known.get(_FIELD), known.get(_TENANT)
        try:  # written before the tenant had its own field, or not by learner-api
            tenant = tenant if tenant is not None and data is not None else parse(known).encode()
        except ValueError as exc:
            await self._dead_letter(entry_id, known, str(exc))
            return None
        return entry_id, tenant, data or b""

    async def _store(self, items: list[Item], entries: list[Entry], *, fresh: bool, top: bool = False) -> None:
        """Write ``items`` in one transaction, or (when some of them are at fault) every part of them that
        can be written, halving until the entries at fault stand alone."""
        retries = 0
        while True:
            try:
                written = await self._write(items, fresh=fresh)
                break
            except (asyncpg.PostgresError, asyncpg.InterfaceError, BadEntries) as exc:
                fault = blame(exc)
                if fault == "duplicate" and fresh:
                    fresh = False  # some were stored before (a redelivery): the deduplicating insert
                    continue
                if fault == "retry" and retries < RETRIES:
                    retries += 1
                    continue
                if fault not in ("entries", "duplicate"):
                    raise
                if len(items) == 1:
                    await self._refuse(items[0], next(mapping(f) for i, f in entries if i == items[0][0]), exc)
                    return
                if top:
                    logger.warning("batch of %d failed (%s: %s); storing the entries not at fault", len(items),
                                   type(exc).__name__, exc)
                half = len(items) // 2
                await self._store(items[:half], entries, fresh=fresh)
                await self._store(items[half:], entries, fresh=fresh)
                return
        await self._acknowledge([entry_id for entry_id, _, _ in items], written, len(items))

    async def _write(self, items: list[Item], *, fresh: bool) -> Written:
        by_tenant: dict[bytes, list[bytes]] = {}
        if len({tenant for _, tenant, _ in items}) == 1:  # one tenant: no loop in Python
            by_tenant[items[0][1]] = [data for _, _, data in items]
        else:
            for _, tenant, data in items:
                by_tenant.setdefault(tenant, []).append(data)
        try:  # in the same order in every transaction: two of them never wait for each other in a circle
            payloads = [(key.decode(), batch(data)) for key, data in sorted(by_tenant.items())]
        except UnicodeDecodeError as exc:
            raise BadEntries(f"not UTF-8: {exc}") from None
        written = Written()
        async with self._writers, self.database.pool.acquire(timeout=self.database.timeout) as connection, \
                connection.transaction():
            for name, payload in payloads:
                written.add(await write_entries(connection, name, payload, fresh=fresh))
        return written

    async def _acknowledge(self, ids: list[bytes], written: Written, handled: int) -> None:
        await self._xack(ids)
        now = time.time()
        self.metrics.commit_lag.observe_entries(now, ids)
        self.metrics.lesson_views.inc(written.viewed)
        self.metrics.lesson_completed.inc(written.completed)
        self.metrics.events.labels("written").inc(written.total)
        self.metrics.events.labels("duplicate").inc(handled - written.total)
        self.metrics.last_batch.set(now)
        self.last_progress = time.monotonic()

    async def _xack(self, ids: list[bytes]) -> None:
        """XACK, packed by hiredis in one call: redis-py encodes each argument in Python first, which for a
        batch's thousands of ids cost more than the rest of the acknowledgement."""
        if not isinstance(self.redis, aioredis.Redis):  # a cluster client routes it itself
            await self.redis.xack(self.stream, CONSUMER_GROUP, *ids)
            return
        pool = self.redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:  # (hiredis' stub types its argument as a 1-tuple)
            await connection.send_packed_command(pack_command((b"XACK", self._stream_key, _GROUP, *ids)))  # type: ignore[arg-type]
            await connection.read_response()  # the count acknowledged; an error reply raises ResponseError
        except BaseException:
            await connection.disconnect()  # a reply may still be on its way: the connection is not reused
            raise
        finally:
            await pool.release(connection)

    async def _refuse(self, item: Item, fields: dict[bytes, bytes], exc: BaseException) -> None:
        """One entry that PostgreSQL would not take: not a progress event at all -> dead letters now;
        otherwise it stays pending until its ``max_deliveries``-th delivery."""
        entry_id, tenant, _ = item
        try:
            parse(fields)
        except ValueError as bad:
            await self._dead_letter(entry_id, fields, str(bad))
            return
        deliveries = await self._deliveries(entry_id)
        if deliveries >= self.max_deliveries:
            await self._dead_letter(entry_id, fields, f"failed {deliveries} times; last: {type(exc).__name__}: {exc}")
        else:
            self.metrics.events.labels("retried").inc()
            logger.warning("entry %s of tenant %s failed (delivery %d of %d): %s", entry_id.decode(),
                           tenant.decode(errors="replace"), deliveries, self.max_deliveries, type(exc).__name__)

    async def _deliveries(self, entry_id: bytes) -> int:
        pending = await self.redis.xpending_range(self.stream, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1)
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        """Copy to the dead-letter stream and acknowledge, in one MULTI: never both lost nor both kept."""
        logger.error("dead-lettering %s: %s", entry_id.decode(), reason)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead, {**{k.decode(): v for k, v in fields.items()}, "source_id": entry_id,
                                  "reason": reason[:1000], "consumer": self.consumer})
            pipe.xack(self.stream, CONSUMER_GROUP, entry_id)
            await pipe.execute()
        self.metrics.events.labels("dead_lettered").inc()
        self.last_progress = time.monotonic()

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
        """This stream's signals (the evaluator adds up its streams' and sets the gauges)."""
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
        return {"pending_entries": pending, "stream_lag_entries": lag, "dead_letters": dead,
                "ingest_lag_seconds": ingest_lag}


def _raw_reader(client: aioredis.Redis) -> aioredis.Redis:
    """A client on the same connections that hands XREADGROUP's reply over as Redis sent it: redis-py's
    conversion of every entry's fields into a dict cost more than anything else the evaluator does per
    entry. (A Redis Cluster client parses as usual.)"""
    if not isinstance(client, aioredis.Redis):
        return client
    reader = aioredis.Redis(connection_pool=client.connection_pool)
    reader.set_response_callback("XREADGROUP", _raw)
    return reader


def _id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
