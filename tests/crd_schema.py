"""What the API server does with a custom resource at admission, for a CRD's openAPIV3Schema.

Structural defaulting, then validation: types, required, enum, bounds, lengths, patterns, unknown
fields (refused as with kubectl's default ``--validate=strict``), and the CEL rules in
``x-kubernetes-validations`` evaluated with cel-python (``self`` bound to the node, after
defaulting, as on a real server).

Not emulated: CEL ``oldSelf`` transition rules, cost budgets, the Kubernetes CEL extension
libraries (quantity(), url(), ...): the CRD uses none of them.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from typing import Any

import celpy


class CelRule:
    def __init__(self, rule: str) -> None:
        self.rule = rule
        env = celpy.Environment()
        self._program = env.program(env.compile(rule))

    def holds(self, value: Any) -> bool:
        return bool(self._program.evaluate({"self": celpy.json_to_cel(value)}))


@cache
def _rule(text: str) -> CelRule:
    return CelRule(text)


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: fill absent properties that have a default, descending into present objects."""
    value = copy.deepcopy(value)
    _default(schema, value)
    return value


def _default(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default(schema["items"], item)


def _type_ok(schema: dict[str, Any], value: Any) -> str | None:
    if schema.get("x-kubernetes-int-or-string"):
        return None if isinstance(value, (int, str)) and not isinstance(value, bool) else "integer or string"
    expected = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if expected is None or checks[expected](value):
        return None
    return str(expected)


def validate(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Errors as the API server words them: ``<path>: <what is wrong>``; empty when valid."""
    where = path or "<root>"
    if (expected := _type_ok(schema, value)) is not None:
        return [f"{where}: Invalid value: {value!r}: must be of type {expected}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: Unsupported value: {value!r}: supported values: {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: Invalid value: {value}: must be greater than or equal to {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: Invalid value: {value}: must be less than or equal to {schema['maximum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: Invalid value: {value!r}: should match '{schema['pattern']}'")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: Too long: may not be longer than {schema['maxLength']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: Invalid value: {value!r}: should be at least {schema['minLength']} chars long")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
        for index, item in enumerate(value):
            errors += validate(schema.get("items") or {}, item, f"{path}[{index}]")
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path + '.' if path else ''}{name}: Required value")
        for name, sub in value.items():
            child = f"{path}.{name}" if path else name
            if name not in props:
                errors.append(f'{child}: unknown field "{name}"')
            else:
                errors += validate(props[name], sub, child)
    if not errors:  # CEL rules run on values that already passed the structural checks
        for rule in schema.get("x-kubernetes-validations") or []:
            if not _rule(rule["rule"]).holds(value):
                errors.append(f"{where}: Invalid value: \"object\": {rule.get('message') or rule['rule']}")
    return errors


def admit(crd: dict[str, Any], obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Default and validate ``obj`` as the API server would on create/update of the main resource."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    defaulted = apply_defaults(schema, obj)
    return defaulted, validate(schema, defaulted)
