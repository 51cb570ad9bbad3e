"""Progress rows, written by the evaluator: events once per (tenant_id, event_id), and the projection.

One statement per tenant and batch takes the stream entries as they are (a JSON array of what learner-api
wrote): PostgreSQL parses them (``json_to_recordset``), which costs it less than Python spends parsing,
and the row-level security of that tenant applies to every row.

Two forms of the events insert:
- *fresh* (the usual case: entries read for the first time): a plain INSERT. A duplicate event id makes
  the unique index raise ``UniqueViolationError`` and the whole statement does nothing; the caller then
  runs the batch again as
- *deduplicating*: ``ON CONFLICT ON CONSTRAINT progress_events_pkey DO NOTHING``, for redelivered
  batches. The speculative insertion that ON CONFLICT needs costs every row more than the rare retry
  costs.
Either way only rows that are really new come back from RETURNING, so counters never count twice.

The projection (first view and first completion per learner and lesson) only ever moves to an earlier
time (LEAST), so applying an event twice changes nothing: it is computed from the whole batch (no need to
know which rows were new) and written only for pairs whose values this batch makes earlier. A pair
already known with earlier or equal times is read through the index and not written (an upsert would
lock and rewrite the row even when nothing changes). The rows go in key order, so two batches that
touch the same pairs lock them in the same order and never deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

_STATEMENT = """
WITH batch AS MATERIALIZED (
    SELECT * FROM json_to_recordset($2::json)
        AS e(id uuid, learner text, lesson_id text, verb text, occurred_at timestamptz)
), inserted AS (
    INSERT INTO progress_events (tenant_id, event_id, learner_id, lesson_id, verb, occurred_at)
    SELECT $1, id, learner, lesson_id, verb, occurred_at FROM batch
    {on_conflict}
    RETURNING verb
), firsts AS (
    SELECT learner, lesson_id, min(occurred_at) FILTER (WHERE verb = 'lesson_viewed') AS viewed,
           min(occurred_at) FILTER (WHERE verb = 'lesson_completed') AS completed
    FROM batch GROUP BY learner, lesson_id
), projected AS (
    INSERT INTO lesson_progress AS p (tenant_id, learner_id, lesson_id, first_viewed_at, completed_at)
    SELECT $1, f.learner, f.lesson_id, f.viewed, f.completed
    FROM firsts f
    LEFT JOIN lesson_progress known
        ON known.tenant_id = $1 AND known.learner_id = f.learner AND known.lesson_id = f.lesson_id
    WHERE known.tenant_id IS NULL
       OR f.viewed < coalesce(known.first_viewed_at, 'infinity')
       OR f.completed < coalesce(known.completed_at, 'infinity')
    ORDER BY f.learner, f.lesson_id
    ON CONFLICT ON CONSTRAINT lesson_progress_pkey DO UPDATE SET
        first_viewed_at = LEAST(p.first_viewed_at, EXCLUDED.first_viewed_at),
        completed_at = LEAST(p.completed_at, EXCLUDED.completed_at)
)
SELECT count(*) FILTER (WHERE verb = 'lesson_viewed') AS viewed,
       count(*) FILTER (WHERE verb = 'lesson_completed') AS completed
FROM inserted
"""
_FRESH = _STATEMENT.format(on_conflict="")
_DEDUPLICATING = _STATEMENT.format(on_conflict="ON CONFLICT ON CONSTRAINT progress_events_pkey DO NOTHING")


@dataclass
class Written:
    """Rows that were really new (from RETURNING): redelivered events count nothing."""

    viewed: int = 0
    completed: int = 0

    @property
    def total(self) -> int:
        return self.viewed + self.completed

    def add(self, other: Written) -> None:
        self.viewed += other.viewed
        self.completed += other.completed


async def write_entries(connection: asyncpg.Connection, tenant: str, entries: str, *,
                        fresh: bool = False) -> Written:
    """Store ``entries`` (a JSON array of stream entries, all of ``tenant``) in the caller's transaction,
    under that tenant's row-level security. ``fresh=True`` is the cheaper plain INSERT, which raises
    ``asyncpg.UniqueViolationError`` (and changes nothing) when any event is already stored."""
    await connection.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
    row = await connection.fetchrow(_FRESH if fresh else _DEDUPLICATING, tenant, entries)
    return Written(row["viewed"], row["completed"])


async def tenant_stats(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await connection.fetch("SELECT * FROM platform_tenant_stats()"))


async def prune_bookkeeping(connection: asyncpg.Connection, *, keys_days: float, events_days: float) -> tuple[int, int]:
    """Delete Idempotency-Keys and payment event ids older than their retention; returns how many."""
    row = await connection.fetchrow("SELECT * FROM prune_bookkeeping(make_interval(days => $1),"
                                    " make_interval(days => $2))", int(keys_days), int(events_days))
    return int(row["idempotency_keys"]), int(row["payment_events"])
