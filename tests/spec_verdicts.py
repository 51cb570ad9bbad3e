"""One LearnerPlatform judged three ways: admission (the emulator's, or a real API server's dry run), render,
and, when admitted, the children render prints (kubernetes-validate --strict) and the operator's reading of
the stored object. Shared by tests/test_spec_property.py and bench/spec_property.py."""

from __future__ import annotations

import dataclasses
import functools
import json
import traceback
from collections.abc import Callable
from typing import Any

import kubernetes_validate

from learner_operator import cli
from learner_operator.models import InvalidSpec, parse_spec
from tests.crd_schema import admit

#: The oldest Kubernetes the chart supports (kubeVersion, the CEL quantity library) and the newest
#: kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
#: Kinds without an official schema (add-ons): checked by their own tests.
_ADD_ON_GROUPS = ("monitoring.coreos.com/", "keda.sh/")

#: (admitted, the object as stored or the refusal)
Judge = Callable[[dict[str, Any]], tuple[bool, Any]]


@dataclasses.dataclass(frozen=True)
class Verdict:
    kind: str  # "admitted", "refused", or a failure: "disagreement", "traceback", "invalid-child"
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind not in ("admitted", "refused")


def emulator_judge(crd: dict[str, Any]) -> Judge:
    def judge(doc: dict[str, Any]) -> tuple[bool, Any]:
        stored, errors = admit(crd, doc)
        return (False, "; ".join(errors)) if errors else (True, stored)
    return judge


@functools.lru_cache(maxsize=8192)
def _validate(manifest: str, version: str) -> str | None:
    try:
        kubernetes_validate.validate(json.loads(manifest), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return None


def _go_number(text: str) -> int | float:
    """A JSON number as it reaches the API server from kubectl: Go's encoding/json writes a whole float64
    below 1e21 in magnitude as an integer literal, which the server decodes as an int64 when it fits one."""
    value = float(text)
    if value.is_integer() and abs(value) < 1e21 and -(2**63) <= int(value) < 2**63:
        return int(value)
    return value


def kubectl_sends(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (a YAML file's document) as ``kubectl apply -f`` puts it on the wire: ``cpu: 2.0`` arrives as 2."""
    sent: dict[str, Any] = json.loads(json.dumps(doc), parse_float=_go_number)
    return sent


def judge_one(doc: dict[str, Any], judge: Judge) -> Verdict:
    """Admission judges what kubectl sends for the document; render reads the document itself."""
    admitted, stored = judge(kubectl_sends(doc))
    try:
        manifests = cli.render([doc], None)
        rendered, why = True, ""
    except InvalidSpec as exc:
        manifests, rendered, why = [], False, str(exc)
    except Exception:
        return Verdict("traceback", traceback.format_exc(limit=-4))
    if admitted != rendered:
        said = f"admission: {'admitted' if admitted else stored}; render: {'printed' if rendered else why}"
        return Verdict("disagreement", f"{said}\nspec: {json.dumps(doc.get('spec'), default=str)[:2000]}")
    if not admitted:
        return Verdict("refused")
    try:
        parse_spec(stored["spec"])  # the operator's view of the stored object
    except InvalidSpec as exc:
        return Verdict("disagreement", f"admitted, but the operator reports InvalidSpec: {exc}")
    for manifest in manifests:
        if manifest["apiVersion"].startswith(_ADD_ON_GROUPS):
            continue
        for version in K8S_VERSIONS:
            if error := _validate(json.dumps(manifest, sort_keys=True), version):
                return Verdict("invalid-child", f"{manifest['kind']} {version}: {error}")
    return Verdict("admitted")
