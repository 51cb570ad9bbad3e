"""Where progress lives in Redis, between learner-api (producer) and the evaluator (consumer group).

Entries carry the tenant in the field ``t`` (so the evaluator can group a batch by tenant without parsing
anything) and the event as JSON in ``e``; entries written before ``t`` existed have only ``e``.

Two layouts, chosen by REDIS_CLUSTER:

- single Redis (the default, unchanged since the first release): one stream (``lp:progress``) for every
  tenant, dedupe keys ``t:<tenant>:pe:<event id>``.
- Redis Cluster: the accept script touches the stream and the dedupe keys of a batch at once, so they must
  share a hash slot. Tenants are grouped into PROGRESS_STREAM_SHARDS shards by a stable hash of their id;
  shard ``k`` owns the hash tag ``{p<k>}``: its stream ``lp:progress:{p<k>}``, its dead letters
  ``lp:progress:{p<k>}:dead`` and the dedupe keys ``{p<k>}:t:<tenant>:pe:<event id>`` of its tenants all
  land in that tag's slot. More shards spread the write load and the dedupe keys' memory over more
  slots (and masters); each shard is one stream for the evaluator's consumer group to read.

A tenant's shard depends only on its id and the shard count: adding shards moves some tenants to other
streams (the evaluator reads every shard, so nothing in flight is stranded), and the dedupe keys they
had stay behind (see docs/install.md, "Redis Cluster").
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

CONSUMER_GROUP = "evaluator"
FIELD = "e"
TENANT_FIELD = "t"


def dead_letters(stream: str) -> str:
    """The dead-letter stream of ``stream``: the same hash tag, so one MULTI can move an entry there."""
    return f"{stream}:dead"


@dataclass(frozen=True)
class ProgressStreams:
    base: str = "lp:progress"
    shards: int = 1
    cluster: bool = False

    def __post_init__(self) -> None:
        if self.shards < 1 or (self.shards > 1 and not self.cluster):
            raise ValueError("more than one progress stream shard needs Redis Cluster (one server gains nothing)")

    @property
    def streams(self) -> list[str]:
        """Every stream the evaluator consumes."""
        if not self.cluster:
            return [self.base]
        return [f"{self.base}:{{p{shard}}}" for shard in range(self.shards)]

    def shard(self, tenant: str) -> int:
        return zlib.crc32(tenant.encode()) % self.shards

    def stream_for(self, tenant: str) -> str:
        return self.streams[self.shard(tenant)] if self.cluster else self.base

    def dedupe_key(self, tenant: str, event_id: str) -> str:
        if not self.cluster:
            return f"t:{tenant}:pe:{event_id}"
        return f"{{p{self.shard(tenant)}}}:t:{tenant}:pe:{event_id}"
