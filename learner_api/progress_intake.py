"""Accepting progress events: idempotent like xAPI statements, into the Redis Stream in one round trip.

One Lua script per batch checks every event id against its dedupe key and, only when no id conflicts,
records the new ids and XADDs the new events: atomically, so a batch is either taken whole or refused
whole, and a retried batch adds nothing. The dedupe keys live for ``ttl`` seconds (7 days by default);
after that PostgreSQL's primary key (tenant_id, event_id) still makes a replay a no-op, though a
conflicting body is then ignored instead of answered with 409.

The stream and the dedupe keys of one tenant always share a hash slot (see streams.py), so the script
runs on Redis Cluster as well; there a pipeline is split by node, each script still whole on its node.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, ClusterError, MasterDownError, NoScriptError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from learner_api.streams import FIELD, TENANT_FIELD, ProgressStreams

# KEYS: the stream, then one dedupe key per event. ARGV: ttl, tenant, then per event its body hash and entry.
_ACCEPT = """
local ttl, tenant = ARGV[1], ARGV[2]
local fresh, conflicts = {}, {}
for i = 2, #KEYS do
  local known = redis.call('GET', KEYS[i])
  if not known then
    fresh[#fresh + 1] = i
  elseif known ~= ARGV[2 * i - 1] then
    conflicts[#conflicts + 1] = i - 2
  end
end
if #conflicts > 0 then
  return {0, conflicts}
end
for _, i in ipairs(fresh) do
  redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'EX', ttl)
  redis.call('XADD', KEYS[1], '*', '""" + TENANT_FIELD + """', tenant, '""" + FIELD + """', ARGV[2 * i])
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
    """Batches from concurrent requests share round trips: whatever arrives while a pipeline is in
    flight goes out in the next one (each script still atomic on its own). Under load that is one
    round trip for many requests instead of one each; alone, a request waits for nobody."""

    def __init__(self, client: aioredis.Redis, streams: ProgressStreams | str, ttl: int,
                 max_pipeline: int = 256) -> None:
        self.streams = streams if isinstance(streams, ProgressStreams) else ProgressStreams(streams)
        self.client, self.ttl, self.max_pipeline = client, ttl, max_pipeline
        self._sha = hashlib.sha1(_ACCEPT.encode(), usedforsecurity=False).hexdigest()
        self._waiting: list[tuple[list[str], list[bytes | int | str], asyncio.Future[Any]]] = []
        self._sending = False

    async def accept(self, tenant: str, events: list[tuple[str, bytes, bytes]]) -> Outcome:
        """``events``: (event id, hash of what identifies its content, stream entry), ids unique in the batch."""
        streams = self.streams
        keys = [streams.stream_for(tenant), *(streams.dedupe_key(tenant, event_id) for event_id, _, _ in events)]
        args: list[bytes | int | str] = [self.ttl, tenant]
        for _, digest, entry in events:
            args += [digest, entry]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, args, future))
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._send())
        ok, detail = await future
        if not ok:
            return Outcome(0, 0, [int(i) for i in detail])
        return Outcome(int(detail), len(events) - int(detail), [])

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self.max_pipeline], self._waiting[self.max_pipeline:]
                try:
                    replies = await self._pipeline([(keys, args) for keys, args, _ in batch])
                except Exception as exc:  # every request of the batch gets the error (a 503)
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), reply in zip(batch, replies, strict=True):
                    if future.done():
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._sending = False

    async def _pipeline(self, calls: list[tuple[list[str], list[bytes | int | str]]], retry: bool = True) -> list[Any]:
        if isinstance(self.client, RedisCluster):  # redis-py pipelines no scripts on a cluster: send them at once
            # Learn the slot map first (again, after a failover or a moved slot): left to the concurrent
            # calls, redis-py's first use closes connections under some of them.
            await self.client.initialize()
            replies: list[Any] = [_unavailable(reply) for reply in await asyncio.gather(
                *(self.client.evalsha(self._sha, len(keys), *keys, *args) for keys, args in calls),
                return_exceptions=True)]
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(self._sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing and retry:
            await self.client.script_load(_ACCEPT)  # a restarted or failed-over Redis forgot it
            # NOSCRIPT means that call did nothing: send exactly those again
            again = await self._pipeline([calls[i] for i in missing], retry=False)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies


def _unavailable(reply: Any) -> Any:
    """A cluster that is moving a slot or electing a master is, for the caller, briefly unavailable:
    learner-api answers 503 and the client sends the batch again, which is safe whether the script ran
    or not (it runs whole or not at all, and a second run finds the first one's dedupe keys). That
    includes errors of redis-py's own: its asyncio cluster client can trip over a connection that a
    topology refresh closed under it (AttributeError, seen here while a slot migrated)."""
    if isinstance(reply, ClusterDownError | ClusterError | MasterDownError | TryAgainError) or (
            isinstance(reply, Exception) and not isinstance(reply, RedisError)):
        return RedisConnectionError(f"Redis Cluster is reorganising: {type(reply).__name__}: {reply}")
    return reply
