"""Field ownership and server-side apply, as kube-apiserver does them for the kinds our tests touch.

What a real server does that an operator's drift check meets, and that a dict merge does not show:

- Every write records who set which field (``metadata.managedFields``, FieldsV1 paths): an apply
  owns exactly the fields it sent; any other write takes the fields it changed away from their
  previous owners.
- An apply merges lists by key where the Kubernetes types say so (containers and env by ``name``,
  container ports by ``containerPort``+``protocol``...): an env var someone else added stays, owned by
  them. Other lists are atomic: replaced whole.
- A field an applier stops sending is removed, unless another manager owns it too.
- An apply of a field another manager owns with a different value is a conflict (409) unless forced,
  which moves the field to the applier.
- Objects come back normalised: empty lists and empty maps are omitted (Go's ``omitempty``),
  quantities are canonical ("0.5" -> "500m", "1024Mi" -> "1Gi"), and the server fills its defaults.

Paths are tuples of FieldsV1 elements: ``f:<field>``, ``k:<json of the key fields>`` for an item of a
keyed list, ``v:<json>`` for a member of a set-like list.
"""

from __future__ import annotations

import contextlib
import copy
import json
from decimal import ROUND_CEILING, Decimal
from typing import Any

from learner_operator.models import parse_quantity

Path = tuple[str, ...]
_MISSING: Any = object()

#: Lists merged by key (+listType=map in the Kubernetes types), by field name.
_MAP_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",),
    "env": ("name",), "volumes": ("name",), "volumeMounts": ("mountPath",), "imagePullSecrets": ("name",),
    "ownerReferences": ("uid",), "conditions": ("type",), "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
}
_SETS = {"finalizers"}
#: Fields typed as Go maps (omitted when empty); every other object is a struct and stays as ``{}``.
_MAP_FIELDS = {"labels", "annotations", "matchLabels", "data", "binaryData", "nodeSelector", "requests", "limits",
               "stringData"}
_QUANTITY_FIELDS = {"sizeLimit", "averageValue", "value"}
#: Not tracked in managedFields.
_UNTRACKED: set[Path] = {
    ("f:apiVersion",), ("f:kind",), ("f:metadata", "f:name"), ("f:metadata", "f:namespace"),
    ("f:metadata", "f:uid"), ("f:metadata", "f:resourceVersion"), ("f:metadata", "f:generation"),
    ("f:metadata", "f:creationTimestamp"), ("f:metadata", "f:managedFields"), ("f:metadata", "f:deletionTimestamp"),
}


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        self.conflicts = conflicts
        details = "; ".join(f'conflict with "{manager}": {render(path)}' for manager, path in conflicts)
        super().__init__(f"Apply failed with {len(conflicts)} conflict{'s' * (len(conflicts) > 1)}: {details}")


def render(path: Path) -> str:
    """A path as the server's conflict messages write it: .spec.template.spec.containers[name="api"].image."""
    out = ""
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            out += f".{rest}"
        elif kind == "k":
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(rest).items()) + "]"
        else:
            out += f"[{rest}]"
    return out


# -- list semantics ---------------------------------------------------------------------------------

def _keys_for(field: str, path: Path) -> tuple[str, ...] | None:
    if field == "ports":
        if any(e in ("f:containers", "f:initContainers", "f:ephemeralContainers") for e in path):
            return ("containerPort", "protocol")
        if path[:2] == ("f:spec", "f:ports"):
            return ("port", "protocol")
        return None  # NetworkPolicy ports live inside atomic lists
    return _MAP_KEYS.get(field)


def _item_element(keys: tuple[str, ...], item: Any) -> str:
    if not isinstance(item, dict):
        return f"v:{json.dumps(item, separators=(',', ':'))}"
    values = {k: item.get(k, "TCP" if k == "protocol" else None) for k in keys}
    return "k:" + json.dumps({k: v for k, v in values.items() if v is not None}, separators=(",", ":"))


# -- field sets -------------------------------------------------------------------------------------

def fields_of(obj: Any, path: Path = ()) -> set[Path]:
    """The FieldsV1 paths set in ``obj``: its leaves, and the items of keyed lists."""
    out: set[Path] = set()
    if isinstance(obj, dict):
        if not obj and path:
            out.add(path)
        for key, value in obj.items():
            child = (*path, f"f:{key}")
            if child in _UNTRACKED:
                continue
            if isinstance(value, list) and value and (keys := _keys_for(key, child)) is not None:
                for item in value:
                    item_path = (*child, _item_element(keys, item))
                    out.add(item_path)
                    out |= fields_of(item, item_path) if isinstance(item, dict) else set()
            elif isinstance(value, list) and value and key in _SETS:
                out |= {(*child, _item_element((), item)) for item in value}
            elif isinstance(value, dict) and value:
                out |= fields_of(value, child)
            else:
                out.add(child)
    return out


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for element in path:
            node = node.setdefault(element, {})
        if path and path[-1].startswith("k:"):
            node["."] = {}
    return root


def from_fields_v1(tree: dict[str, Any], path: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for element, sub in tree.items():
        if element == ".":
            out.add(path)
        elif sub:
            out |= from_fields_v1(sub, (*path, element))
        else:
            out.add((*path, element))
    return out


def get_at(obj: Any, path: Path) -> Any:
    node = obj
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f" and isinstance(node, dict) and rest in node:
            node = node[rest]
        elif kind == "k" and isinstance(node, list):
            wanted = json.loads(rest)
            node = next((i for i in node if isinstance(i, dict) and all(
                i.get(k, "TCP" if k == "protocol" else None) == v for k, v in wanted.items())), _MISSING)
        elif kind == "v" and isinstance(node, list):
            value = json.loads(rest)
            node = value if value in node else _MISSING
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def remove_at(obj: Any, path: Path) -> None:
    parent = get_at(obj, path[:-1])
    kind, _, rest = path[-1].partition(":")
    if kind == "f" and isinstance(parent, dict):
        parent.pop(rest, None)
    elif kind in ("k", "v") and isinstance(parent, list):
        target = get_at(obj, path)
        if target is not _MISSING:
            parent[:] = [item for item in parent if item is not target and not (kind == "v" and item == target)]


# -- apply ------------------------------------------------------------------------------------------

def merge(live: Any, applied: Any, path: Path = ()) -> Any:
    """Apply's merge: objects field by field, keyed lists item by item, anything else replaced."""
    if isinstance(live, dict) and isinstance(applied, dict):
        result = dict(live)
        for key, value in applied.items():
            result[key] = merge(live.get(key, _MISSING), value, (*path, f"f:{key}"))
        return result
    if isinstance(live, list) and isinstance(applied, list) and path and (
        keys := _keys_for(path[-1][2:], path)
    ) is not None:
        return _merge_keyed(live, applied, keys, path)
    if isinstance(live, list) and isinstance(applied, list) and path and path[-1][2:] in _SETS:
        return applied + [item for item in live if item not in applied]
    return copy.deepcopy(applied)


def _merge_keyed(live: list[Any], applied: list[Any], keys: tuple[str, ...], path: Path) -> list[Any]:
    """structured-merge-diff's order for a keyed list (typed/merge.go, visitListItems): the live order is
    kept, entries only the live list has stay where they are, and the applied list's new entries come in
    where the applied order puts them among the shared ones. So an entry another manager put first stays
    first: ``[{port: 8080}]`` live and ``[{port: 80}]`` applied merge to ``[8080, 80]``, not ``[80, 8080]``."""
    lhs = [(_item_element(keys, item), item) for item in live]
    rhs = [(_item_element(keys, item), item) for item in applied]
    in_lhs, in_rhs = dict(reversed(lhs)), dict(reversed(rhs))  # the first of duplicates, as its index does
    shared = [key for key, _ in rhs if key in in_lhs]
    next_shared = shared.pop(0) if shared else None
    merged_rhs: set[str] = set()
    out: list[Any] = []
    li = ri = 0
    while li < len(lhs) or ri < len(rhs):
        if li < len(lhs) and ri < len(rhs):
            key = lhs[li][0]
            if key == rhs[ri][0]:
                merged_rhs.add(key)
                out.append(merge(in_lhs[key], in_rhs[key], path))
                li, ri = li + 1, ri + 1
                next_shared = shared.pop(0) if shared else None
                continue
            if key in in_rhs and next_shared is not None and next_shared != key:
                li += 1  # shared, but not the one this round wants
                continue
        if li < len(lhs):
            key = lhs[li][0]
            if key not in in_rhs:
                out.append(copy.deepcopy(lhs[li][1]))
                li += 1
                continue
            if key in merged_rhs:
                li += 1
                continue
        if ri < len(rhs):
            key = rhs[ri][0]
            merged_rhs.add(key)
            out.append(merge(in_lhs.get(key, _MISSING), in_rhs[key], path))
            ri += 1
            if next_shared is not None and next_shared == key:
                next_shared = shared.pop(0) if shared else None
    return out


def _is_item(path: Path) -> bool:
    """An item of a keyed or set-like list: owned by everyone who sets it, never a conflict by itself."""
    return bool(path) and path[-1][:2] in ("k:", "v:")


def _entries(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("metadata") or {}).get("managedFields") or [])


def _owned(entry: dict[str, Any]) -> set[Path]:
    return from_fields_v1(entry.get("fieldsV1") or {})


def _entry(manager: str, operation: str, api_version: str, paths: set[Path], now: str,
           subresource: str | None) -> dict[str, Any]:
    entry = {"manager": manager, "operation": operation, "apiVersion": api_version, "time": now,
             "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(paths)}
    if subresource:
        entry["subresource"] = subresource
    return entry


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return isinstance(a, (str, int)) and isinstance(b, (str, int)) and parse_quantity(a) == parse_quantity(b)
    except ValueError:
        return False


def apply(live: dict[str, Any] | None, config: dict[str, Any], manager: str, *, force: bool,
          now: str) -> dict[str, Any]:
    """The object after ``manager`` applied ``config`` (not yet normalised or defaulted)."""
    live = copy.deepcopy(live) if live is not None else {}
    api_version = str(config.get("apiVersion", ""))
    wanted = fields_of(config)
    entries = _entries(live)
    conflicts: list[tuple[str, Path]] = []
    previous: set[Path] = set()
    kept: list[dict[str, Any]] = []
    for entry in entries:
        owned = _owned(entry)
        if entry.get("subresource"):
            kept.append(entry)
            continue
        if entry["manager"] == manager and entry["operation"] == "Apply":
            previous = owned
            continue
        clash = {p for p in owned & wanted if not _is_item(p) and not _same(get_at(live, p), get_at(config, p))}
        if clash and not force:
            conflicts += [(entry["manager"], p) for p in sorted(clash)]
        if clash:
            owned -= clash
            entry = {**entry, "fieldsV1": to_fields_v1(owned)}
        if owned:
            kept.append(entry)
    if conflicts:
        raise ApplyConflict(conflicts)
    merged = merge(live, config)
    others = set().union(*(_owned(e) for e in kept)) if kept else set()
    for path in sorted(previous - wanted, key=len, reverse=True):
        if path not in others and not any(o[:len(path)] == path for o in others):
            remove_at(merged, path)
    meta = merged.setdefault("metadata", {})
    meta["managedFields"] = [*kept, _entry(manager, "Apply", api_version, wanted, now, None)]
    return merged


def record_update(old: dict[str, Any] | None, new: dict[str, Any], manager: str, *, now: str,
                  subresource: str | None = None) -> None:
    """Any write that is not an apply: the writer takes the fields it changed (in place, on ``new``)."""
    old = old or {}
    before, after = fields_of(old), fields_of(new)
    changed = {p for p in after if (previous := get_at(old, p)) is _MISSING
               or (not _is_item(p) and previous != get_at(new, p))}
    removed = before - after
    entries: list[dict[str, Any]] = []
    mine: set[Path] = set()
    for entry in _entries(old):
        owned = _owned(entry)
        if entry["manager"] == manager and entry["operation"] == "Update" and entry.get("subresource") == subresource:
            mine = owned - removed
            continue
        owned -= changed | removed
        if owned:
            entries.append({**entry, "fieldsV1": to_fields_v1(owned)})
    mine |= changed
    if mine:
        entries.append(_entry(manager, "Update", str(new.get("apiVersion", "")), mine, now, subresource))
    new.setdefault("metadata", {})["managedFields"] = entries


# -- what the server makes of an object -------------------------------------------------------------

def canonical_quantity(text: str | int) -> str:
    """resource.Quantity's canonical form: "0.5" -> "500m", "1024Mi" -> "1Gi", "1000m" -> "1"."""
    raw = str(text).strip()
    value = parse_quantity(raw)
    binary = raw.endswith("i")
    exponent_form = any(c in raw for c in "eE") and not raw.endswith(("E", "Ei"))
    if binary and abs(value) >= 1024 and value == value.to_integral_value():
        number, power = int(value), 0
        while number % 1024 == 0 and power < 6:
            number //= 1024
            power += 1
        return f"{number}{['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'][power]}"
    nano = (value * Decimal(10) ** 9).to_integral_value(rounding=ROUND_CEILING)
    number, exponent = int(nano), -9
    while number and number % 1000 == 0 and exponent < 18:
        number //= 1000
        exponent += 3
    if number == 0:
        return "0"
    if exponent_form:
        return f"{number}e{exponent}" if exponent else str(number)
    return f"{number}{ {-9: 'n', -6: 'u', -3: 'm', 0: '', 3: 'k', 6: 'M', 9: 'G', 12: 'T', 15: 'P', 18: 'E'}[exponent]}"


def normalise(obj: Any, path: Path = ()) -> Any:
    """Omit empty lists and maps, canonical quantities: what a built-in kind looks like read back."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            child = (*path, f"f:{key}")
            value = normalise(value, child)
            if value == [] or (value == {} and (key in _MAP_FIELDS or child == ("f:spec", "f:selector"))):
                continue
            if isinstance(value, (str, int)) and not isinstance(value, bool) and (
                key in _QUANTITY_FIELDS or (len(path) and path[-1] in ("f:requests", "f:limits"))
            ):
                with contextlib.suppress(ValueError):
                    value = canonical_quantity(value)
            out[key] = value
        return out
    if isinstance(obj, list):
        return [normalise(item, path) for item in obj]
    return obj


def _probe_defaults(probe: Any) -> None:
    if isinstance(probe, dict):
        for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                           ("failureThreshold", 3)):
            probe.setdefault(key, value)
        if isinstance(probe.get("httpGet"), dict):
            probe["httpGet"].setdefault("scheme", "HTTP")


def _pod_defaults(pod: dict[str, Any]) -> None:
    pod.setdefault("restartPolicy", "Always")
    pod.setdefault("terminationGracePeriodSeconds", 30)
    pod.setdefault("dnsPolicy", "ClusterFirst")
    pod.setdefault("securityContext", {})
    pod.setdefault("schedulerName", "default-scheduler")
    for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        image = str(container.get("image", ""))
        tag = image.rsplit("/", 1)[-1]
        latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        for port in container.get("ports") or []:
            port.setdefault("protocol", "TCP")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            _probe_defaults(container.get(probe))


def server_defaults(plural: str, obj: dict[str, Any]) -> None:
    """The defaults kube-apiserver fills in for the kinds the operator makes (in place)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if plural == "deployments":
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        _pod_defaults((spec.get("template") or {}).setdefault("spec", {}))
    elif plural == "jobs":
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        pod = (spec.get("template") or {}).setdefault("spec", {})
        _pod_defaults(pod)
    elif plural == "services":
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("clusterIP", "10.96.0.42")
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    elif plural == "networkpolicies":
        if "policyTypes" not in spec:
            spec["policyTypes"] = ["Ingress", *(["Egress"] if spec.get("egress") else [])]
        for rule in [*(spec.get("ingress") or []), *(spec.get("egress") or [])]:
            for port in rule.get("ports") or []:
                port.setdefault("protocol", "TCP")
