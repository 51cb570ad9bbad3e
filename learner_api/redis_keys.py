"""How this API names its per-tenant Redis keys: one function, so that moving to Redis Cluster's hash-tag
form (``t:{<tenant>}:...``, all of a tenant's keys in one slot) is a one-line change. Every command the
API itself sends touches one key, so nothing else needs to change for a cluster."""

from __future__ import annotations


def tenant_key(tenant: str, rest: str) -> str:
    return f"t:{tenant}:{rest}"
