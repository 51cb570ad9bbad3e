"""The children's, pods' and Secrets' informers, and what their events mean for the work queue.

Each child kind is listed and watched by label (``app.kubernetes.io/managed-by``); an event updates
the live state and asks for a reconcile of the owning platform, unless it is the echo of our own
write. The platforms' pods (same label) are watched for what keeps them from running
(CrashLoopBackOff, an image that cannot be pulled...), which the conditions report. Secrets are
watched as metadata only: a changed or deleted Secret asks for a reconcile of the
platforms that reference it, and no Secret's values reach the operator through a watch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

from learner_operator import builders
from learner_operator.engine import Engine
from learner_operator.kube.informer import Informer, Informers, scopes
from learner_operator.livestate import controller_uid
from learner_operator.models import FIELD_MANAGER, KIND
from learner_operator.platforms import Key
from learner_operator.reconcile import Deps

MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={FIELD_MANAGER}"


def _in_scope(namespaces: Sequence[str]) -> Callable[[dict[str, Any]], bool]:
    """Namespace patterns are watched cluster-wide and filtered here, as kopf filters them."""
    if not namespaces:
        return lambda _: True
    return lambda body: any(fnmatch.fnmatch(str((body.get("metadata") or {}).get("namespace", "")), pattern)
                            for pattern in namespaces)


def _owner_key(body: dict[str, Any]) -> Key | None:
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND:
            return (str(meta.get("namespace")), str(ref.get("name")))
    return None


class Watches:
    def __init__(self, deps: Deps, engine: Engine[Key], namespaces: Sequence[str]) -> None:
        self.deps, self.engine, self.namespaces = deps, engine, tuple(namespaces)
        self.informers = Informers()
        self._wanted = _in_scope(self.namespaces)

    def start(self, kinds: Sequence[builders.ChildKind]) -> None:
        for kind in kinds:
            self.start_child(kind)
        for scope in scopes(self.namespaces):
            self.informers.start(Informer(self.deps.api, "v1", "secrets", namespace=scope, metadata_only=True,
                                          on_event=self._secret_event, on_listed=self._secrets_listed))
            self.informers.start(Informer(self.deps.api, "v1", "pods", namespace=scope,
                                          label_selector=MANAGED_SELECTOR, on_event=self._pod_event,
                                          on_listed=self._pods_listed))

    def start_child(self, kind: builders.ChildKind) -> None:
        def listed(items: list[dict[str, Any]], version: str) -> None:
            self._children_listed(kind, items, version)

        for scope in scopes(self.namespaces):
            self.informers.start(Informer(
                self.deps.api, kind.api_version, kind.plural, namespace=scope, label_selector=MANAGED_SELECTOR,
                on_event=self._child_event, on_listed=listed,
            ))

    # -- children ------------------------------------------------------------------------------------

    def _child_event(self, event: str, body: dict[str, Any]) -> None:
        uid, key = controller_uid(body, KIND), _owner_key(body)
        if uid is None or key is None or not self._wanted(body):
            return
        meta = body.get("metadata") or {}
        if event == "DELETED":
            news = self.deps.live.vanish(uid, str(body.get("kind")), str(meta.get("name")),
                                         str(meta.get("resourceVersion") or ""))
        else:
            news = self.deps.live.observe(uid, body)
        if news:
            self.engine.trigger(key)

    def _children_listed(self, kind: builders.ChildKind, items: list[dict[str, Any]], version: str) -> None:
        owned = [(uid, item) for item in items if self._wanted(item) and (uid := controller_uid(item, KIND))]
        for item in items:  # a metadata-only answer would lack the kind
            item.setdefault("kind", kind.kind)
            item.setdefault("apiVersion", kind.api_version)
        changed = self.deps.live.replace(kind.kind, owned, version)
        owners = self.deps.platforms.by_uid()
        for uid in changed:
            if uid in owners:
                self.engine.trigger(owners[uid])

    # -- pods: what keeps them from running --------------------------------------------------------

    def _pod_event(self, event: str, body: dict[str, Any]) -> None:
        if not self._wanted(body):
            return
        key = self.deps.pods.vanish(body) if event == "DELETED" else self.deps.pods.observe(body)
        if key is not None:
            self.engine.trigger(key)

    def _pods_listed(self, items: list[dict[str, Any]], _: str) -> None:
        for key in self.deps.pods.replace(item for item in items if self._wanted(item)):
            self.engine.trigger(key)

    # -- Secrets -------------------------------------------------------------------------------------

    def _secret_event(self, event: str, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        where = (str(meta.get("namespace")), str(meta.get("name")))
        if self.deps.secrets.changed(where, None if event == "DELETED" else str(meta.get("resourceVersion"))):
            for key in self.deps.platforms.referencing_secret(*where):
                self.engine.trigger(key)

    def _secrets_listed(self, items: list[dict[str, Any]], _: str) -> None:
        fresh = {(str((i.get("metadata") or {}).get("namespace")), str((i.get("metadata") or {}).get("name"))):
                 str((i.get("metadata") or {}).get("resourceVersion")) for i in items if self._wanted(i)}
        for where in self.deps.secrets.listed(fresh):
            for key in self.deps.platforms.referencing_secret(*where):
                self.engine.trigger(key)
