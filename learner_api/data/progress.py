"""Progress rows, written by the evaluator: events once per (tenant_id, event_id), and the projection."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

_WRITE = """
WITH inserted AS (
    INSERT INTO progress_events (tenant_id, event_id, learner_id, lesson_id, verb, occurred_at)
    SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
    ON CONFLICT ON CONSTRAINT progress_events_pkey DO NOTHING
    RETURNING learner_id, lesson_id, verb, occurred_at
), projected AS (
    INSERT INTO lesson_progress AS p (tenant_id, learner_id, lesson_id, first_viewed_at, completed_at)
    SELECT $1, learner_id, lesson_id, min(occurred_at) FILTER (WHERE verb = 'lesson_viewed'),
           min(occurred_at) FILTER (WHERE verb = 'lesson_completed')
    FROM inserted GROUP BY learner_id, lesson_id
    ON CONFLICT ON CONSTRAINT lesson_progress_pkey DO UPDATE SET
        first_viewed_at = LEAST(p.first_viewed_at, EXCLUDED.first_viewed_at),
        completed_at = LEAST(p.completed_at, EXCLUDED.completed_at)
)
SELECT count(*) FILTER (WHERE verb = 'lesson_viewed') AS viewed,
       count(*) FILTER (WHERE verb = 'lesson_completed') AS completed
FROM inserted
"""


@dataclass(frozen=True)
class Event:
    tenant: str
    event_id: uuid.UUID
    learner: str
    lesson_id: str
    verb: str
    occurred_at: datetime


@dataclass
class Written:
    """Rows that were really new (from RETURNING): redelivered events count nothing."""

    viewed: int = 0
    completed: int = 0

    @property
    def total(self) -> int:
        return self.viewed + self.completed


async def write_events(connection: asyncpg.Connection, events: list[Event]) -> Written:
    """Insert a batch (any tenants) in the caller's transaction: one statement per tenant, each under that
    tenant's row-level security."""
    by_tenant: dict[str, list[Event]] = {}
    for event in events:
        by_tenant.setdefault(event.tenant, []).append(event)
    written = Written()
    for tenant, batch in by_tenant.items():
        await connection.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
        row = await connection.fetchrow(
            _WRITE, tenant, [e.event_id for e in batch], [e.learner for e in batch], [e.lesson_id for e in batch],
            [e.verb for e in batch], [e.occurred_at for e in batch])
        written.viewed += row["viewed"]
        written.completed += row["completed"]
    return written


async def tenant_stats(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await connection.fetch("SELECT * FROM platform_tenant_stats()"))


async def prune_bookkeeping(connection: asyncpg.Connection, *, keys_days: float, events_days: float) -> tuple[int, int]:
    """Delete Idempotency-Keys and payment event ids older than their retention; returns how many."""
    row = await connection.fetchrow("SELECT * FROM prune_bookkeeping(make_interval(days => $1),"
                                    " make_interval(days => $2))", int(keys_days), int(events_days))
    return int(row["idempotency_keys"]), int(row["payment_events"])

