"""One truth for a valid LearnerPlatform, checked on generated specs (issue 18).

For every spec generated from the CRD's own schema or mutated from examples/ (tests/spec_strategies.py):
admission and ``learner-operator render`` give the same verdict, render never raises anything but
InvalidSpec, the operator reads an admitted object without InvalidSpec, and an admitted spec's children
pass kubernetes-validate --strict for the Kubernetes versions the chart supports.

Admission is the emulator's (schema, defaults, nulls, CEL with the quantity library) or, with
KUBEBUILDER_ASSETS, the real API server's (a dry-run create). A fixed seed and a bounded count keep this
to seconds; ``python -m bench.spec_property --examples 5000`` runs the same check for longer.
"""

from __future__ import annotations

import collections
from typing import Any

import kmock
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from learner_operator import yamlio
from tests.spec_strategies import platforms
from tests.spec_verdicts import Judge, Verdict, emulator_judge, judge_one

SEED = 1818
EXAMPLES = 200


def _judge(request: pytest.FixtureRequest, crd: dict[str, Any]) -> Judge:
    from tests.conftest import _BINARIES

    if request.config.stash[_BINARIES] is None:
        return emulator_judge(crd)
    from tests.real_cluster import RealCluster

    real = RealCluster(request.getfixturevalue("control_plane"))
    real.reset()

    def judge(doc: dict[str, Any]) -> tuple[bool, Any]:
        try:
            return True, real.dry_run_create(doc)
        except kmock.KubernetesError as exc:
            if exc.status not in (400, 422):
                raise
            return False, str(exc)
    return judge


@pytest.mark.filterwarnings("ignore:The recursion limit")
def test_admission_and_render_agree_on_generated_specs(request: pytest.FixtureRequest,
                                                        crd: dict[str, Any]) -> None:
    judge = _judge(request, crd)
    verdicts: list[Verdict] = []

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(platforms(crd))
    def check(doc: dict[str, Any]) -> None:
        verdicts.append(judge_one(doc, judge))

    check()
    kinds = collections.Counter(v.kind for v in verdicts)
    failures = [v for v in verdicts if v.failed]
    assert not failures, f"{len(failures)} of {len(verdicts)}: {kinds}\n" + "\n---\n".join(
        f"{v.kind}: {v.detail}" for v in failures[:5])
    # The generator must exercise both verdicts, or the agreement says nothing.
    assert kinds["admitted"] >= EXAMPLES // 10, kinds
    assert kinds["refused"] >= EXAMPLES // 10, kinds


@pytest.mark.parametrize(("resources", "expected"), [
    ("{requests: {cpu: 2.0, memory: 256Mi}, limits: {cpu: 4.0, memory: 512Mi}}", "admitted"),
    ("{requests: {cpu: 1, memory: 256Mi}, limits: {cpu: 2.0, memory: 1073741824.0}}", "admitted"),
    ("{requests: {cpu: 0.5, memory: 256Mi}, limits: {cpu: 1, memory: 512Mi}}", "refused"),
    ("{requests: {cpu: 3.0, memory: 256Mi}, limits: {cpu: 2, memory: 512Mi}}", "refused"),
], ids=["whole-floats", "whole-float-limits", "fraction", "whole-float-above-limit"])
def test_yaml_floats_get_the_verdict_of_what_kubectl_sends(request: pytest.FixtureRequest, crd: dict[str, Any],
                                                           resources: str, expected: str) -> None:
    """``cpu: 2.0`` is a YAML float; kubectl sends it as 2, which the CRD admits, so render must print it."""
    doc = yamlio.load_all(f"""
apiVersion: learner.dev/v1alpha1
kind: LearnerPlatform
metadata: {{name: ai-platform, namespace: learning}}
spec:
  image: {{tag: v1}}
  learnerApi:
    replicas: 3.0
    autoscaling: {{enabled: false}}
    resources: {resources}
""")[0]
    verdict = judge_one(doc, _judge(request, crd))
    assert verdict.kind == expected, verdict.detail
