"""Turning a raw ``spec`` (or a whole LearnerPlatform object) into the typed model, with errors a person
can act on."""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

from pydantic import ValidationError

from learner_operator.models.v1alpha1 import API_VERSION, KIND, MAX_NAME_LENGTH, NAME_PATTERN, LearnerPlatformSpec

#: What the API server keeps at the top level of a custom resource; anything else is an unknown field.
_TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status"}
#: A namespace is a DNS-1123 label.
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class InvalidSpec(ValueError):
    """The spec cannot be served; the message says which field and why (it becomes a condition)."""


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in ("spec", *error["loc"]))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field (check its spelling and the CRD version)"
    return f"{where}: {message}"


@functools.cache
def _spec_schema() -> dict[str, Any]:
    from learner_operator.models.crd import openapi_schema  # the CRD is generated from this package's models

    schema: dict[str, Any] = openapi_schema()["properties"]["spec"]
    return schema


def as_stored(schema: dict[str, Any], value: Any, *, prune_unknown: bool) -> Any:
    """``value`` as the API server stores it under ``schema``: a ``null`` for a field that is not nullable
    is dropped (its default, if any, applies), and with ``prune_unknown`` fields the schema does not know
    are dropped (what the server does to a stored object; ``kubectl apply`` refuses them first, by its
    default strict field validation). A copy; lists and their null items are kept as they are."""
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties") if props is None else None
        out: dict[Any, Any] = {}
        for key, item in value.items():
            sub = props.get(key) if props is not None else extra if isinstance(extra, dict) else None
            if sub is None:
                if not prune_unknown or (props is None and extra is None):
                    out[key] = item
                continue
            if item is None and not sub.get("nullable"):
                continue
            out[key] = as_stored(sub, item, prune_unknown=prune_unknown)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [as_stored(schema["items"], item, prune_unknown=prune_unknown) for item in value]
    return value


#: Go's encoding/json writes a whole float64 below 2^63 in magnitude as an integer literal ("2", not "2.0"),
#: and the API server decodes an integer literal as an int64.
_GO_WHOLE = 2.0**63


def as_sent(value: Any) -> Any:
    """``value`` as kubectl (or helm) sends it: a whole-number float is an integer on the wire.

    ``cpu: 2.0`` in YAML is a float; kubectl's YAML-to-JSON (sigs.k8s.io/yaml, then Go's encoding/json)
    writes it as ``2``, which the API server stores as the integer 2 (the Kubernetes CEL library's own
    comment says as much), so the CRD admits it where ``cpu: 2`` is admitted. A fraction (``0.5``) stays a
    float and is refused by both. A copy; everything else is kept as it is."""
    if isinstance(value, float) and value.is_integer() and -_GO_WHOLE <= value < _GO_WHOLE:
        return int(value)
    if isinstance(value, dict):
        return {key: as_sent(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_sent(item) for item in value]
    return value


def parse_spec(raw: Any, *, strict: bool = False) -> LearnerPlatformSpec:
    """The spec as the API server stores it, typed. ``strict`` is admission's view (render): types as JSON
    has them ("3" is not an integer, "true" not a boolean) and unknown fields refused, as by kubectl's
    default field validation. Not strict is the operator's view of a stored object: unknown fields were
    pruned by the server (or by an older CRD), so they are ignored. Either way a ``null`` the server
    would drop counts as absent, and a whole-number float is the integer kubectl sends for it (``cpu: 2.0``
    is ``cpu: 2``). Raises InvalidSpec, and nothing else, whatever ``raw`` is."""
    if not isinstance(raw, dict):
        raise InvalidSpec("spec is missing or is not an object")
    try:
        stored = as_stored(_spec_schema(), as_sent(raw), prune_unknown=not strict)
        return LearnerPlatformSpec.model_validate(stored, strict=strict)
    except ValidationError as exc:
        raise InvalidSpec("; ".join(_describe(error) for error in exc.errors())) from None
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:  # the net: never a traceback
        raise InvalidSpec(f"spec: cannot be read: {type(exc).__name__}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class ParsedPlatform:
    """A whole LearnerPlatform object as admission sees it: identity and the typed spec."""

    name: str
    namespace: str | None
    uid: str | None
    spec: LearnerPlatformSpec


def _kind_of(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__)


def parse_object(doc: Any) -> ParsedPlatform:
    """Check a LearnerPlatform as the API server would at admission (kind, unknown fields, the name rules
    of the CRD, the spec's schema and rules, strictly typed), before anything is built from it.

    The name rules are the CRD's root CEL rules (models/crd.py): the children's names are derived from it.
    """
    if not isinstance(doc, dict):
        raise InvalidSpec(f"expected a LearnerPlatform object (a mapping), got {_kind_of(doc)}")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise InvalidSpec(f"expected apiVersion {API_VERSION} and kind {KIND}, got "
                          f"{doc.get('apiVersion')}/{doc.get('kind')}")
    if unknown := sorted(str(key) for key in doc if key not in _TOP_LEVEL):
        raise InvalidSpec(f'{unknown[0]}: unknown field "{unknown[0]}"')
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise InvalidSpec("metadata: Required value: a LearnerPlatform needs metadata.name")
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name:
        raise InvalidSpec("metadata.name: Required value: the LearnerPlatform's name (a string)")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidSpec(f"metadata.name: must be at most {MAX_NAME_LENGTH} characters ({name!r} has "
                          f"{len(name)}): child names such as <name>-learner-api must stay valid DNS labels")
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidSpec(f"metadata.name: {name!r} must start with a letter and hold only lowercase letters, "
                          "digits and '-' (it names Services)")
    if namespace is not None and (not isinstance(namespace, str) or len(namespace) > 63
                                  or not _NAMESPACE.fullmatch(namespace)):
        raise InvalidSpec(f"metadata.namespace: {namespace!r} is not a namespace name (lowercase letters, "
                          "digits and '-', at most 63)")
    uid = meta.get("uid")
    return ParsedPlatform(name, namespace, str(uid) if uid else None, parse_spec(doc.get("spec"), strict=True))
