"""A Kubernetes API server double: kmock's KubernetesEmulator, taught what our tests rely on.

No cluster and no Docker engine run here, so the operator talks HTTP to this emulator, exactly as it
talks to a real API server (kopf for watching, kubernetes.aio for writes). kmock provides the HTTP
server, discovery, request recording and fault injection (``cluster['patch', ...] << 500``); this
class replaces its naive object store with one that behaves like the real server where it matters:

Emulated (each is something a real API server does that our tests depend on):
- ``metadata.uid``, ``resourceVersion`` (one global counter, as etcd's revision), ``generation``
  (bumped when anything but metadata/status changes), ``creationTimestamp``.
- Creating a CRD validates it as kube-apiserver does (``tests/crd_schema.validate_crd``): a
  structural schema, and every default checked against the schema and its subtree's CEL rules as
  written; LearnerPlatforms are then admitted with that CRD: defaults, validation, CEL rules (422).
- Built-in kinds stored as Go types read back (``tests/kube_ssa.py``): empty lists and maps omitted,
  quantities canonical, the server's defaults filled (Deployment strategy, probes, Service
  ipFamilies, NetworkPolicy policyTypes...). So the server never echoes back exactly what was sent.
- Server-side apply with field ownership (``metadata.managedFields``): an apply owns what it sent,
  merges keyed lists (containers, env, ports...) by key, removes what it stops sending unless others
  own it, and conflicts (409) on fields others own unless forced; every other write (create, merge
  and JSON patch, the test helpers ``put``/``edit``/``update``/``scale``) takes the fields it changed
  from their owners. A no-op write changes nothing and sends no watch event.
- JSON merge patch (RFC 7386; strategic merge patch is treated as merge patch, so tests use
  :meth:`Cluster.update` for what kubectl does with one), with a ``metadata.resourceVersion`` in it as
  an optimistic-concurrency precondition (409), and JSON patch.
- The ``status`` subresource: writes to ``/status`` change only status; writes to the main resource
  never change status.
- Label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, exists, ``!``) on list and watch.
- Watch from a resourceVersion (replaying the events after it), ``timeoutSeconds``, bookmarks not sent;
  :meth:`Cluster.watch_gap` is an API server restart as watchers see it ("429 storage is
  (re)initializing", then "410 Gone" for a resume from before: deletions meanwhile are never heard).
- Deletion with finalizers (``deletionTimestamp``), and background garbage collection of dependents
  through ``ownerReferences``; ``remove(quiet=True)`` is a deletion a platform watch missed.
- Orphans collected as kube-controller-manager's garbage collector does (``attemptToDeleteItem``): an
  object written with owner references is looked at a moment after the write's answer (not while the
  server is down); a reference is dangling when no owner of its kind and name exists, or the one that does
  has another uid (an owner deleted and made again under the same name owns nothing of the old one's).
  All dangling: the dependent is deleted, with the usual events; some: only those references are removed.
  Found by the chaos soak: a replica frozen while its create was on the wire, the platform deleted meanwhile,
  the create landing after it: a real cluster removes that child at once, the emulator kept it forever.
- Discovery from the declared kinds; :meth:`Cluster.undeclare` is a kind whose CRD is not installed.
- Lists (and a watch's initial events) in etcd's key order: by namespace and name, not by age.
- Decoding before admission: ``fieldValidation=Strict`` (``put``; kubectl's default) refuses an unknown
  field of a LearnerPlatform with 400 ``strict decoding error: unknown field "spec..."``; without it (the
  server's Warn default: ``edit``/``update``, the operator's requests) the field is dropped, in status
  writes too. A Lease's ``acquireTime``/``renewTime`` are MicroTime: without six fractional digits, 400.
- Server-side apply merges keyed lists in structured-merge-diff's order (the live order is kept), and
  Services are validated after the merge (two ports of one name: 422).
- What kube-controller-manager puts into every new namespace: ``kube-root-ca.crt`` and the ``default``
  ServiceAccount, nobody's children.

Learned on a real control plane (issue 21), each from a test that failed there and passed here until the
emulator learned it: the list order (a test's Jobs came back by name), MicroTime (a test's own Lease),
strict decoding (400, not 422), the keyed-list order and Service port names (a port renumbered by
``kubectl patch`` cannot be taken back by an apply), the namespace's own objects (counted as children),
and the HPA controller's first sync (below).
- Jobs as the Job REST strategy makes them: a generated ``spec.selector`` and the
  ``batch.kubernetes.io/controller-uid``/``job-name`` labels on the pod template at creation, and an
  immutable pod template afterwards (422). :meth:`Cluster.start_job` and :meth:`Cluster.finish_job`
  play the Job controller and the kubelet.

Not emulated (the tests do not rely on them): strategic merge patch directives, server-side apply of
custom resources' lists by their ``x-kubernetes-list-*`` markers (built-in kinds only), admission
webhooks, RBAC (the chart's rules are compared with the requests the operator made instead), any
controller (Deployments never get pods: tests set Deployment status themselves with
:meth:`Cluster.set_deployment_status` and play the HPA with :meth:`Cluster.scale`, or its first sync
(a real one makes it 15 s after the HPA exists) with :meth:`Cluster.run_autoscalers`; Jobs run only when
a test says how they end, and their TTL is :meth:`Cluster.remove`), CEL cost budgets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import apps

from tests import kube_ssa as ssa
from tests.controllers import autoscaler_first_sync, deployment_status
from tests.crd_schema import admit, prune, unknown_fields, validate_crd

ResKey = tuple[str, str, str]  # group, version, plural
ObjKey = tuple[ResKey, str | None, str]  # resource, namespace, name

_NAMESPACED = {
    ("", "v1", "namespaces"): False,
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions"): False,
}
_WITH_STATUS = {"deployments", "horizontalpodautoscalers", "poddisruptionbudgets", "learnerplatforms", "services",
                "jobs", "pods"}
_HANG_UP: dict[str, Any] = {}
#: Built-in kinds: stored as Go types, so read back normalised (omitempty, canonical quantities, defaults).
#: How long after a write the garbage collector looks at the owners of what was written, and who it writes as.
_GC_DELAY = 0.1
_GC_MANAGER = "kube-controller-manager"
_BUILTIN_GROUPS = {"", "apps", "autoscaling", "policy", "networking.k8s.io", "coordination.k8s.io", "batch",
                   "rbac.authorization.k8s.io"}


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902, the operations kubectl and kopf send (add, replace, remove, test)."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        if op["op"] == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op["value"]:
                raise _error(422, "Invalid", f"test operation failed at {op['path']}")
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(index, op["value"])
            else:
                parent[index] = op["value"]
        else:
            parent[last] = op["value"]
    return doc


_SELECTOR_TERM = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w.-]*)|\s+(in|notin)\s+\(([^)]*)\))?\s*$")


def matches_selector(labels: dict[str, str], selector: str) -> bool:
    terms = re.split(r",(?![^(]*\))", selector) if selector else []
    for term in terms:
        m = _SELECTOR_TERM.match(term)
        if m is None:
            raise _error(400, "BadRequest", f"unable to parse requirement: {term!r}")
        negate, key, op, value, set_op, values = m.groups()
        if op in ("=", "=="):
            ok = labels.get(key) == value
        elif op == "!=":
            ok = labels.get(key) != value
        elif set_op:
            choices = {v.strip() for v in values.split(",")}
            ok = (labels.get(key) in choices) if set_op == "in" else (labels.get(key) not in choices)
        else:
            ok = (key in labels) != bool(negate)
        if not ok:
            return False
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    crd: dict[str, Any] | None = None
    _store: dict[ObjKey, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _revision: int = attrs.field(default=1000, init=False)
    _compacted: int = attrs.field(default=0, init=False)  # watches from before this revision get 410 Gone
    _in_gap: bool = attrs.field(default=False, init=False)
    _down: bool = attrs.field(default=False, init=False)
    _declared: set[ResKey] = attrs.field(factory=set, init=False)
    _history: dict[ResKey, list[tuple[int, dict[str, Any]]]] = attrs.field(
        factory=lambda: collections.defaultdict(list), init=False)
    _watchers: dict[ResKey, set[asyncio.Queue[dict[str, Any]]]] = attrs.field(
        factory=lambda: collections.defaultdict(set), init=False)

    # -- kmock plumbing ------------------------------------------------------------------------

    _builtin_payloads: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._builtin_payloads = len(self._payloads)

    async def _handle(self, request: kmock.Request) -> Any:
        if self._down:
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 503, "reason": "ServiceUnavailable",
                "message": "the server is currently unable to handle the request"}, status=503)
        # Skip KubernetesEmulator's own naive state tracking: our fallbacks below keep the state,
        # and user reactions (fault injection) answer before them without changing anything.
        # Without user reactions, plain object requests skip kmock's matching (~60 ms a request).
        if len(self._payloads) == self._builtin_payloads and request.resource is not None:
            serve = {
                kmock.action.LIST: self._serve_list, kmock.action.FETCH: self._serve_fetch,
                kmock.action.CREATE: self._serve_create, kmock.action.UPDATE: self._serve_update,
                kmock.action.DELETE: self._serve_delete,
            }.get(request.action)  # type: ignore[call-overload]
            if serve is not None and request.name != "" and self._known(request):
                return aiohttp.web.json_response(await serve(request))
        return await apps.RawHandler._handle(self, request)

    def _known(self, request: kmock.Request) -> bool:
        try:
            return self._res(request) in self._declared
        except AssertionError:
            return False

    def undeclare(self, group: str, version: str, plural: str) -> None:
        """The kind is not served (its CRD is not installed): discovery lacks it, requests answer 404."""
        self._declared.discard((group, version, plural))
        del self.resources[f"{group}/{version}/{plural}" if group else f"{version}/{plural}"]

    def declare(self, group: str, version: str, plural: str, kind: str, *, namespaced: bool = True,
                shortnames: tuple[str, ...] = ()) -> None:
        self._declared.add((group, version, plural))
        path = f"{group}/{version}/{plural}" if group else f"{version}/{plural}"
        self.resources[path] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, shortnames=set(shortnames), singular=kind.lower(),
            verbs={"list", "watch", "get", "create", "patch", "update", "delete"},
            subresources={"status"} if plural in _WITH_STATUS else set(),
        )

    # -- reading ---------------------------------------------------------------------------------

    @staticmethod
    def _res(request: kmock.Request) -> ResKey:
        r = request.resource
        assert r is not None
        return (str(r.group or ""), str(r.version), str(r.plural))

    def _select(self, request: kmock.Request) -> list[dict[str, Any]]:
        res, selector = self._res(request), request.params.get("labelSelector", "")
        return [
            copy.deepcopy(obj) for (r, ns, _), obj in sorted(self._store.items(), key=_etcd_order)
            if r == res and (request.namespace is None or ns == request.namespace)
            and matches_selector((obj.get("metadata") or {}).get("labels") or {}, selector)
        ]

    async def _serve_list(self, request: kmock.Request) -> Any:
        self._refuse_in_gap()
        items = self._select(request)
        as_ = _partial(request, listing=True)
        if as_ == "PartialObjectMetadataList":
            return {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                    "metadata": {"resourceVersion": str(self._revision)}, "items": [_metadata_of(o) for o in items]}
        return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": str(self._revision)},
                "items": items}

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        obj = self._store.get((self._res(request), request.namespace, str(request.name)))
        if obj is None:
            raise self._not_found(request)
        return copy.deepcopy(obj)

    def _refuse_in_gap(self) -> None:
        if self._in_gap:
            raise _error(429, "TooManyRequests", "storage is (re)initializing")

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        self._refuse_in_gap()
        metadata_only = _partial(request, listing=False) == "PartialObjectMetadata"
        yield b""
        res, selector = self._res(request), request.params.get("labelSelector", "")
        since = int(request.params.get("resourceVersion") or 0)
        if since and since < self._compacted:
            yield {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                               "reason": "Expired", "message": "too old resource version"}}
            return
        timeout = float(request.params.get("timeoutSeconds") or 3600)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._watchers[res].add(queue)

        def wanted(event: dict[str, Any]) -> bool:
            meta = event["object"].get("metadata") or {}
            return (request.namespace is None or meta.get("namespace") == request.namespace) and \
                matches_selector(meta.get("labels") or {}, selector)

        try:
            def shown(event: dict[str, Any]) -> dict[str, Any]:
                return {"type": event["type"], "object": _metadata_of(event["object"])} if metadata_only else event

            if since:
                for revision, event in list(self._history[res]):
                    if revision > since and wanted(event):
                        yield shown(event)
            else:
                for obj in self._select(request):
                    yield shown({"type": "ADDED", "object": obj})
            deadline = asyncio.get_running_loop().time() + timeout
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=left)
                except TimeoutError:
                    break
                if event is _HANG_UP:
                    break
                if wanted(event):
                    yield shown(event)
        finally:
            self._watchers[res].discard(queue)

    # -- writing ---------------------------------------------------------------------------------

    def _not_found(self, request: kmock.Request) -> kmock.KubernetesError:
        return _error(404, "NotFound", f'{self._res(request)[2]} "{request.name}" not found')

    def _emit(self, res: ResKey, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self._history[res].append((self._revision, event))
        for queue in self._watchers[res]:
            queue.put_nowait(event)

    def _decode_status(self, obj: dict[str, Any], *, strict: bool) -> dict[str, Any]:
        """A status write is decoded with the same schema: a field it does not know is dropped (or a 400 when
        strict), so a status that carries one never reads back equal to what was sent."""
        assert self.crd is not None
        if unknown := unknown_fields(self.crd, obj, status=True):
            if strict:
                raise _error(400, "BadRequest", 'LearnerPlatform in version "v1alpha1" cannot be handled as a '
                             "LearnerPlatform: strict decoding error: "
                             + ", ".join(f'unknown field "{path}"' for path in unknown))
            obj = prune(self.crd, obj)
        return obj

    def _admit(self, res: ResKey, obj: dict[str, Any], *, strict: bool) -> dict[str, Any]:
        """Decode and admit a write of the main resource. ``strict``: ``fieldValidation=Strict`` (kubectl's
        default; the test helpers' ``put``): unknown fields are a 400 at decoding; otherwise (a request without
        it, or Warn/Ignore) they are dropped."""
        if res == _LEASES:
            _decode_lease(obj)
        if res == _SERVICES:
            _validate_service(obj)
        if res[2] == "learnerplatforms" and self.crd is not None and (unknown := unknown_fields(self.crd, obj)):
            if strict:
                raise _error(400, "BadRequest", 'LearnerPlatform in version "v1alpha1" cannot be handled as a '
                             "LearnerPlatform: strict decoding error: "
                             + ", ".join(f'unknown field "{path}"' for path in unknown))
            obj = prune(self.crd, obj)
        if res[2] == "customresourcedefinitions":
            if errors := validate_crd(obj):
                name = (obj.get("metadata") or {}).get("name")
                raise _error(422, "Invalid", f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: '
                             + "; ".join(errors))
            if (obj.get("spec") or {}).get("names", {}).get("kind") == "LearnerPlatform":
                self.crd = obj
        if res[2] == "learnerplatforms" and self.crd is not None:
            status = obj.pop("status", None)
            obj, errors = admit(self.crd, obj)
            if errors:
                name = (obj.get("metadata") or {}).get("name")
                raise _error(422, "Invalid", f'LearnerPlatform.learner.dev "{name}" is invalid: ' + "; ".join(errors))
            if status is not None:
                obj["status"] = status
        return obj

    def _store_object(
        self, key: ObjKey, new: dict[str, Any], old: dict[str, Any] | None, *, manager: str,
        subresource: str | None = None, applied: bool = False, strict: bool = True,
    ) -> dict[str, Any]:
        """Commit ``new`` in place of ``old``: normalise, default, admit, record field ownership, bump
        versions, emit the event. A write that changes nothing changes nothing (no version, no event)."""
        res = key[0]
        meta = new.setdefault("metadata", {})
        if old is not None:
            for field in ("uid", "creationTimestamp", "generation", "resourceVersion", "namespace", "name"):
                if field in old["metadata"]:
                    meta[field] = old["metadata"][field]
        else:
            meta.pop("resourceVersion", None)
            meta["name"] = key[2]
            if key[1]:
                meta["namespace"] = key[1]
        if res[0] in _BUILTIN_GROUPS and res[2] != "customresourcedefinitions":
            new = ssa.normalise(new)
            ssa.server_defaults(res[2], new)
        if subresource == "status" and res[2] == "learnerplatforms" and self.crd is not None:
            new = self._decode_status(new, strict=strict)
        if subresource != "status":
            new = self._admit(res, new, strict=strict)
            if res == _JOBS and old is not None:
                _refuse_job_change(old, new)
        if not applied:
            ssa.record_update(old, new, manager, now=_now(), subresource=subresource)
        if old is None:
            self._revision += 1
            new["metadata"].update(uid=str(uuid.uuid4()), generation=1, resourceVersion=str(self._revision),
                                   creationTimestamp=_now())
            if res == _JOBS:
                _generate_job_selector(new)
            self._store[key] = new
            self._emit(res, "ADDED", new)
            if res == _NAMESPACES:
                self._populate_namespace(key[2])
            if new["metadata"].get("ownerReferences"):
                self._collect_soon(key, new["metadata"]["uid"])
            return copy.deepcopy(new)
        if _without_times(new) == _without_times(old):
            return copy.deepcopy(old)
        meta = new["metadata"]
        content = {k: v for k, v in new.items() if k not in ("metadata", "status")}
        if content != {k: v for k, v in old.items() if k not in ("metadata", "status")}:
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self._revision += 1
        meta["resourceVersion"] = str(self._revision)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(key, new)
        self._store[key] = new
        self._emit(res, "MODIFIED", new)
        if meta.get("ownerReferences") != old["metadata"].get("ownerReferences"):
            self._collect_soon(key, meta["uid"])
        return copy.deepcopy(new)

    def _populate_namespace(self, namespace: str) -> None:
        """What kube-controller-manager puts into every new namespace: the root CA's ConfigMap (root-ca-cert-
        publisher) and the ``default`` ServiceAccount (serviceaccount controller). Neither is anyone's child."""
        for obj in ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"},
                     "data": {"ca.crt": _EMULATOR_CA}},
                    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}):
            key = (("", "v1", _PLURALS[str(obj["kind"])]), namespace, str(obj["metadata"]["name"]))
            if key not in self._store:
                self._store_object(key, copy.deepcopy(obj), None, manager="kube-controller-manager")

    @staticmethod
    def _manager(request: kmock.Request) -> str:
        """As the API server names a writer that gives no fieldManager: after its user agent."""
        return str(request.params.get("fieldManager") or request.headers.get("User-Agent", "unknown").split("/")[0])

    async def _serve_create(self, request: kmock.Request) -> Any:
        body = copy.deepcopy(request.data or {})
        meta = body.get("metadata") or {}
        key = (self._res(request), request.namespace or meta.get("namespace"), str(meta.get("name")))
        if key in self._store:
            raise _error(409, "AlreadyExists", f'{key[0][2]} "{key[2]}" already exists')
        body.pop("status", None) if key[0][2] in _WITH_STATUS else None
        return self._store_object(key, body, None, manager=self._manager(request), strict=_strict(request))

    async def _serve_update(self, request: kmock.Request) -> Any:
        key = (self._res(request), request.namespace, str(request.name))
        old = self._store.get(key)
        content_type = request.headers.get("Content-Type", "").split(";")[0]
        try:  # apply bodies are YAML, and JSON is YAML: try the fast parser first
            patch = json.loads(request.body or b"{}")
        except ValueError:
            patch = yaml.safe_load(request.body)
        subresource = request.subresource or None
        manager = self._manager(request)
        applied = content_type == "application/apply-patch+yaml"
        if applied:
            if not request.params.get("fieldManager"):
                raise _error(422, "Invalid", "fieldManager is required for apply requests")
            force = request.params.get("force") in ("true", "1")
            try:
                new = ssa.apply(old, patch, manager, force=force, now=_now())
            except ssa.ApplyConflict as exc:
                raise _error(409, "Conflict", str(exc)) from None
        elif old is None:
            raise self._not_found(request)
        elif content_type == "application/json-patch+json":
            new = json_patch(old, patch)
        else:  # merge patch; strategic merge patch approximated by it
            expected = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
            if expected is not None and expected != old["metadata"]["resourceVersion"]:
                raise _error(409, "Conflict", f'Operation cannot be fulfilled on {key[0][2]} "{key[2]}": '
                             "the object has been modified; please apply your changes to the latest version")
            new = merge_patch(old, patch)
        if key[0][2] in _WITH_STATUS:  # the status subresource: each endpoint changes only its own part
            status_from, rest_from = (new, old or {}) if subresource == "status" else (old or {}, new)
            new = {k: v for k, v in rest_from.items() if k != "status"}
            if "status" in status_from:
                new["status"] = status_from["status"]
        return self._store_object(key, new, old, manager=manager, subresource=subresource, applied=applied,
                                  strict=_strict(request))

    async def _serve_delete(self, request: kmock.Request) -> Any:
        key = (self._res(request), request.namespace, str(request.name))
        obj = self._store.get(key)
        if obj is None:
            raise self._not_found(request)
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                new = copy.deepcopy(obj)
                new["metadata"]["deletionTimestamp"] = datetime.datetime.now(datetime.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")
                return self._store_object(key, new, obj, manager=self._manager(request))
            return copy.deepcopy(obj)
        self._revision += 1
        return self._remove(key, obj)

    def _remove(self, key: ObjKey, obj: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
        del self._store[key]
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._revision)
        if not quiet:
            self._emit(key[0], "DELETED", obj)
        self._collect_garbage(str(obj["metadata"].get("uid")))
        return obj

    def _collect_garbage(self, owner_uid: str) -> None:
        """The garbage collector, in the background propagation mode: dependents follow their owner (at once
        here: tests read the cascade's result right after the deletion)."""
        for key, obj in list(self._store.items()):
            owners = (obj.get("metadata") or {}).get("ownerReferences") or []
            if key in self._store and any(ref.get("uid") == owner_uid for ref in owners):
                self._attempt_to_delete(key, str(obj["metadata"].get("uid")))

    def _collect_soon(self, key: ObjKey, uid: str) -> None:
        """The graph builder hears of a written object whose owners it does not know and looks them up: a
        moment after the write's answer, and not while the API server is away (it is the server's client)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a test without an event loop: nothing could watch the moment between
            self._attempt_to_delete(key, uid)
            return

        def attempt() -> None:
            if self._down:
                loop.call_later(_GC_DELAY, attempt)
            else:
                self._attempt_to_delete(key, uid)

        loop.call_later(_GC_DELAY, attempt)

    def _attempt_to_delete(self, key: ObjKey, uid: str) -> None:
        """kube-controller-manager's ``attemptToDeleteItem``: an owner reference is dangling when no object of
        its kind and name exists or the one that does has another uid (a re-created owner is not the owner).
        All dangling: the dependent is deleted (background); some: the dangling ones are removed from it."""
        obj = self._store.get(key)
        if obj is None or obj["metadata"].get("uid") != uid or obj["metadata"].get("deletionTimestamp"):
            return
        refs = obj["metadata"].get("ownerReferences") or []
        dangling = [ref for ref in refs if self._dangling(ref, key[1])]
        if not dangling:
            return
        new = copy.deepcopy(obj)
        if len(dangling) < len(refs):
            new["metadata"]["ownerReferences"] = [ref for ref in refs if ref not in dangling]
            self._store_object(key, new, obj, manager=_GC_MANAGER)
        elif obj["metadata"].get("finalizers"):
            new["metadata"]["deletionTimestamp"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._store_object(key, new, obj, manager=_GC_MANAGER)
        else:
            self._revision += 1
            self._remove(key, obj)

    def _dangling(self, ref: dict[str, Any], namespace: str | None) -> bool:
        group, _, version = str(ref.get("apiVersion", "")).rpartition("/")
        plural = _PLURALS.get(str(ref.get("kind")))
        if plural is None:  # a kind the collector cannot map: it keeps retrying, it never deletes
            return False
        res, name = (group, version, plural), str(ref.get("name"))
        owner = self._store.get((res, namespace, name)) or self._store.get((res, None, name))
        return owner is None or owner["metadata"].get("uid") != ref.get("uid")

    def hang_up(self) -> None:
        """End every open watch stream, as an API server does when it shuts down."""
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait(_HANG_UP)

    @contextlib.asynccontextmanager
    async def watch_gap(self, *, down: bool = False) -> AsyncIterator[None]:
        """An API server restart as watchers see it: streams end, lists and watches answer
        "429 storage is (re)initializing" while inside (other requests work, so what the block deletes
        produces no event anyone sees), and afterwards a watch resumed from before the gap gets
        "410 Gone": the history it would replay is compacted away, deletions included.
        ``down``: every request answers 503 inside, as while the server process is gone."""
        self._in_gap, self._down = True, down
        self.hang_up()
        try:
            yield
        finally:
            self._compacted = self._revision
            for history in self._history.values():
                history.clear()
            self._in_gap = self._down = False

    # -- for tests -------------------------------------------------------------------------------

    def create_crd(self, crd: dict[str, Any]) -> dict[str, Any]:
        """Create (or update) a CRD as `kubectl apply` would: validated as the API server does (422)."""
        return self.put(crd)

    def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        group, _, version = api_version.rpartition("/")
        obj = self._store.get(((group, version, plural), namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def all(self, api_version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        group, _, version = api_version.rpartition("/")
        return [copy.deepcopy(o) for (r, ns, _), o in sorted(self._store.items(), key=_etcd_order)
                if r == (group, version, plural) and (namespace is None or ns == namespace)]

    def put(self, obj: dict[str, Any], *, manager: str = "kubectl") -> dict[str, Any]:
        """Create or replace an object as a user would (kubectl create/replace), with events and versions."""
        group, _, version = obj["apiVersion"].rpartition("/")
        plural = _PLURALS[obj["kind"]]
        meta = obj["metadata"]
        key = ((group, version, plural), meta.get("namespace"), meta["name"])
        old = self._store.get(key)
        new = copy.deepcopy(obj)
        if old is not None and "managedFields" in old["metadata"]:
            new["metadata"].setdefault("managedFields", old["metadata"]["managedFields"])
        return self._store_object(key, new, old, manager=manager)

    def edit(self, api_version: str, plural: str, namespace: str, name: str, patch: dict[str, Any],
             *, status: bool = False, manager: str | None = None, subresource: str | None = None) -> dict[str, Any]:
        """What `kubectl patch --type merge` (or a controller writing status) does."""
        group, _, version = api_version.rpartition("/")
        key = ((group, version, plural), namespace, name)
        old = self._store[key]
        new = merge_patch(old, patch)
        if not status and "status" in old:
            new["status"] = old["status"]
        subresource = "status" if status else subresource
        manager = manager or ("kube-controller-manager" if status else "kubectl-patch")
        return self._store_object(key, new, old, manager=manager, subresource=subresource, strict=False)

    def update(self, api_version: str, plural: str, namespace: str, name: str,
               mutate: Callable[[dict[str, Any]], None], *, manager: str = "kubectl-edit") -> dict[str, Any]:
        """Read, change, write back: what `kubectl edit` or `kubectl set env/image` does (an Update)."""
        group, _, version = api_version.rpartition("/")
        key = ((group, version, plural), namespace, name)
        old = self._store[key]
        new = copy.deepcopy(old)
        mutate(new)
        return self._store_object(key, new, old, manager=manager, strict=False)

    def remove(self, api_version: str, plural: str, namespace: str, name: str, *, quiet: bool = False) -> None:
        """Delete (background propagation). ``quiet``: no watcher ever hears of it, as when its watch was
        down; the garbage collector's deletions of its dependents are heard as usual."""
        group, _, version = api_version.rpartition("/")
        key = ((group, version, plural), namespace, name)
        self._revision += 1
        self._remove(key, self._store[key], quiet=quiet)

    def scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """What the HorizontalPodAutoscaler does: set the Deployment's replicas (its own field)."""
        return self.edit("apps/v1", "deployments", namespace, name, {"spec": {"replicas": replicas}},
                         manager="kube-controller-manager", subresource="scale")

    def run_autoscalers(self, namespace: str) -> None:
        """Play the HPA controller's first sync of every HPA in ``namespace``: its target's replicas moved into
        [minReplicas, maxReplicas] (a new Deployment without replicas has 1), and the HPA's status written.
        A real controller does it one sync period (15 s) after the HPA is made: a test that measures a
        converged platform plays it first, or the controller lands in the middle of the measurement."""
        for hpa in self.all("autoscaling/v2", "horizontalpodautoscalers", namespace):
            target = self.get("apps/v1", "deployments", namespace, hpa["spec"]["scaleTargetRef"]["name"])
            if target is None:
                continue
            replicas = int(target["spec"].get("replicas", 1))
            desired = autoscaler_first_sync(hpa, replicas)
            if desired is not None:
                self.edit("apps/v1", "deployments", namespace, target["metadata"]["name"],
                          {"spec": {"replicas": desired}}, manager="kube-controller-manager", subresource="scale")
            now = _now()
            able = {"type": "AbleToScale", "status": "True", "lastTransitionTime": now,
                    "reason": "SucceededRescale" if desired is not None else "ReadyForNewScale",
                    "message": "the HPA controller was able to update the target scale" if desired is not None
                    else "recommended size matches current size"}
            status: dict[str, Any] = {"currentReplicas": replicas, "desiredReplicas": desired or replicas,
                                      "conditions": [able]}
            if desired is not None:
                status["lastScaleTime"] = now
            self.edit("autoscaling/v2", "horizontalpodautoscalers", namespace, hpa["metadata"]["name"],
                      {"status": status}, status=True)

    def set_deployment_status(self, namespace: str, name: str, *, ready: int | None = None) -> dict[str, Any]:
        """Play the Deployment controller and kubelet: all replicas of the current template ready."""
        deployment = self._store[(("apps", "v1", "deployments"), namespace, name)]
        return self.edit("apps/v1", "deployments", namespace, name,
                         {"status": deployment_status(deployment, ready)}, status=True)

    def start_job(self, namespace: str, name: str) -> dict[str, Any]:
        """Play the Job controller: its pod has been created and runs."""
        return self.edit("batch/v1", "jobs", namespace, name, {"status": {
            "startTime": _now(), "active": 1, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {}}},
            status=True)

    def finish_job(self, namespace: str, name: str, *, succeeded: bool, message: str, attempts: int = 1,
                   reason: str = "BackoffLimitExceeded") -> dict[str, Any]:
        """Play the Job controller and the kubelet to the end: ``attempts`` pods ran (restartPolicy Never),
        each terminated with ``message`` as its container's termination message (exit 0 for the last one
        when ``succeeded``, else 2), then the Job's terminal condition (Complete, or Failed for ``reason``)."""
        job = self._store[(_JOBS, namespace, name)]
        template = job["spec"]["template"]
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        container = template["spec"]["containers"][0]["name"]
        for attempt in range(attempts):
            ok = succeeded and attempt == attempts - 1
            pod = self.put({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"{name}-{uuid.uuid4().hex[:5]}", "namespace": namespace, "labels": labels,
                "ownerReferences": [owner]}, "spec": copy.deepcopy(template["spec"])},
                manager="kube-controller-manager")
            self.edit("v1", "pods", namespace, pod["metadata"]["name"], {"status": {
                "phase": "Succeeded" if ok else "Failed",
                "containerStatuses": [{"name": container, "ready": False, "restartCount": 0, "image": "x",
                                       "imageID": "", "state": {"terminated": {
                                           "exitCode": 0 if ok else 2, "reason": "Completed" if ok else "Error",
                                           "message": message, "startedAt": _now(), "finishedAt": _now()}}}],
            }}, status=True, manager="kubelet")
        now = _now()
        if succeeded:
            conditions = [{"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                           "message": "Reached expected number of succeeded pods"},
                          {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                           "message": "Reached expected number of succeeded pods"}]
            counts = {"succeeded": 1, "failed": attempts - 1, "completionTime": now}
        else:
            text = {"BackoffLimitExceeded": "Job has reached the specified backoff limit",
                    "DeadlineExceeded": "Job was active longer than specified deadline"}.get(reason, reason)
            conditions = [{"type": "FailureTarget", "status": "True", "reason": reason, "message": text},
                          {"type": "Failed", "status": "True", "reason": reason, "message": text}]
            counts = {"failed": attempts}
        started = (job.get("status") or {}).get("startTime") or now  # set once, as the Job controller does
        return self.edit("batch/v1", "jobs", namespace, name, {"status": {
            "startTime": started, "active": 0, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {}, **counts,
            "conditions": [{**c, "lastProbeTime": now, "lastTransitionTime": now} for c in conditions]}},
            status=True)

    @property
    def log(self) -> list[kmock.Request]:
        """Every request served so far, in order (kmock records them all)."""
        return self._requests

    def mutating_requests(self, since: int = 0) -> list[kmock.Request]:
        return [r for r in self._requests[since:] if r.method.value in ("POST", "PUT", "PATCH", "DELETE")]


_PLURALS = {
    "Namespace": "namespaces", "Secret": "secrets", "ConfigMap": "configmaps", "ServiceAccount": "serviceaccounts",
    "Service": "services", "Deployment": "deployments", "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets", "NetworkPolicy": "networkpolicies",
    "ServiceMonitor": "servicemonitors", "LearnerPlatform": "learnerplatforms", "Event": "events",
    "Lease": "leases", "CustomResourceDefinition": "customresourcedefinitions", "Job": "jobs", "Pod": "pods",
}
_JOBS: ResKey = ("batch", "v1", "jobs")
_NAMESPACES: ResKey = ("", "v1", "namespaces")
#: The data of every namespace's kube-root-ca.crt (no client here checks it against a server certificate).
_EMULATOR_CA = "-----BEGIN CERTIFICATE-----\nZW11bGF0b3I=\n-----END CERTIFICATE-----\n"


_LEASES: ResKey = ("coordination.k8s.io", "v1", "leases")
_SERVICES: ResKey = ("", "v1", "services")
#: metav1.MicroTime, as Go's time.Parse reads RFC3339Micro ("2006-01-02T15:04:05.000000Z07:00"): six digits.
_MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


def _decode_lease(lease: dict[str, Any]) -> None:
    """A Lease's acquireTime and renewTime are MicroTime: a timestamp without its six fractional digits
    ("...:53Z", as metav1.Time writes) cannot be decoded (400)."""
    for field in ("acquireTime", "renewTime"):
        value = (lease.get("spec") or {}).get(field)
        if value is not None and not (isinstance(value, str) and _MICRO_TIME.match(value)):
            raise _error(400, "BadRequest", f'Lease in version "v1" cannot be handled as a Lease: parsing time '
                         f'"{value}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse "{str(value)[19:]}" as '
                         '".000000"')


def _validate_service(service: dict[str, Any]) -> None:
    """Service validation on what a write leaves (after an apply's merge by port and protocol): every port
    name at most once (422)."""
    seen: set[str] = set()
    for index, port in enumerate((service.get("spec") or {}).get("ports") or []):
        name = port.get("name")
        if name and name in seen:
            raise _error(422, "Invalid", f'Service "{service["metadata"]["name"]}" is invalid: '
                         f'spec.ports[{index}].name: Duplicate value: "{name}"')
        seen.add(name)


def _strict(request: kmock.Request) -> bool:
    """``fieldValidation=Strict``; without it the server has defaulted to Warn since v1.27 (unknown fields
    dropped, with a warning)."""
    return request.params.get("fieldValidation") == "Strict"


def _etcd_order(item: tuple[ObjKey, Any]) -> tuple[str, str]:
    """Lists come from etcd in key order (``/registry/<resource>/<namespace>/<name>``): by namespace, then
    name, whatever order the objects were created in."""
    (_, namespace, name), _ = item
    return (namespace or "", name)


def _generate_job_selector(job: dict[str, Any]) -> None:
    """What the Job REST strategy does at creation (unless spec.manualSelector): select the Job's own pods
    by its uid, and label the pod template so that they carry it."""
    meta, spec = job["metadata"], job.setdefault("spec", {})
    if spec.get("manualSelector"):
        return
    ids = {"batch.kubernetes.io/controller-uid": meta["uid"], "batch.kubernetes.io/job-name": meta["name"],
           "controller-uid": meta["uid"], "job-name": meta["name"]}
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": meta["uid"]}}
    template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
    template_meta["labels"] = {**(template_meta.get("labels") or {}), **ids}


def _refuse_job_change(old: dict[str, Any], new: dict[str, Any]) -> None:
    """A Job's pod template and selector cannot change once it exists."""
    for field in ("template", "selector"):
        if (new.get("spec") or {}).get(field) != (old.get("spec") or {}).get(field):
            raise _error(422, "Invalid", f'Job.batch "{old["metadata"]["name"]}" is invalid: spec.{field}: '
                         "Invalid value: field is immutable")


def standard_cluster(crd: dict[str, Any]) -> Cluster:
    """The emulator with every kind the operator and kopf touch declared (kopf needs full discovery)."""
    cluster = Cluster()
    for (group, version, plural), namespaced in _NAMESPACED.items():
        cluster.declare(group, version, plural, plural.capitalize()[:-1], namespaced=namespaced)
    for kind, plural in _PLURALS.items():
        if plural in ("namespaces", "customresourcedefinitions"):
            continue
        api_version = {"Deployment": "apps/v1", "HorizontalPodAutoscaler": "autoscaling/v2",
                       "PodDisruptionBudget": "policy/v1", "NetworkPolicy": "networking.k8s.io/v1",
                       "ServiceMonitor": "monitoring.coreos.com/v1", "LearnerPlatform": "learner.dev/v1alpha1",
                       "Lease": "coordination.k8s.io/v1", "Job": "batch/v1"}.get(kind, "v1")
        group, _, version = api_version.rpartition("/")
        names = crd["spec"]["names"] if kind == crd["spec"]["names"]["kind"] else {}
        cluster.declare(group, version, plural, kind, shortnames=tuple(names.get("shortNames", ())))
    cluster.create_crd(crd)
    return cluster


def _partial(request: kmock.Request, *, listing: bool) -> str:
    """The ``as=`` of the Accept header's first type, as the API server negotiates it: a list asked for as
    PartialObjectMetadata (or a watch as PartialObjectMetadataList) is 406 Not Acceptable."""
    first = request.headers.get("Accept", "").split(",")[0]
    params = dict(part.strip().split("=", 1) for part in first.split(";")[1:] if "=" in part)
    as_ = params.get("as", "")
    if as_ and as_ != ("PartialObjectMetadataList" if listing else "PartialObjectMetadata"):
        raise _error(406, "NotAcceptable", f"only the following media types are accepted: as={as_} is not "
                     f"served for a {'list' if listing else 'watch or single object'}")
    return as_


def _metadata_of(obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": copy.deepcopy(obj.get("metadata") or {})}


def _without_times(obj: dict[str, Any]) -> dict[str, Any]:
    """The object less the managedFields timestamps, which a no-op write does not change."""
    meta = dict(obj.get("metadata") or {})
    meta["managedFields"] = [{k: v for k, v in e.items() if k != "time"} for e in meta.get("managedFields") or []]
    return {**obj, "metadata": meta}
