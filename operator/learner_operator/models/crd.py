"""Generate the LearnerPlatform CustomResourceDefinition from the pydantic models.

Kubernetes wants a *structural* schema: every node typed, no ``$ref``, ``additionalProperties`` only
as a map's value schema. pydantic's JSON schema is turned into one here, so that the models stay the
one source of truth and ``crds/learnerplatforms.learner.dev.yaml`` is only ever generated.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from learner_operator.models import v1alpha1 as api

_DROP = {"title"}

#: Whole-object rules that need ``metadata``; CEL may read metadata.name at the root.
_ROOT_RULES = [
    {
        "rule": f"size(self.metadata.name) <= {api.MAX_NAME_LENGTH}",
        "message": f"metadata.name must be at most {api.MAX_NAME_LENGTH} characters: child names such as "
        "<name>-learner-api must stay valid DNS labels",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": f"self.metadata.name.matches('{api.NAME_PATTERN}')",
        "message": "metadata.name must start with a letter and hold only lowercase letters, digits and '-' "
        "(it names Services)",
        "reason": "FieldValueInvalid",
    },
]

_PRINTER_COLUMNS = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "API", "type": "string", "jsonPath": ".status.learnerApi.ready",
     "description": "learner-api pods ready / desired"},
    {"name": "Image", "type": "string", "jsonPath": ".spec.image.tag"},
    {"name": "Schema", "type": "string", "jsonPath": ".status.schemaVersion",
     "description": "the database schema version the last migration left"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.rollout.step",
     "description": "the canary rollout's step (0: none under way)"},
    {"name": "Canary", "type": "string", "jsonPath": ".status.rollout.canaryWeight",
     "description": "share of learner-api pods on the canary, %"},
    {"name": "Verdict", "type": "string", "jsonPath": ".status.rollout.verdict",
     "description": "the canary analysis' last verdict"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline references and drop what structural schemas forbid, recursively."""
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _structural({**target, **extra}, defs)
    if node.get("x-kubernetes-int-or-string"):
        # anyOf kept, as controller-gen does
        return {k: v for k, v in node.items() if k not in _DROP and k != "additionalProperties"}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key == "additionalProperties":
            if isinstance(value, dict):  # a map's value schema stays; `false` (extra="forbid") is not structural
                out[key] = _structural(value, defs)
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    return out


def _factory_defaults(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Write the defaults that pydantic leaves out of its schema: those made by a default_factory.

    An object's default is its *complete* value, never ``{}``: the API server checks every default
    against the schema and the CEL rules of its subtree as written, without applying the nested
    defaults first, so ``default: {}`` on an object whose rule reads ``self.minReplicas`` makes the
    whole CRD invalid ("no such key: minReplicas evaluating rule: ..."). At admission, nested
    defaults still fill what a user's partial object leaves out.
    """
    for name, field in model.model_fields.items():
        prop = schema["properties"][field.alias or name]
        sub = field.annotation if isinstance(field.annotation, type) else None
        if sub is not None and issubclass(sub, BaseModel):
            _factory_defaults(prop, sub)
        if field.default_factory is None:
            continue
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            prop["default"] = value.model_dump(by_alias=True, mode="json")
        elif value:
            prop["default"] = [v.model_dump(by_alias=True, mode="json") if isinstance(v, BaseModel) else v
                               for v in value] if isinstance(value, list) else value


def openapi_schema() -> dict[str, Any]:
    spec = api.LearnerPlatformSpec.model_json_schema(by_alias=True, mode="validation")
    status = api.LearnerPlatformStatus.model_json_schema(by_alias=True, mode="validation")
    spec_schema = _structural(spec, spec.pop("$defs", {}))
    _factory_defaults(spec_schema, api.LearnerPlatformSpec)
    spec_schema["description"] = "What the platform team wants running."
    status_schema = _structural(status, status.pop("$defs", {}))
    status_schema["description"] = "What the operator observed; written by the operator only."
    status_schema.pop("required", None)
    return {
        "type": "object",
        "description": "A learner platform: the learner-api, its autoscaler and the evaluator worker.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": _ROOT_RULES,
    }


def custom_resource_definition() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "learner-platform", "app.kubernetes.io/part-of": "learner-platform"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "listKind": f"{api.KIND}List",
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["learner"],
            },
            "versions": [{
                "name": api.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": openapi_schema()},
            }],
        },
    }
