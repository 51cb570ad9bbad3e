"""Progress rows, written by the evaluator: events once per (tenant_id, event_id), and the projection.

One statement per tenant and batch, under that tenant's row-level security. The entries come in as
five columns of text (``Columns``: the events' ids, learners, lessons, verbs and times, each joined
with newlines), which PostgreSQL splits (``string_to_array``) and casts: msgspec takes the events apart
in C for less than PostgreSQL spends on ``json_to_recordset`` (which builds a hash table per object), and
the rows cost PostgreSQL no JSON at all. PostgreSQL still checks every value as it casts and stores it
(uuid, timestamptz, the verb's CHECK, NOT NULL), as it did from JSON. A batch that msgspec cannot take
apart that way (an entry that is not JSON, a field missing or not a string, a newline inside a value)
goes to PostgreSQL as it is, a JSON array parsed by ``json_to_recordset``: the same rows, the same
errors for the entries at fault.

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
from typing import NamedTuple

import asyncpg
import msgspec

_FROM_JSON = """
    SELECT * FROM json_to_recordset($2::json)
        AS e(id uuid, learner text, lesson_id text, verb text, occurred_at timestamptz)"""
_FROM_COLUMNS = """
    SELECT * FROM unnest(string_to_array($2, E'\\n')::uuid[], string_to_array($3, E'\\n'),
                         string_to_array($4, E'\\n'), string_to_array($5, E'\\n'),
                         string_to_array($6, E'\\n')::timestamptz[])
        AS e(id, learner, lesson_id, verb, occurred_at)"""
_STATEMENT = """
WITH batch AS MATERIALIZED ({source}
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
_DEDUPLICATE = "ON CONFLICT ON CONSTRAINT progress_events_pkey DO NOTHING"
#: (fresh, from columns) -> statement
_STATEMENTS = {(fresh, columns): _STATEMENT.format(source=_FROM_COLUMNS if columns else _FROM_JSON,
                                                   on_conflict="" if fresh else _DEDUPLICATE)
               for fresh in (True, False) for columns in (True, False)}


class _Event(msgspec.Struct):
    """The fields the statement reads, as strings: PostgreSQL casts and checks them, as from JSON."""

    id: str
    learner: str
    lesson_id: str
    verb: str
    occurred_at: str


_EVENTS = msgspec.json.Decoder(list[_Event])


class Columns(NamedTuple):
    """A batch's events as five newline-joined columns of text."""

    ids: str
    learners: str
    lessons: str
    verbs: str
    times: str


#: A batch for ``write_entries``: columns, or (when msgspec could not make them) a JSON array of the entries.
Batch = Columns | str


def batch(entries: list[bytes]) -> Batch:
    """The entries of one tenant (each a JSON object as learner-api writes it) made ready for
    ``write_entries``. Raises ``UnicodeDecodeError`` for entries that are not UTF-8."""
    array = b"[" + b",".join(entries) + b"]"
    try:
        events = _EVENTS.decode(array)
    except msgspec.DecodeError:  # not JSON, a field missing or of another type: PostgreSQL parses them
        return array.decode()
    columns = Columns("\n".join([event.id for event in events]), "\n".join([event.learner for event in events]),
                      "\n".join([event.lesson_id for event in events]), "\n".join([event.verb for event in events]),
                      "\n".join([event.occurred_at for event in events]))
    for column in columns:  # a newline or an empty value would split wrongly: PostgreSQL parses the JSON
        if not column or column.count("\n") != len(events) - 1:
            return array.decode()
    return columns


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


async def write_entries(connection: asyncpg.Connection, tenant: str, entries: Batch, *,
                        fresh: bool = False) -> Written:
    """Store ``entries`` (see ``batch``; all of ``tenant``) in the caller's transaction, under that
    tenant's row-level security. ``fresh=True`` is the cheaper plain INSERT, which raises
    ``asyncpg.UniqueViolationError`` (and changes nothing) when any event is already stored."""
    await connection.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
    if isinstance(entries, Columns):
        row = await connection.fetchrow(_STATEMENTS[fresh, True], tenant, *entries)
    else:
        row = await connection.fetchrow(_STATEMENTS[fresh, False], tenant, entries)
    return Written(row["viewed"], row["completed"])


async def tenant_stats(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await connection.fetch("SELECT * FROM platform_tenant_stats()"))


async def prune_bookkeeping(connection: asyncpg.Connection, *, keys_days: float, events_days: float) -> tuple[int, int]:
    """Delete Idempotency-Keys and payment event ids older than their retention; returns how many."""
    row = await connection.fetchrow("SELECT * FROM prune_bookkeeping(make_interval(days => $1),"
                                    " make_interval(days => $2))", int(keys_days), int(events_days))
    return int(row["idempotency_keys"]), int(row["payment_events"])
