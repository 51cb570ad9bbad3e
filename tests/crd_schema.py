"""What the API server does with a CRD, and with a custom resource at admission.

For a custom resource (:func:`admit`): structural defaulting, then validation: types, required, enum,
bounds, lengths, patterns, a map's size and values, unknown fields (refused as with kubectl's default
``--validate=strict``), and the CEL rules in ``x-kubernetes-validations`` evaluated with cel-python
(``self`` bound to the node, after defaulting, as on a real server).

For the CRD itself (:func:`validate_crd`), what kube-apiserver checks when a CRD is created or
updated: a structural schema (every node typed, no ``$ref``, ``properties`` and
``additionalProperties`` never together), CEL rules that compile, list-map keys that are required or
defaulted, and every ``default`` pruned and valid against its schema *and the CEL rules of its
subtree*, as it is written: the server does not apply nested defaults to a default before checking
it, so ``default: {}`` on an object whose rule reads ``self.minReplicas`` is refused with "no such
key" (a real v1.36 server refused our first CRD for exactly that).

CEL functions: the standard ones and the Kubernetes quantity library (tests/cel_quantity.py: quantity(),
isQuantity(), compareTo()...), which the CRD's resource rules use. Not emulated: ``oldSelf`` transition
rules, cost budgets, the other Kubernetes libraries (url(), ...): the CRD uses none of them.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache, lru_cache
from typing import Any

import celpy
from celpy.evaluation import CELEvalError

from tests import cel_quantity


class CelRule:
    def __init__(self, rule: str) -> None:
        self.rule = rule
        env = celpy.Environment()
        self._program = env.program(env.compile(rule), functions=cel_quantity.FUNCTIONS)

    def check(self, value: Any) -> str | None:
        """None when the rule holds; else what the server says ("no such key: x" for a missing field)."""
        try:
            return None if self._program.evaluate({"self": celpy.json_to_cel(value)}) else "false"
        except CELEvalError as exc:
            missing = self._missing_key(value)
            return f"no such key: {missing}" if missing else f"evaluation error: {exc.args[0] if exc.args else exc}"

    def _missing_key(self, value: Any) -> str | None:
        """The first field a ``self.a.b`` chain of the rule reads that is absent (cel-python wraps it)."""
        for chain in re.findall(r"(?<!has\()self((?:\.[A-Za-z_]\w*)+)", self.rule):
            node = value
            for key in chain.strip(".").split("."):
                if not isinstance(node, dict):
                    break
                if key not in node:
                    return key
                node = node[key]
        return None

    def holds(self, value: Any) -> bool:
        return self.check(value) is None


@cache
def _rule(text: str) -> CelRule:
    return CelRule(text)


@lru_cache(maxsize=4096)
def _checked(rule: str, value: str) -> str | None:
    """A rule's verdict on a value (JSON): a pure function, remembered, since cel-python takes milliseconds
    where the API server's CEL takes microseconds, and tests admit the same specs again and again."""
    return _rule(rule).check(json.loads(value))


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: fill absent properties that have a default, descending into present objects.

    A ``null`` for a field that is not ``nullable`` counts as absent (it is defaulted, or dropped), as
    the API server's PruneNonNullableNullsWithoutDefaults and Default do; a null list item stays (and
    fails its type)."""
    value = copy.deepcopy(value)
    _prune_nulls(schema, value)
    _default(schema, value)
    return value


def _prune_nulls(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties") if props is None else None
        for name in list(value):
            sub = props.get(name) if props is not None else extra if isinstance(extra, dict) else None
            if sub is None:
                continue
            if value[name] is None and not sub.get("nullable"):
                del value[name]
            else:
                _prune_nulls(sub, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _prune_nulls(schema["items"], item)


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


@cache
def _go_regex(pattern: str) -> re.Pattern[str]:
    """Go's regexp (RE2) as the API server runs a schema's pattern: ``$`` is the end of the text only (Python's
    also matches before a final newline)."""
    return re.compile(re.sub(r"(?<!\\)\$$", r"\\Z", pattern))


def _go_search(pattern: str, value: str) -> bool:
    return _go_regex(pattern).search(value) is not None


def _shown(value: Any) -> str:
    """A value as the API server's messages quote it (JSON)."""
    return json.dumps(value)


def validate(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Errors as the API server words them: ``<path>: <what is wrong>``; empty when valid."""
    where = path or "<root>"
    if (expected := _type_ok(schema, value)) is not None:
        return [f'{where}: Invalid value: "{type(value).__name__}": {where} in body must be of type {expected}: '
                f'{_shown(value)}']
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_shown(v) for v in schema["enum"])
        errors.append(f"{where}: Unsupported value: {_shown(value)}: supported values: {supported}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: Invalid value: {value}: {where} in body should be greater than or equal to "
                          f"{schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: Invalid value: {value}: {where} in body should be less than or equal to "
                          f"{schema['maximum']}")
    if isinstance(value, str):
        if "pattern" in schema and not _go_search(schema["pattern"], value):
            errors.append(f"{where}: Invalid value: {_shown(value)}: {where} in body should match "
                          f"'{schema['pattern']}'")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: Too long: may not be more than {schema['maxLength']} bytes")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: Invalid value: {_shown(value)}: {where} in body should be at least "
                          f"{schema['minLength']} chars long")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
        for index, item in enumerate(value):
            errors += validate(schema.get("items") or {}, item, f"{path}[{index}]")
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen: set[str] = set()
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    continue
                key = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
                if key in seen:
                    errors.append(f"{path}[{index}]: Duplicate value: {key}")
                seen.add(key)
    if isinstance(value, dict) and "properties" not in schema:  # a map: its size, and each value
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxProperties']} items")
        if isinstance(schema.get("additionalProperties"), dict):
            for name, sub in value.items():
                errors += validate(schema["additionalProperties"], sub, f"{path}.{name}" if path else str(name))
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path + '.' if path else ''}{name}: Required value")
        for name, sub in value.items():
            child = f"{path}.{name}" if path else name
            if name not in props:  # as with server-side field validation (kubectl's default, strict)
                errors.append(f'strict decoding error: unknown field "{child}"')
            else:
                errors += validate(props[name], sub, child)
    if not errors:  # CEL rules run on values that already passed the structural checks
        for rule in schema.get("x-kubernetes-validations") or []:
            failure = _checked(rule["rule"], json.dumps(value, sort_keys=True))
            if failure is None:
                continue
            message = rule.get("message") or rule["rule"]
            if failure != "false":  # the server names the evaluation error and the rule it stopped
                message = f"{failure} evaluating rule: {message}"
            errors.append(f"{where}: Invalid value: \"object\": {message}")
    return errors


def admit(crd: dict[str, Any], obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Default and validate ``obj`` as the API server would on create/update of the main resource."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    defaulted = apply_defaults(schema, obj)
    return defaulted, validate(schema, defaulted)


# -- the CRD itself -------------------------------------------------------------------------------

def validate_crd(crd: dict[str, Any]) -> list[str]:
    """What kube-apiserver refuses in a CustomResourceDefinition; empty when it would be created."""
    errors: list[str] = []
    spec = crd.get("spec") or {}
    for required in ("group", "names", "scope", "versions"):
        if not spec.get(required):
            errors.append(f"spec.{required}: Required value")
    names = spec.get("names") or {}
    if crd.get("metadata", {}).get("name") != f"{names.get('plural')}.{spec.get('group')}":
        errors.append("metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group")
    storage = [v for v in spec.get("versions") or [] if v.get("storage")]
    if len(storage) != 1:
        errors.append("spec.versions: Invalid value: must have exactly one version marked as storage version")
    for index, version in enumerate(spec.get("versions") or []):
        schema = ((version.get("schema") or {}).get("openAPIV3Schema"))
        if schema is None:
            errors.append(f"spec.versions[{index}].schema.openAPIV3Schema: Required value")
            continue
        _check_node(schema, "spec.validation.openAPIV3Schema", errors, root=True)
    return errors


def _check_node(node: dict[str, Any], path: str, errors: list[str], *, root: bool = False) -> None:
    if "$ref" in node:
        errors.append(f"{path}.$ref: Forbidden: $ref is not allowed")
    int_or_string = node.get("x-kubernetes-int-or-string")
    if not node.get("type") and not int_or_string and not node.get("x-kubernetes-preserve-unknown-fields"):
        errors.append(f"{path}.type: Required value: must not be empty for specified object fields")
    if int_or_string and node.get("type"):
        errors.append(f"{path}.type: Invalid value: must be empty to be structural with x-kubernetes-int-or-string")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}.additionalProperties: Forbidden: additionalProperties and properties are mutual "
                      "exclusive")
    if root and set(node.get("properties", {}).get("metadata", {})) - {"type", "properties", "description"}:
        errors.append(f"{path}.properties[metadata]: Forbidden: must not specify anything other than name and "
                      "generateName")
    for rule in node.get("x-kubernetes-validations") or []:
        try:
            _rule(rule["rule"])
        except Exception as exc:  # cel-python raises its own parser errors
            errors.append(f"{path}.x-kubernetes-validations: Invalid value: {rule['rule']!r}: compilation failed: "
                          f"{exc}")
    if node.get("x-kubernetes-list-type") == "map":
        item = node.get("items") or {}
        for key in node.get("x-kubernetes-list-map-keys") or []:
            sub = (item.get("properties") or {}).get(key)
            if sub is None or (key not in item.get("required", []) and "default" not in sub):
                errors.append(f"{path}.x-kubernetes-list-map-keys: Invalid value: {key!r}: must be a required "
                              "or defaulted property of the items")
    if "default" in node and not root:
        errors += [f"{path}.default: {error}" for error in _default_errors(node, node["default"])]
    for name, sub in (node.get("properties") or {}).items():
        _check_node(sub, f"{path}.properties[{name}]", errors)
    if isinstance(node.get("items"), dict):
        _check_node(node["items"], f"{path}.items", errors)
    if isinstance(node.get("additionalProperties"), dict):
        _check_node(node["additionalProperties"], f"{path}.additionalProperties", errors)


def unknown_fields(crd: dict[str, Any], obj: dict[str, Any], *, status: bool = False) -> list[str]:
    """The paths of the fields ``obj`` has that its CRD's schema does not, as the decoder names them
    (``spec.learnerApi.replica``): outside ``status``, or (``status``) only inside it."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    part = {"status": obj["status"]} if status and "status" in obj else {
        k: v for k, v in obj.items() if k != "status" and not status}
    return _unknown_fields(schema, part, "")


def prune(crd: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` less its unknown fields: what the API server stores without strict field validation."""
    return _pruned(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], obj)


def _pruned(schema: dict[str, Any], value: Any) -> Any:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is None:
            extra = schema.get("additionalProperties")
            return value if not isinstance(extra, dict) else {k: _pruned(extra, v) for k, v in value.items()}
        return {k: _pruned(props[k], v) for k, v in value.items() if k in props}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_pruned(schema["items"], v) for v in value]
    return value


def _default_errors(schema: dict[str, Any], default: Any) -> list[str]:
    """A default must be pruned already and valid as written (nested defaults are NOT applied to it)."""
    unknown = _unknown_fields(schema, default, "")
    if unknown:
        return [f"Invalid value: {default!r}: must not have unknown fields: {', '.join(unknown)}"]
    return [error.split(": ", 1)[1] if error.startswith("<root>: ") else error
            for error in validate(schema, default)]


def _unknown_fields(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is None:
            extra = schema.get("additionalProperties")
            return [] if not isinstance(extra, dict) else [
                u for k, v in value.items() for u in _unknown_fields(extra, v, f"{path}.{k}")]
        return [f"{path}.{k}".lstrip(".") for k in value if k not in props] + [
            u for k, v in value.items() if k in props for u in _unknown_fields(props[k], v, f"{path}.{k}")]
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [u for i, v in enumerate(value) for u in _unknown_fields(schema["items"], v, f"{path}[{i}]")]
    return []
