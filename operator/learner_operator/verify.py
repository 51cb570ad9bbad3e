"""The LearnerPlatforms known from kopf's watch against a fresh list from the server.

kopf re-lists after a watch ends in "410 Gone" (an API server restart, a compacted history), but it
only reports what the new list holds: a LearnerPlatform deleted while no watch was running never
gets its DELETED event, and the operator would keep reconciling it, re-creating the children the
garbage collector removes. So after every re-list (and at each periodic resync) the operator lists
the platforms itself, metadata only, and forgets those the server no longer has. (The children and
Secrets have informers of our own, whose re-lists replace what they knew: see ``watches``.)

Platforms newer than the list (created while it was being read) are kept: the list cannot know them.
"""

from __future__ import annotations

from collections.abc import Sequence

from learner_operator.kube.informer import in_scope, scopes
from learner_operator.models import API_VERSION, PLURAL
from learner_operator.platforms import Key
from learner_operator.reconcile import Deps


def _newer(a: str, b: str) -> bool:
    try:
        return int(a) > int(b)
    except ValueError:
        return False


async def compare_with_server(deps: Deps, namespaces: Sequence[str]) -> list[Key]:
    """Forget the platforms the server no longer has; returns them."""
    served = in_scope(namespaces)
    present: dict[Key, str] = {}
    versions: dict[str | None, str] = {}  # per listing: a platform is judged by the list of its own namespace
    for scope in scopes(namespaces):
        items, versions[scope] = await deps.api.list_metadata(API_VERSION, PLURAL, scope)
        for item in items:
            meta = item.get("metadata") or {}
            if served(str(meta.get("namespace"))):
                present[(str(meta.get("namespace")), str(meta.get("name")))] = str(meta.get("uid"))
    gone: list[Key] = []
    for key in deps.platforms.known():
        snapshot = deps.platforms.get(key)
        version = versions.get(key[0], versions.get(None, ""))
        if snapshot is None or present.get(key) == snapshot.uid or _newer(snapshot.resource_version, version):
            continue
        if key[0] not in versions and None not in versions:
            continue  # no listing covered its namespace
        deps.forget_platform(key, snapshot.uid)
        gone.append(key)
    return gone
