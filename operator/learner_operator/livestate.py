"""What the children look like right now, without a GET per child per reconcile.

Fed by the children's informers (``kube.informer``): every listing replaces what was known of its
kind, every watch event updates one child; and by the operator's own write results, which are newer
than the watch stream until it catches up, so that a reconcile right after an apply does not apply
again. "Newer" compares ``resourceVersion`` as integers, which holds for etcd-backed API servers (the
API conventions call it opaque; a non-integer counts as newer, so the latest word wins).

Kept small, because an operator serving a thousand platforms keeps a dozen children of each: a
child is its kind, name, resourceVersion, the digest annotation and our ownership fingerprint (all
that drift detection needs), plus the trimmed body (zlib) only where something still needs it: a
Deployment's or the migration Job's status, and a child no apply of this process has produced yet (a fresh start decides
once, from the body, whether it is in sync).
"""

from __future__ import annotations

import dataclasses
import sys
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from learner_operator.drift import (
    DIGEST_ANNOTATION,
    OWNERSHIP_KEY,
    OWNS_REPLICAS_KEY,
    own_entry,
    ownership,
    owns_replicas,
)

ChildKey = tuple[str, str]  # (kind, name)
_KEEP_BODY = {"Deployment", "Job"}  # rollouts; a migration Job's outcome (learner_operator.migration)


@dataclasses.dataclass(frozen=True, slots=True)
class Live:
    kind: str
    name: str
    api_version: str
    resource_version: str
    digest: str
    ownership: str
    blob: bytes | None
    #: What our last apply (or adoption after a start) made us own; None when this process has not.
    applied: str | None = None
    #: Its deletionTimestamp: being deleted, held by finalizers (e.g. KEDA's on a ScaledObject).
    deleting: str = ""
    #: The blob is the whole trimmed body (not yet reduced to what an in-sync child needs).
    full: bool = True
    namespace: str = ""
    owns_replicas: bool = False

    def body(self) -> dict[str, Any]:
        """The child as the reconciler sees it (a skeleton when the body was not kept)."""
        if self.blob is not None:
            loaded: dict[str, Any] = orjson.loads(zlib.decompress(self.blob))
        else:
            loaded = {"apiVersion": self.api_version, "kind": self.kind,
                      "metadata": {"name": self.name, "resourceVersion": self.resource_version,
                                   "annotations": {DIGEST_ANNOTATION: self.digest},
                                   **({"deletionTimestamp": self.deleting} if self.deleting else {})}}
        loaded[OWNERSHIP_KEY] = self.ownership
        loaded[OWNS_REPLICAS_KEY] = self.owns_replicas
        return loaded

    def without_body(self) -> Live:
        """What is left once the child is known to be in sync: a Deployment's status view, else nothing."""
        if self.blob is None or self.kind == "Job" or not self.full:
            return self
        if self.kind == "Deployment":
            return dataclasses.replace(self, blob=_pack(_status_view(orjson.loads(zlib.decompress(self.blob)))),
                                       full=False)
        return dataclasses.replace(self, blob=None, full=False)


def _pack(value: Any) -> bytes:
    return zlib.compress(orjson.dumps(value), 1)


def _status_view(body: dict[str, Any]) -> dict[str, Any]:
    """The part of a Deployment that its conditions read (status.observe_deployment)."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    view: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {key: meta[key] for key in ("name", "generation", "resourceVersion", "annotations",
                                                 "deletionTimestamp") if key in meta},
        "spec": {"template": {"spec": {"containers": [{"image": c.get("image")} for c in containers[:1]]}}},
    }
    if "replicas" in spec:
        view["spec"]["replicas"] = spec["replicas"]
    if "status" in body:
        view["status"] = body["status"]
    return view


def compact(body: Mapping[str, Any], *, in_sync: bool = False) -> Live:
    """Keep what drift detection and status need; managedFields become our ownership fingerprint.

    ``in_sync``: the child is known to be ours and in sync (an apply of this process, or adopted), so
    only what the status reads is packed (see :meth:`Live.without_body`), and nothing for most kinds.
    """
    meta = body.get("metadata") or {}
    kind = str(body.get("kind", ""))
    annotations = meta.get("annotations") or {}
    blob: bytes | None = None
    if in_sync and kind == "Deployment":
        blob = _pack(_status_view(dict(body)))
    elif not in_sync or kind == "Job":
        trimmed_meta = {key: value for key, value in meta.items() if key != "managedFields"}
        trimmed_meta["annotations"] = {key: value for key, value in annotations.items()
                                       if key != "kubectl.kubernetes.io/last-applied-configuration"}
        trimmed = {key: value for key, value in body.items() if key not in ("metadata", "status")}
        trimmed["metadata"] = trimmed_meta
        if kind in _KEEP_BODY and "status" in body:
            trimmed["status"] = body["status"]
        blob = _pack(trimmed)
    return Live(sys.intern(kind), str(meta.get("name", "")), sys.intern(str(body.get("apiVersion", ""))),
                str(meta.get("resourceVersion", "")), str(annotations.get(DIGEST_ANNOTATION, "")),
                ownership(dict(body)), blob, deleting=str(meta.get("deletionTimestamp") or ""),
                full=not in_sync or kind == "Job", namespace=sys.intern(str(meta.get("namespace", ""))),
                owns_replicas=kind == "Deployment" and owns_replicas(dict(body)))


def controller_uid(body: Mapping[str, Any], owner_kind: str) -> str | None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == owner_kind:
            return str(ref.get("uid"))
    return None


def _newer(a: str, b: str) -> bool:
    """Is resourceVersion ``a`` newer than ``b``? (A non-integer: yes, the latest word wins.)"""
    try:
        return int(a) > int(b)
    except ValueError:
        return a != b


__all__ = ["ChildKey", "Live", "LiveState", "compact", "controller_uid", "own_entry"]


class LiveState:
    def __init__(self) -> None:
        # owner uid -> (kind, name) -> the child as last seen (watch or our own write)
        self._children: dict[str, dict[ChildKey, Live]] = {}
        # (owner uid, kind, name) -> resourceVersion of our delete, until the watch confirms it
        self._deleted: dict[tuple[str, str, str], str] = {}
        # The resourceVersion of each of our writes whose watch event has not come back yet.
        self._own_writes: dict[tuple[str, str, str], str] = {}
        # Our writes whose answer has not come back yet -> the newest event seen for them meanwhile.
        self._in_flight: dict[tuple[str, str, str], str] = {}

    # -- fed by the informers ------------------------------------------------------------------------

    def observe(self, owner_uid: str, body: Mapping[str, Any]) -> bool:
        """A watch event's object; True if it is news (not older than what we know, not our own echo)."""
        meta = body.get("metadata") or {}
        kind, name = str(body.get("kind", "")), str(meta.get("name", ""))
        version = str(meta.get("resourceVersion", ""))
        key = (owner_uid, kind, name)
        deleted = self._deleted.get(key)
        if deleted is not None and not _newer(version, deleted):
            return False  # an event from before our own delete
        known = self._children.get(owner_uid, {}).get((kind, name))
        if known is not None and not _newer(version, known.resource_version):
            if self._own_writes.get(key) == version:
                del self._own_writes[key]  # the echo of our write, which we stored already
            return False  # older than (or the same as) what we know: not even compacted
        live = compact(body, in_sync=known is not None and known.applied is not None)
        self._deleted.pop(key, None)
        self._store(owner_uid, live)
        if key in self._in_flight:  # most likely the echo of the write: its answer will tell
            self._in_flight[key] = live.resource_version
            return False
        return self._own_writes.pop(key, None) != live.resource_version

    def vanish(self, owner_uid: str, kind: str, name: str, resource_version: str = "") -> bool:
        """The child is gone (a DELETED event, or absent from a fresh listing); True if we knew it."""
        children = self._children.get(owner_uid, {})
        known = children.get((kind, name))
        key = (owner_uid, kind, name)
        if resource_version:  # a DELETED event: our own delete, if that is what it was, is confirmed now
            self._deleted.pop(key, None)
        if known is None or (resource_version and _newer(known.resource_version, resource_version)):
            return False
        del children[(kind, name)]
        if not children:
            self._children.pop(owner_uid, None)
        self._deleted.pop(key, None)
        self._own_writes.pop(key, None)
        return True

    def replace(self, kind: str, listed: Iterable[tuple[str, Mapping[str, Any]]], version: str,
                namespace: str | None = None) -> set[str]:
        """A fresh listing of ``kind`` (owner uid, body) in ``namespace`` (None: all): returns the owners whose
        children changed.

        Children absent from it are gone (deleted while no watch ran), unless our own write is newer
        than the listing; listed children replace what was known unless what we know is newer. Children
        in other namespaces are another listing's business.
        """
        changed: set[str] = set()
        present: set[tuple[str, str]] = set()
        for owner_uid, body in listed:
            name = str((body.get("metadata") or {}).get("name"))
            present.add((owner_uid, name))
            if self.observe(owner_uid, body):
                changed.add(owner_uid)
        for owner_uid, children in list(self._children.items()):
            for (child_kind, name), live in list(children.items()):
                if child_kind == kind and (namespace is None or live.namespace == namespace) and (
                    owner_uid, name) not in present and not _newer(live.resource_version, version
                ) and self.vanish(owner_uid, child_kind, name):
                    changed.add(owner_uid)
        return changed

    # -- read and written by reconciles --------------------------------------------------------------

    def children_of(self, owner_uid: str) -> dict[ChildKey, dict[str, Any]]:
        return {key: live.body() for key, live in self._children.get(owner_uid, {}).items()}

    def writing(self, owner_uid: str, kind: str, name: str) -> None:
        """Our write of this child is on its way: its watch event may come back before its answer."""
        self._in_flight[(owner_uid, kind, name)] = ""

    def write_failed(self, owner_uid: str, kind: str, name: str) -> bool:
        """The write failed; True if an event came for the child meanwhile (someone else's: news)."""
        return bool(self._in_flight.pop((owner_uid, kind, name), ""))

    def remember(self, owner_uid: str, body: Mapping[str, Any]) -> bool:
        """The answer to our apply: newest state, and the fields it made us own.

        True when a watch event that came while the write was on its way is newer than the answer:
        someone else changed the child right after us, and it needs another look.
        """
        live = compact(body, in_sync=True)
        live = dataclasses.replace(live, applied=live.ownership)
        key = (owner_uid, live.kind, live.name)
        seen = self._in_flight.pop(key, "")
        self._deleted.pop(key, None)
        known = self._children.get(owner_uid, {}).get((live.kind, live.name))
        if seen and not _newer(live.resource_version, seen):
            pass  # its echo came already (or something newer, told below)
        else:
            self._own_writes[key] = live.resource_version
        if known is None or _newer(live.resource_version, known.resource_version):
            self._store(owner_uid, live)
        else:
            self._store(owner_uid, dataclasses.replace(known, applied=live.ownership))
        return bool(seen) and _newer(seen, live.resource_version)

    def applied_ownership(self, owner_uid: str, kind: str, name: str) -> str | None:
        """What our last apply made us own; None when this process has not applied (or adopted) the child."""
        live = self._children.get(owner_uid, {}).get((kind, name))
        return live.applied if live is not None else None

    def adopt(self, owner_uid: str, kind: str, name: str, body: Mapping[str, Any]) -> None:
        """Take a child found in sync (after a restart) as if we had just applied it."""
        children = self._children.get(owner_uid, {})
        if (live := children.get((kind, name))) is not None:
            children[(kind, name)] = dataclasses.replace(live.without_body(), applied=ownership(dict(body)))

    def forget(self, owner_uid: str, kind: str, name: str, resource_version: str) -> None:
        """We deleted it (at ``resource_version``): gone now, whatever older events still say."""
        self.vanish(owner_uid, kind, name)
        self._deleted[(owner_uid, kind, name)] = resource_version

    def drop_owner(self, owner_uid: str) -> None:
        self._children.pop(owner_uid, None)
        for store in (self._deleted, self._own_writes, self._in_flight):
            for key in [key for key in store if key[0] == owner_uid]:
                del store[key]

    def _store(self, owner_uid: str, live: Live) -> None:
        """Keep ``live`` (with what our last apply owned, carried over from the child it replaces)."""
        children = self._children.setdefault(owner_uid, {})
        if live.applied is None and (known := children.get((live.kind, live.name))) is not None:
            live = dataclasses.replace(live, applied=known.applied)
        if live.applied is not None:
            live = live.without_body()
        children[(live.kind, live.name)] = live
