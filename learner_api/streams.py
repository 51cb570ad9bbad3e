"""The Redis Stream between learner-api (producer) and the evaluator (consumer group): one place for names.

One stream (Settings.progress_stream, ``lp:progress``) for every tenant, each entry saying whose it is,
so the evaluator's consumer group covers the whole platform. Entries are JSON in the field ``e``.
Dedupe keys are per tenant: ``t:<tenant>:pe:<id>``. A Redis Cluster would need the stream and the
dedupe keys in one hash slot; managed single-shard Redis (Upstash, ElastiCache non-cluster mode) is
what this is written for.
"""

from __future__ import annotations

CONSUMER_GROUP = "evaluator"
FIELD = "e"


def dead_letters(stream: str) -> str:
    return f"{stream}:dead"


def dedupe_key(tenant: str, event_id: str) -> str:
    return f"t:{tenant}:pe:{event_id}"
