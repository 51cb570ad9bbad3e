"""Key names that belong to one tenant, for single Redis and Redis Cluster alike.

``t:{<tenant>}:...``: the braces are a Redis Cluster hash tag, so every key built on this prefix lands in
the tenant's one hash slot and a script or MULTI over several of them works on a cluster too. On a single
Redis the braces are just characters. (Progress keys follow their stream shard instead: see streams.py.)
"""

from __future__ import annotations


def tenant_prefix(tenant: str) -> str:
    return "t:{" + tenant + "}:"


def tenant_key(tenant: str, rest: str) -> str:
    return tenant_prefix(tenant) + rest
