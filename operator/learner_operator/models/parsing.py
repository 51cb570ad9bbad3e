"""Turning a raw ``spec`` (or a whole LearnerPlatform object) into the typed model, with errors a person
can act on."""

from __future__ import annotations

import dataclasses
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


def parse_spec(raw: Any, *, strict: bool = False) -> LearnerPlatformSpec:
    """``strict`` refuses what JSON types would refuse ("3" for an integer, "true" for a boolean), as the
    API server's schema check does; the operator parses leniently what the server already admitted."""
    if not isinstance(raw, dict):
        raise InvalidSpec("spec is missing or is not an object")
    try:
        return LearnerPlatformSpec.model_validate(raw, strict=strict)
    except ValidationError as exc:
        raise InvalidSpec("; ".join(_describe(error) for error in exc.errors())) from None


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
    if not re.match(NAME_PATTERN, name):
        raise InvalidSpec(f"metadata.name: {name!r} must start with a letter and hold only lowercase letters, "
                          "digits and '-' (it names Services)")
    if namespace is not None and (not isinstance(namespace, str) or len(namespace) > 63
                                  or not _NAMESPACE.match(namespace)):
        raise InvalidSpec(f"metadata.namespace: {namespace!r} is not a namespace name (lowercase letters, "
                          "digits and '-', at most 63)")
    uid = meta.get("uid")
    return ParsedPlatform(name, namespace, str(uid) if uid else None, parse_spec(doc.get("spec"), strict=True))
