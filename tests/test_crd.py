"""The CRD is generated from the models, and admits exactly the examples meant to be admitted.

Admission goes through the `cluster` fixture's ``put``: the emulator's (tests/crd_schema.py) or, on
a real control plane, the API server's own.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kmock
import pytest

from learner_operator import yamlio
from learner_operator.models import InvalidSpec, parse_spec
from learner_operator.models.crd import custom_resource_definition
from tests.conftest import CRD_FILE, EXAMPLES, load
from tests.crd_schema import admit
from tests.operator_harness import NS, AnyCluster

VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def _marker(path: Path, name: str) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# {name}: "), f"{path.name} must start with '# {name}: <text>'"
    return first.removeprefix(f"# {name}: ")


def test_committed_crd_is_the_generated_one() -> None:
    generated = yamlio.dump(custom_resource_definition())
    assert CRD_FILE.read_text() == generated, "run `learner-operator crd -o crds/learnerplatforms.learner.dev.yaml`"


def test_crd_is_structural(crd: dict[str, Any]) -> None:
    """Every schema node has a type (or is int-or-string); no $ref; no additionalProperties beside properties."""
    def walk(node: dict[str, Any], path: str) -> None:
        assert "$ref" not in node, path
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    version = crd["spec"]["versions"][0]
    walk(version["schema"]["openAPIV3Schema"], "")
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == ["lp"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Reason", "API", "Image", "Schema", "Step", "Canary", "Verdict", "Age"]


def admissible(path: Path) -> dict[str, Any]:
    """An example as the test namespace's: admission does not depend on the namespace, which must exist."""
    doc = load(path)
    doc["metadata"]["namespace"] = NS
    return doc


def same_quotes(text: str) -> str:
    """The API server quotes values with double quotes; the expectations may use either."""
    return text.replace("'", '"')


def test_the_crd_itself_is_accepted(cluster: AnyCluster, crd: dict[str, Any]) -> None:
    """As the API server checks a new CRD: structural schema, every default against the schema and its rules."""
    cluster.create_crd(crd)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_examples_are_admitted_and_parse(cluster: AnyCluster, path: Path) -> None:
    stored = cluster.put(admissible(path))
    parse_spec(stored["spec"])


def test_defaults_are_the_seeds(cluster: AnyCluster) -> None:
    spec = cluster.put(admissible(EXAMPLES / "01-minimal.yaml"))["spec"]
    assert spec["learnerApi"]["autoscaling"] == {
        "enabled": True, "minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70,
    }
    assert spec["learnerApi"]["replicas"] == 2
    assert spec["learnerApi"]["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"},
    }
    assert spec["secretRef"] == {"name": "ai-platform-secrets"}
    assert (spec["tenantMode"], spec["environment"]) == ("enabled", "production")
    # The API server's defaults and the model's defaults are the same thing.
    assert parse_spec(spec) == parse_spec(load(EXAMPLES / "01-minimal.yaml")["spec"])


REFUSED = [p for p in INVALID if p.read_text().startswith("# expect: ")]


@pytest.mark.parametrize("path", REFUSED, ids=lambda p: p.name)
def test_invalid_examples_are_refused_for_the_intended_rule(cluster: AnyCluster, path: Path) -> None:
    with pytest.raises(kmock.KubernetesError) as refused:
        cluster.put(admissible(path))
    expected = _marker(path, "expect")
    # An unknown field is refused while decoding (400, `kubectl apply`'s strict field validation), before the
    # schema's rules are checked at admission (422).
    assert refused.value.status == (400 if expected.startswith("unknown field") else 422)
    assert same_quotes(expected) in same_quotes(str(refused.value.message))
    assert cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, load(path)["metadata"]["name"]) is None


@pytest.mark.parametrize("path", REFUSED, ids=lambda p: p.name)
def test_each_invalid_example_breaks_exactly_one_rule(crd: dict[str, Any], path: Path) -> None:
    """So that each file shows its rule alone (checked with the emulator's admission: no server needed)."""
    _, errors = admit(crd, load(path))
    assert len(errors) == 1, errors


def test_status_conditions_survive_pruning(crd: dict[str, Any]) -> None:
    """Conditions are fully described, so a structural API server keeps every field of them."""
    conditions = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "conditions"]
    fields = set(conditions["items"]["properties"])
    assert fields == {"type", "status", "observedGeneration", "lastTransitionTime", "reason", "message"}
    assert conditions["x-kubernetes-list-type"] == "map"


def test_models_refuse_what_the_crd_refuses(crd: dict[str, Any]) -> None:
    """A spec that slipped past an old CRD still cannot crash the operator: the model refuses it too."""
    for path in INVALID:
        doc = load(path)
        if doc["metadata"]["name"] != "ai-platform":
            continue  # the name rule lives on the object, not the spec
        if path.name == "unknown-field.yaml":
            parse_spec(copy.deepcopy(doc["spec"]))  # the operator reads what the server stores: pruned
            with pytest.raises(InvalidSpec):
                parse_spec(copy.deepcopy(doc["spec"]), strict=True)  # render: as kubectl's strict validation
            continue
        with pytest.raises(InvalidSpec):
            parse_spec(copy.deepcopy(doc["spec"]))
