"""The caches against a fresh list from the server: what vanished without a DELETED event goes.

kopf re-lists after a watch ends in "410 Gone" (an API server restart, a compacted history), but it
only adds what the new list holds: an object deleted while no watch was running stays in its
indices, and a LearnerPlatform deleted then never gets its DELETED event. Acting on those is how an
operator restores a Service nobody can see missing, or re-creates the children of a platform that
is gone while the garbage collector deletes them again. So after every re-list (and at each
periodic resync) the operator lists each kind itself, metadata only, and drops what is not there.

Objects newer than the list (created while it was being read) are kept: the list cannot know them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from learner_operator import builders
from learner_operator.livestate import controller_uid
from learner_operator.models import API_VERSION, FIELD_MANAGER, KIND, PLURAL
from learner_operator.platforms import Key
from learner_operator.reconcile import Deps

MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={FIELD_MANAGER}"


def _newer(a: str, b: str) -> bool:
    try:
        return int(a) > int(b)
    except ValueError:
        return False


async def _list(deps: Deps, api_version: str, plural: str, namespaces: Sequence[str],
                selector: str = "") -> tuple[list[dict[str, Any]], str]:
    """Every object in the operator's namespaces (cluster-wide when it watches all, or patterns)."""
    if not namespaces or any(set("*?[") & set(ns) for ns in namespaces):
        items, version = await deps.api.list_metadata(api_version, plural, None, selector)
        if namespaces:
            items = [i for i in items if any(fnmatch.fnmatch(str((i.get("metadata") or {}).get("namespace", "")), ns)
                                             for ns in namespaces)]
        return items, version
    out: list[dict[str, Any]] = []
    version = ""
    for namespace in namespaces:
        items, listed = await deps.api.list_metadata(api_version, plural, namespace, selector)
        out += items
        version = max(version, listed, key=lambda v: int(v) if v.isdigit() else -1)
    return out, version


async def compare_with_server(deps: Deps, namespaces: Sequence[str]) -> set[Key]:
    """Drop what the server no longer has; returns the platforms whose reconcile that calls for."""
    triggers: set[Key] = set()
    items, version = await _list(deps, API_VERSION, PLURAL, namespaces)
    present: dict[Key, str] = {}
    for item in items:
        meta = item.get("metadata") or {}
        present[(str(meta.get("namespace")), str(meta.get("name")))] = str(meta.get("uid"))
    for key in deps.platforms.known():
        snapshot = deps.platforms.get(key)
        if snapshot is None or present.get(key) == snapshot.uid or _newer(snapshot.resource_version, version):
            continue
        deps.platforms.forget_if(key, snapshot.uid)
        deps.live.drop_owner(snapshot.uid)

    owners = deps.platforms.by_uid()
    for kind in builders.CHILD_KINDS:
        if kind.kind in builders.OPTIONAL_KINDS and not await deps.discovery.served(kind.api_version, kind.plural):
            continue
        items, version = await _list(deps, kind.api_version, kind.plural, namespaces, MANAGED_SELECTOR)
        existing = {(controller_uid(item, KIND), str((item.get("metadata") or {}).get("name"))) for item in items}
        for owner_uid, live in deps.live.indexed(kind.kind):
            if (owner_uid, live.name) in existing or _newer(live.resource_version, version):
                continue
            if deps.live.vanished(owner_uid, live.kind, live.name, version) and owner_uid in owners:
                triggers.add(owners[owner_uid])
    return triggers
