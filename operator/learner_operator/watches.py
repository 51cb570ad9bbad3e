"""The children's, pods' and Secrets' informers, and what their events mean for the work queue.

Each child kind is listed and watched by label (``app.kubernetes.io/managed-by``); an event updates
the live state and asks for a reconcile of the owning platform, unless it is the echo of our own
write. The platforms' pods (same label) are watched for what keeps them from running
(CrashLoopBackOff, an image that cannot be pulled...), which the conditions report. Secrets are
watched as metadata only: a changed or deleted Secret asks for a reconcile of the
platforms that reference it, and no Secret's values reach the operator through a watch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from learner_operator import builders
from learner_operator.engine import Engine
from learner_operator.kube import KubeApi
from learner_operator.kube.informer import Informer, Informers, OnListed, in_scope, scopes
from learner_operator.livestate import controller_uid
from learner_operator.models import FIELD_MANAGER, KIND
from learner_operator.platforms import Key
from learner_operator.reconcile import Deps

MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={FIELD_MANAGER}"


def _namespace(body: dict[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("namespace", ""))


def _owner_key(body: dict[str, Any]) -> Key | None:
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND:
            return (str(meta.get("namespace")), str(ref.get("name")))
    return None


def _scoped(handler: Callable[[list[dict[str, Any]], str, str | None], None], scope: str | None) -> OnListed:
    """A listing handler told which namespace the listing covers (None: all): it replaces only that."""
    def listed(items: list[dict[str, Any]], version: str) -> None:
        handler(items, version, scope)
    return listed


class Watches:
    def __init__(self, deps: Deps, engine: Engine[Key], namespaces: Sequence[str], api: KubeApi | None = None) -> None:
        self.deps, self.engine, self.namespaces = deps, engine, tuple(namespaces)
        self.api = api or deps.api  # the watches' own client (see handlers)
        self.informers = Informers()
        served = in_scope(self.namespaces)  # patterns as kopf reads them: both halves serve the same namespaces
        self._wanted: Callable[[dict[str, Any]], bool] = lambda body: served(_namespace(body))

    def start(self, kinds: Sequence[builders.ChildKind]) -> None:
        for kind in kinds:
            self.start_child(kind)
        for scope in scopes(self.namespaces):
            self.informers.start(Informer(self.api, "v1", "secrets", namespace=scope, metadata_only=True,
                                          on_event=self._secret_event, on_listed=_scoped(self._secrets_listed, scope)))
            self.informers.start(Informer(self.api, "v1", "pods", namespace=scope, label_selector=MANAGED_SELECTOR,
                                          on_event=self._pod_event, on_listed=_scoped(self._pods_listed, scope)))

    def start_child(self, kind: builders.ChildKind) -> None:
        def children_listed(items: list[dict[str, Any]], version: str, scope: str | None) -> None:
            self._children_listed(kind, items, version, scope)

        for scope in scopes(self.namespaces):
            self.informers.start(Informer(
                self.api, kind.api_version, kind.plural, namespace=scope, label_selector=MANAGED_SELECTOR,
                on_event=self._child_event, on_listed=_scoped(children_listed, scope),
            ))

    # -- children ------------------------------------------------------------------------------------

    def _child_event(self, event: str, body: dict[str, Any]) -> None:
        if not self._wanted(body):
            return
        uid, key = controller_uid(body, KIND), _owner_key(body)
        meta = body.get("metadata") or {}
        kind, name = str(body.get("kind")), str(meta.get("name"))
        if uid is None or key is None:
            # Not (or no longer) ours by its owner reference: someone removed it. The platform its labels
            # name has a child to restore, or to let go.
            key = (_namespace(body), str((meta.get("labels") or {}).get("app.kubernetes.io/instance", "")))
            snapshot = self.deps.platforms.get(key)
            if snapshot is not None and self.deps.live.vanish(snapshot.uid, kind, name):
                self.engine.trigger(key)
            return
        if event == "DELETED":
            news = self.deps.live.vanish(uid, kind, name, str(meta.get("resourceVersion") or ""))
        else:
            news = self.deps.live.observe(uid, body)
        if news:
            self.engine.trigger(key)

    def _children_listed(self, kind: builders.ChildKind, items: list[dict[str, Any]], version: str,
                         scope: str | None) -> None:
        owned = [(uid, item) for item in items if self._wanted(item) and (uid := controller_uid(item, KIND))]
        for item in items:  # a metadata-only answer would lack the kind
            item.setdefault("kind", kind.kind)
            item.setdefault("apiVersion", kind.api_version)
        changed = self.deps.live.replace(kind.kind, owned, version, scope)
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

    def _pods_listed(self, items: list[dict[str, Any]], _: str, scope: str | None) -> None:
        for key in self.deps.pods.replace((item for item in items if self._wanted(item)), scope):
            self.engine.trigger(key)

    # -- Secrets -------------------------------------------------------------------------------------

    def _secret_event(self, event: str, body: dict[str, Any]) -> None:
        if not self._wanted(body):
            return
        meta = body.get("metadata") or {}
        where = (str(meta.get("namespace")), str(meta.get("name")))
        if self.deps.secrets.changed(where, None if event == "DELETED" else str(meta.get("resourceVersion"))):
            for key in self.deps.platforms.referencing_secret(*where):
                self.engine.trigger(key)

    def _secrets_listed(self, items: list[dict[str, Any]], _: str, scope: str | None) -> None:
        fresh = {(str((i.get("metadata") or {}).get("namespace")), str((i.get("metadata") or {}).get("name"))):
                 str((i.get("metadata") or {}).get("resourceVersion")) for i in items if self._wanted(i)}
        for where in self.deps.secrets.listed(fresh, scope):
            for key in self.deps.platforms.referencing_secret(*where):
                self.engine.trigger(key)
