"""Does a live child still match what the operator would apply? (pure: no client, no kopf)

Two questions decide whether to send an apply:

1. Did *our* desired state change since the last apply? The digest of the desired manifest sits in
   the child's ``learner.dev/applied-digest`` annotation; a different digest means we changed our
   mind (including removing a field, which a containment check cannot see).
2. Did *someone else* change one of our fields? Every field we set must be in the live object with
   the same value. The API server adds defaults (``protocol: TCP``, ``imagePullPolicy``...) and may
   normalise quantities ("0.5" -> "500m"), so extra fields are fine and quantities compare by value.

If both say "same", the reconcile sends nothing: a no-op resync costs zero mutating requests.
"""

from __future__ import annotations

import hashlib
import json
from decimal import InvalidOperation
from typing import Any

from learner_operator.models import parse_quantity

DIGEST_ANNOTATION = "learner.dev/applied-digest"
_QUANTITY_PARENTS = {"requests", "limits"}


def digest(manifest: dict[str, Any]) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def with_digest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as applied: the same, plus the digest annotation of itself."""
    meta = manifest["metadata"]
    annotations = {**meta.get("annotations", {}), DIGEST_ANNOTATION: digest(manifest)}
    return {**manifest, "metadata": {**meta, "annotations": annotations}}


def _same_quantity(want: Any, have: Any) -> bool:
    try:
        return parse_quantity(want) == parse_quantity(have)
    except (ValueError, InvalidOperation):
        return False


def contains(want: Any, have: Any, path: tuple[str, ...] = ()) -> bool:
    """Every field of ``want`` is in ``have`` with an equal value (lists: same length, item by item)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            key in have and contains(value, have[key], (*path, key)) for key, value in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list) and len(want) == len(have)
            and all(contains(w, h, path) for w, h in zip(want, have, strict=True))
        )
    if want == have:
        return True
    return len(path) >= 2 and path[-2] in _QUANTITY_PARENTS and _same_quantity(want, have)


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """``desired`` carries its digest annotation (see :func:`with_digest`)."""
    if live is None:
        return True
    live_annotations = (live.get("metadata") or {}).get("annotations") or {}
    if live_annotations.get(DIGEST_ANNOTATION) != desired["metadata"]["annotations"][DIGEST_ANNOTATION]:
        return True
    return not contains({k: v for k, v in desired.items() if k != "status"}, live)
