"""One place that knows whether Redis is one server or a Redis Cluster (REDIS_CLUSTER).

In cluster mode REDIS_URL names any node (ElastiCache's configuration endpoint, say); the client learns
the slot map from it, follows MOVED/ASK redirections while slots migrate, and re-learns the map after a
failover. Commands of one key, scripts and MULTI whose keys share a hash slot work the same on both, and
those are the only ones learner-api and the evaluator send (see streams.py and redis_keys.py).
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from learner_api.settings import Settings
from learner_api.streams import ProgressStreams


def connect_redis(settings: Settings, *, socket_timeout: float, socket_connect_timeout: float) -> aioredis.Redis:
    url = settings.redis_url.get_secret_value()
    if settings.redis_cluster:
        cluster = RedisCluster.from_url(url, socket_timeout=socket_timeout,
                                        socket_connect_timeout=socket_connect_timeout)
        # The same command methods for everything above: callers keep the one type.
        return cast(aioredis.Redis, cluster)
    return aioredis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout)


#: Shards on a cluster unless PROGRESS_STREAM_SHARDS says otherwise: with one stream, one master holds
#: every dedupe key and runs every accept script; 12 spread them over three masters within about 1.8:1
#: (bench/evaluator_bench.py --hot-slot; docs/install.md, "Redis Cluster").
CLUSTER_SHARDS = 12


def progress_streams(settings: Settings) -> ProgressStreams:
    shards = settings.progress_stream_shards or (CLUSTER_SHARDS if settings.redis_cluster else 1)
    return ProgressStreams(settings.progress_stream, shards, settings.redis_cluster)
