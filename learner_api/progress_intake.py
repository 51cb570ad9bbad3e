"""Accepting progress events: idempotent like xAPI statements, into the Redis Stream in one round trip.

One Lua script per batch checks every event id against its dedupe key and, only when no id conflicts,
records the new ids and XADDs the new events: atomically, so a batch is either taken whole or refused
whole, and a retried batch adds nothing. The dedupe keys live for ``ttl`` seconds (7 days by default);
after that PostgreSQL's primary key (tenant_id, event_id) still makes a replay a no-op, though a
conflicting body is then ignored instead of answered with 409.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from learner_api.streams import FIELD, dedupe_key

# KEYS: the stream, then one dedupe key per event. ARGV: ttl, then per event its body hash and entry.
_ACCEPT = """
local ttl = ARGV[1]
local fresh, conflicts = {}, {}
for i = 2, #KEYS do
  local known = redis.call('GET', KEYS[i])
  if not known then
    fresh[#fresh + 1] = i
  elseif known ~= ARGV[2 * i - 2] then
    conflicts[#conflicts + 1] = i - 2
  end
end
if #conflicts > 0 then
  return {0, conflicts}
end
for _, i in ipairs(fresh) do
  redis.call('SET', KEYS[i], ARGV[2 * i - 2], 'EX', ttl)
  redis.call('XADD', KEYS[1], '*', '""" + FIELD + """', ARGV[2 * i - 1])
end
return {1, #fresh}
"""


@dataclass(frozen=True)
class Outcome:
    accepted: int
    duplicates: int
    conflicts: list[int]  # indexes (into the batch) of ids already taken with another body


def stream_entry(*, tenant: str, learner: str, event_id: str, verb: str, lesson_id: str, occurred_at: str) -> bytes:
    """The stream entry for one event: what the evaluator parses, and (hashed) what identifies it."""
    return json.dumps({"tenant": tenant, "learner": learner, "id": event_id, "verb": verb, "lesson_id": lesson_id,
                       "occurred_at": occurred_at}, separators=(",", ":")).encode()


def body_hash(entry: bytes) -> bytes:
    return hashlib.sha256(entry).digest()[:16]


class ProgressIntake:
    def __init__(self, client: aioredis.Redis, stream: str, ttl: int) -> None:
        self.stream, self.ttl = stream, ttl
        self._script = client.register_script(_ACCEPT)

    async def accept(self, tenant: str, events: list[tuple[str, bytes, bytes]]) -> Outcome:
        """``events``: (event id, hash of what identifies its content, stream entry), ids unique in the batch."""
        keys = [self.stream, *(dedupe_key(tenant, event_id) for event_id, _, _ in events)]
        args: list[bytes | int] = [self.ttl]
        for _, digest, entry in events:
            args += [digest, entry]
        ok, detail = await self._script(keys=keys, args=args)
        if not ok:
            return Outcome(0, 0, [int(i) for i in detail])
        return Outcome(int(detail), len(events) - int(detail), [])
