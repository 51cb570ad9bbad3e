"""What the children look like right now, without a GET per child per reconcile.

Two sources, newest wins:

* kopf indices over every child kind (filled from the watch streams; kopf runs no handler before
  every index has finished its initial listing, so a reconcile never sees a half-filled cache);
* the operator's own write results, kept until the watch stream catches up, so that a reconcile
  right after an apply does not apply again.

Values are stored compact (trimmed JSON, zlib) because an operator serving a thousand platforms
keeps a dozen children of each in memory.

"Newest" compares ``resourceVersion`` as integers, which holds for etcd-backed API servers; the
API conventions call it opaque, so a non-integer falls back to trusting the index.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from learner_operator.drift import own_entry, ownership

ChildKey = tuple[str, str]  # (kind, name)
_KEEP_STATUS = {"Deployment", "Job"}  # rollouts; a migration Job's outcome (learner_operator.migration)


@dataclasses.dataclass(frozen=True, slots=True)
class Live:
    kind: str
    name: str
    resource_version: str
    blob: bytes

    def body(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(zlib.decompress(self.blob))
        return loaded


def compact(body: Mapping[str, Any]) -> Live:
    """Keep what drift detection and status need (of managedFields, only our own apply's entry)."""
    meta = dict(body.get("metadata") or {})
    ours = own_entry(dict(body))
    meta.pop("managedFields", None)
    if ours is not None:
        ours.pop("time", None)
        meta["managedFields"] = [ours]
    annotations = dict(meta.get("annotations") or {})
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    meta["annotations"] = annotations
    trimmed = {key: value for key, value in body.items() if key not in ("metadata", "status")}
    trimmed["metadata"] = meta
    kind = str(body.get("kind", ""))
    if kind in _KEEP_STATUS and "status" in body:
        trimmed["status"] = body["status"]
    blob = zlib.compress(json.dumps(trimmed, separators=(",", ":")).encode(), 1)
    return Live(kind, str(meta.get("name", "")), str(meta.get("resourceVersion", "")), blob)


def controller_uid(body: Mapping[str, Any], owner_kind: str) -> str | None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == owner_kind:
            return str(ref.get("uid"))
    return None


def _newer(a: str, b: str) -> bool:
    """Is resourceVersion ``a`` newer than ``b``? Unknown orders say no (trust the index)."""
    try:
        return int(a) > int(b)
    except ValueError:
        return False


class LiveState:
    def __init__(self) -> None:
        self._indices: list[Mapping[str, Iterable[Live]]] = []
        # (owner uid, kind, name) -> our last write result, or None for "we deleted it" (at that version).
        self._overlay: dict[tuple[str, str, str], tuple[str, Live | None]] = {}
        # The resourceVersion of each of our writes whose watch event has not come back yet.
        self._own_writes: dict[tuple[str, str, str], str] = {}
        # What our last apply of each child made us own (drift.ownership of the apply's answer).
        self._ownership: dict[tuple[str, str, str], str] = {}

    def attach(self, indices: Iterable[Mapping[str, Iterable[Live]]]) -> None:
        """Give the kopf indices (live, read-only mappings) once they exist."""
        if not self._indices:
            self._indices = list(indices)

    def children_of(self, owner_uid: str) -> dict[ChildKey, dict[str, Any]]:
        indexed: dict[ChildKey, Live] = {}
        for index in self._indices:
            for live in index.get(owner_uid, ()):
                indexed[(live.kind, live.name)] = live
        for (uid, kind, name), (version, ours) in list(self._overlay.items()):
            if uid != owner_uid:
                continue
            seen = indexed.get((kind, name))
            if ours is None:  # we deleted it: hide it unless it came back newer than our delete
                if seen is None:
                    del self._overlay[(uid, kind, name)]
                elif not _newer(seen.resource_version, version):
                    del indexed[(kind, name)]
            elif seen is None or _newer(ours.resource_version, seen.resource_version):
                indexed[(kind, name)] = ours
            else:
                del self._overlay[(uid, kind, name)]  # the watch caught up
        return {key: live.body() for key, live in indexed.items()}

    def remember(self, owner_uid: str, body: Mapping[str, Any]) -> None:
        """The answer to our apply: newest state, and the fields it made us own."""
        live = compact(body)
        self._overlay[(owner_uid, live.kind, live.name)] = (live.resource_version, live)
        self._own_writes[(owner_uid, live.kind, live.name)] = live.resource_version
        self._ownership[(owner_uid, live.kind, live.name)] = ownership(dict(body))

    def applied_ownership(self, owner_uid: str, kind: str, name: str) -> str | None:
        """What our last apply made us own; None when this process has not applied the child."""
        return self._ownership.get((owner_uid, kind, name))

    def adopt(self, owner_uid: str, kind: str, name: str, body: Mapping[str, Any]) -> None:
        """Take a child found in sync (after a restart) as if we had just applied it."""
        self._ownership[(owner_uid, kind, name)] = ownership(dict(body))

    def indexed(self, kind: str) -> list[tuple[str, Live]]:
        """Every (owner uid, child) of ``kind`` that the watch-fed indices hold."""
        return [(uid, live) for index in self._indices for uid, store in index.items()
                for live in store if live.kind == kind]

    def vanished(self, owner_uid: str, kind: str, name: str, resource_version: str) -> bool:
        """A fresh list (at ``resource_version``) lacks this child: hide the index's stale copy.

        False when our own write is newer than the list (the child exists; the list predates it).
        """
        key = (owner_uid, kind, name)
        entry = self._overlay.get(key)
        if entry is not None and entry[1] is not None and _newer(entry[0], resource_version):
            return False
        self.forget(owner_uid, kind, name, resource_version)
        return True

    def forget(self, owner_uid: str, kind: str, name: str, resource_version: str) -> None:
        self._overlay[(owner_uid, kind, name)] = (resource_version, None)
        self._ownership.pop((owner_uid, kind, name), None)

    def seen(self, owner_uid: str, live: Live) -> None:
        """The watch stream caught up with (or passed) our own write: the index alone is enough now."""
        key = (owner_uid, live.kind, live.name)
        entry = self._overlay.get(key)
        if entry is not None and entry[1] is not None and not _newer(entry[0], live.resource_version):
            del self._overlay[key]

    def is_own_write(self, owner_uid: str, kind: str, name: str, resource_version: str) -> bool:
        """Is this watch event the echo of our own apply? (Then it needs no reconcile.)"""
        return self._own_writes.pop((owner_uid, kind, name), None) == resource_version

    def drop_owner(self, owner_uid: str) -> None:
        for store in (self._overlay, self._own_writes, self._ownership):
            for key in [key for key in store if key[0] == owner_uid]:
                del store[key]
