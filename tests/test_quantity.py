"""Quantities as the API server parses them (models/quantity.py, a port of resource.ParseQuantity), and what
render makes of the specs issue 18 found crashing or disagreeing with admission."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from learner_operator import cli, yamlio
from learner_operator.models.quantity import MAX_ALLOWED, QuantityError, parse, parse_quantity
from tests.conftest import EXAMPLES, load
from tests.crd_schema import admit


@pytest.mark.parametrize(("text", "value", "fmt"), [
    ("0", "0", "DecimalSI"),
    ("100m", "0.1", "DecimalSI"),
    ("256Mi", str(256 * 2**20), "BinarySI"),
    ("2Ei", str(2**61), "BinarySI"),  # the value that crashed render with decimal.InvalidOperation
    ("0.5Ki", "512", "BinarySI"),
    ("0.1Ki", "102.4", "BinarySI"),
    ("1e3", "1000", "DecimalExponent"),
    ("1E-3", "0.001", "DecimalExponent"),
    (".5", "0.5", "DecimalSI"),
    ("1.", "1", "DecimalSI"),
    ("+1.5k", "1500", "DecimalSI"),
    ("-50857.", "-50857", "DecimalSI"),
    ("3n", "0.000000003", "DecimalSI"),
    ("7e-12", "0.000000001", "DecimalExponent"),  # rounded up to 1n, never to zero
    ("1.0000000001", "1.000000001", "DecimalSI"),
    ("12345678901234567890e-20", "0.12345679", "DecimalExponent"),
    ("123456789012345678901234567890", str(MAX_ALLOWED), "DecimalSI"),  # capped at 2^63-1
    ("9Ei", str(MAX_ALLOWED), "BinarySI"),
    ("1e100", "1e100", "DecimalExponent"),  # the int64 fast path keeps it exactly, uncapped
])
def test_values_are_the_api_servers(text: str, value: str, fmt: str) -> None:
    parsed = parse(text)
    assert parsed.value == Decimal(value)
    assert parsed.format == fmt
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", "lots", "1e1.5", ".", "+", "1 ", " 1", "1\n", "1mi", "1Ki2", "0x10", "e3"])
def test_what_the_api_server_refuses_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(QuantityError) as refused:
        parse_quantity(text)
    assert "\n" not in str(refused.value)


def _platform(**learner_api: Any) -> dict[str, Any]:
    doc = copy.deepcopy(load(EXAMPLES / "01-minimal.yaml"))
    doc["spec"]["learnerApi"] = learner_api
    return doc


def _resources(requests: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    return {"resources": {"requests": {"cpu": "100m", "memory": "256Mi", **requests},
                          "limits": {"cpu": "500m", "memory": "512Mi", **limits}}}


CASES = [
    ("2Ei-cpu", _platform(**_resources({"cpu": "2Ei"}, {"cpu": "2Ei"})), True),
    ("2Ei-above-limit", _platform(**_resources({"cpu": "2Ei"}, {})), False),
    ("negative-cpu", _platform(**_resources({}, {"cpu": -22650})), False),
    ("negative-memory", _platform(**_resources({}, {"memory": "-50857."})), False),
    ("exponent-not-integer", _platform(**_resources({"cpu": "1e1.5"}, {})), False),
    ("above-2^63", _platform(**_resources({}, {"memory": "1e100"})), False),
    ("null-autoscaling", _platform(autoscaling=None), True),
]


def _case(name: str, admitted: bool, **spec: Any) -> tuple[str, dict[str, Any], bool]:
    doc = copy.deepcopy(load(EXAMPLES / "01-minimal.yaml"))
    doc["spec"].update(spec)
    return name, doc, admitted


CASES += [
    _case("null-evaluator-enabled", True, evaluator={"enabled": None}),
    _case("null-image-digest", True, image={"tag": "abc", "digest": None}),
    _case("port-negative", False, networkPolicy={"egressPorts": [-106]}),
    _case("port-huge", False, networkPolicy={"egressPorts": [7679232989171921526]}),
    _case("port-null-item", False, networkPolicy={"egressPorts": [None]}),
    _case("pushgateway-nothing-to-push-to", False,
          observability={"pushgateway": {"enabled": True, "url": "", "image": ""}}),
    _case("alert-rule-twice", False,
          evaluator={"alertRules": [{"alert": "Lag", "signal": "ingest_lag_seconds", "above": 60}] * 2}),
]


@pytest.mark.parametrize(("name", "doc", "admitted"), CASES, ids=[c[0] for c in CASES])
def test_render_and_admission_agree_on_what_once_crashed_or_disagreed(
        name: str, doc: dict[str, Any], admitted: bool, crd: dict[str, Any], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, refusals = admit(crd, doc)
    assert (not refusals) == admitted, refusals
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = cli.main(["render", "-f", str(path)])
    out, err = capsys.readouterr()
    if admitted:
        assert code == 0, err
        assert yamlio.load_all(out)
    else:
        assert code == 2
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
