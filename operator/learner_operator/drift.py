"""Does a live child still hold what the operator applied? (pure: no client, no kopf)

The API server does not keep what an apply sends verbatim: it omits empty lists and maps, rewrites
quantities ("0.5" -> "500m"), fills defaults, and merges keyed lists with entries other managers
added. So the decision never compares our manifest with the live object's values. It rests on two
things the server itself maintains:

1. Did *we* change our mind? The digest of the desired manifest sits in the child's
   ``learner.dev/applied-digest`` annotation; a different digest means a new apply (this also catches
   a field we stopped setting, which no comparison of present fields can see).
2. Did *someone else* change a field we set? The server records which manager owns which field
   (``metadata.managedFields``). Whoever changes one of our fields takes it from our entry, so our
   entry's FieldsV1 differs from the one our own last apply produced. We remember a fingerprint of
   that entry from the apply's response (:func:`ownership`) and compare fingerprints.

Fields we never set stay other managers' business: an env var that ``kubectl set env`` added to our
container is left alone (server-side apply could not remove it anyway) and costs no write.

When the operator has just started, it has no fingerprint from an apply of its own. Then a lenient
comparison decides once (:func:`contains`: quantities by value, empty lists and maps as absent, keyed
lists by key with foreign entries allowed), and the live fingerprint is adopted when it holds.
"""

from __future__ import annotations

import hashlib
import json
from decimal import InvalidOperation
from typing import Any

import orjson

from learner_operator.models import FIELD_MANAGER, parse_quantity

DIGEST_ANNOTATION = "learner.dev/applied-digest"
#: Where a cached child (see livestate) carries its fingerprint instead of the bulky managedFields.
OWNERSHIP_KEY = "__ownership__"
#: And whether our entry owns ``spec.replicas`` (see :func:`hands_over_replicas`).
OWNS_REPLICAS_KEY = "__owns_replicas__"
#: Co-owns a Deployment's replicas for a moment when an autoscaler takes them over from us.
HANDOVER_MANAGER = f"{FIELD_MANAGER}-handover"
_QUANTITY_PARENTS = {"requests", "limits"}
#: Lists the server merges by key: entries other managers add are theirs, not drift.
_LIST_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "imagePullSecrets": "name"}


def digest(manifest: dict[str, Any]) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def with_digest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as applied: the same, plus the digest annotation of itself."""
    meta = manifest["metadata"]
    annotations = {**meta.get("annotations", {}), DIGEST_ANNOTATION: digest(manifest)}
    return {**manifest, "metadata": {**meta, "annotations": annotations}}


def own_entry(body: dict[str, Any]) -> dict[str, Any] | None:
    """Our apply's entry in ``managedFields`` (the fields the server says we own)."""
    for entry in (body.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply" and not entry.get(
            "subresource"
        ):
            return dict(entry)
    return None


def ownership(body: dict[str, Any] | None) -> str:
    """A fingerprint of the fields we own in ``body``; "" when we own none (or there is no body)."""
    if body is not None and OWNERSHIP_KEY in body:
        return str(body[OWNERSHIP_KEY])
    entry = own_entry(body or {})
    if entry is None:
        return ""
    # Compared only with fingerprints made by this process, so the faster canonical form is fine here.
    return hashlib.sha256(orjson.dumps(entry.get("fieldsV1") or {}, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


def owns_replicas(body: dict[str, Any] | None) -> bool:
    """Does our apply's entry own ``spec.replicas`` in ``body``?"""
    if body is not None and OWNS_REPLICAS_KEY in body:
        return bool(body[OWNS_REPLICAS_KEY])
    entry = own_entry(body or {}) or {}
    return "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})


def hands_over_replicas(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """Is this the apply that stops setting a Deployment's replicas (an HPA or KEDA takes them over)?

    Server-side apply removes a field its only manager stops sending: the Deployment would fall back
    to 1 replica until the autoscaler acts. So first another manager of ours applies the current count
    (shared ownership), then our apply leaves it out and the count stays until the autoscaler moves it.
    """
    return (desired.get("kind") == "Deployment" and "replicas" not in (desired.get("spec") or {})
            and live is not None and owns_replicas(live))


def replicas_handover(desired: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    meta = desired["metadata"]
    replicas = int((live.get("spec") or {}).get("replicas", 1))
    return {"apiVersion": desired["apiVersion"], "kind": desired["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]}, "spec": {"replicas": replicas}}


def _same_quantity(want: Any, have: Any) -> bool:
    try:
        return parse_quantity(want) == parse_quantity(have)
    except (ValueError, InvalidOperation):
        return False


def _absent(value: Any) -> bool:
    return value is None or value == [] or value == {}


def contains(want: Any, have: Any, path: tuple[str, ...] = ()) -> bool:
    """Every field of ``want`` is in ``have`` as the server would store it (see the module docstring)."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return not want and _absent(have)
        return all(
            (_absent(value) and _absent(have.get(key))) or (key in have and contains(value, have[key], (*path, key)))
            for key, value in want.items()
        )
    if isinstance(want, list):
        if not isinstance(have, list):
            return not want and _absent(have)
        key = _LIST_KEYS.get(path[-1]) if path else None
        if key is not None and all(isinstance(item, dict) and key in item for item in want):
            by_key = {item.get(key): item for item in have if isinstance(item, dict)}
            return all(item[key] in by_key and contains(item, by_key[item[key]], path) for item in want)
        return len(want) == len(have) and all(contains(w, h, path) for w, h in zip(want, have, strict=True))
    if want == have:
        return True
    return len(path) >= 2 and path[-2] in _QUANTITY_PARENTS and _same_quantity(want, have)


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None, applied_ownership: str | None) -> bool:
    """``desired`` carries its digest annotation (see :func:`with_digest`); ``applied_ownership`` is the
    fingerprint our last apply of this child produced, or None when this process has not applied it."""
    if live is None:
        return True
    live_annotations = (live.get("metadata") or {}).get("annotations") or {}
    if live_annotations.get(DIGEST_ANNOTATION) != desired["metadata"]["annotations"][DIGEST_ANNOTATION]:
        return True
    if applied_ownership is not None:
        return ownership(live) != applied_ownership
    return not contains({k: v for k, v in desired.items() if k != "status"},
                        {k: v for k, v in live.items() if k not in (OWNERSHIP_KEY, OWNS_REPLICAS_KEY)})
