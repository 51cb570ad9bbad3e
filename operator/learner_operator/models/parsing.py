"""Turning a raw ``spec`` into the typed model, with errors a person can act on."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from learner_operator.models.v1alpha1 import LearnerPlatformSpec


class InvalidSpec(ValueError):
    """The spec cannot be served; the message says which field and why (it becomes a condition)."""


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in ("spec", *error["loc"]))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field (check its spelling and the CRD version)"
    return f"{where}: {message}"


def parse_spec(raw: Any) -> LearnerPlatformSpec:
    if not isinstance(raw, dict):
        raise InvalidSpec("spec is missing or is not an object")
    try:
        return LearnerPlatformSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidSpec("; ".join(_describe(error) for error in exc.errors())) from None
