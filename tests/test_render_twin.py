"""`learner-operator render` is admission's twin: what the API server refuses, render refuses, and what
it admits, render prints (unless the operator itself would report InvalidSpec, which render says too)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from learner_operator import cli, yamlio
from tests.conftest import EXAMPLES, load
from tests.crd_schema import admit

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml")) + sorted((EXAMPLES / "invalid").glob("*.yaml"))


def _variant(name: str, edit: Any) -> tuple[str, dict[str, Any]]:
    doc = copy.deepcopy(load(EXAMPLES / "01-minimal.yaml"))
    edit(doc)
    return name, doc


#: Beyond the examples: what a person writes by hand and the API server refuses (or admits).
VARIANTS = [
    _variant("name-47-characters", lambda d: d["metadata"].update(name="a" * 47)),
    _variant("name-40-characters", lambda d: d["metadata"].update(name="a" * 40)),
    _variant("name-AI_Platform", lambda d: d["metadata"].update(name="AI_Platform")),
    _variant("replicas-as-a-string", lambda d: d["spec"].update(learnerApi={"replicas": "3",
                                                                            "autoscaling": {"enabled": False}})),
    _variant("enabled-as-a-string", lambda d: d["spec"].update(evaluator={"enabled": "true"})),
    _variant("all-digit-tag-unquoted", lambda d: d["spec"].update(image={"tag": 1234567})),
    _variant("all-digit-tag-quoted", lambda d: d["spec"].update(image={"tag": "1234567"})),
    _variant("unknown-top-level-field", lambda d: d.update(specs={})),
    _variant("digest-pinned", lambda d: d["spec"]["image"].update(digest="sha256:" + "ab" * 32)),
    _variant("digest-malformed", lambda d: d["spec"]["image"].update(digest="sha256:xyz")),
    _variant("environment-capitalised", lambda d: d["spec"].update(environment="Production")),
]


def _render(tmp_path: Path, doc: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = cli.main(["render", "-f", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def _check_twin(crd: dict[str, Any], doc: dict[str, Any], code: int, out: str, err: str,
                condition: str | None) -> None:
    _, refusals = admit(crd, doc)
    if refusals:
        assert code == 2, f"the API server refuses it ({refusals}) but render printed it"
        assert out == ""
    elif condition is not None:
        assert code == 2, "the operator reports InvalidSpec for it, so render must refuse it too"
        assert condition in err
    else:
        assert code == 0, f"the API server admits it, but render said: {err}"
        assert yamlio.load_all(out)
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_gets_the_same_verdict_from_render_and_admission(
        path: Path, crd: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["render", "-f", str(path)])
    out, err = capsys.readouterr()
    first = path.read_text().splitlines()[0]
    condition = first.removeprefix("# condition: InvalidSpec: ") if first.startswith("# condition:") else None
    _check_twin(crd, load(path), code, out, err, condition)


@pytest.mark.parametrize(("name", "doc"), VARIANTS, ids=[name for name, _ in VARIANTS])
def test_hand_written_variants_get_the_same_verdict(name: str, doc: dict[str, Any], crd: dict[str, Any],
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _render(tmp_path, doc, capsys)
    _check_twin(crd, doc, code, out, err, None)


def test_the_refusals_name_the_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    verdicts = {name: _render(tmp_path, doc, capsys)[2] for name, doc in VARIANTS}
    assert "metadata.name: must be at most 40 characters" in verdicts["name-47-characters"]
    assert "'AI_Platform' must start with a letter" in verdicts["name-AI_Platform"]
    assert "spec.learnerApi.replicas" in verdicts["replicas-as-a-string"]
    assert "spec.image.tag" in verdicts["all-digit-tag-unquoted"]
    assert 'specs: unknown field "specs"' in verdicts["unknown-top-level-field"]


def test_a_missing_namespace_is_defaulted_with_a_notice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = load(EXAMPLES / "01-minimal.yaml")
    del doc["metadata"]["namespace"]
    code, out, err = _render(tmp_path, doc, capsys)
    assert code == 0
    assert {m["metadata"]["namespace"] for m in yamlio.load_all(out)} == {"default"}
    assert "notice:" in err
    assert "pass -n NAMESPACE" in err
    assert cli.main(["render", "-f", str(tmp_path / "platform.yaml"), "-n", "learning"]) == 0
    out, err = capsys.readouterr()
    assert {m["metadata"]["namespace"] for m in yamlio.load_all(out)} == {"learning"}
    assert err == ""
    # an object's own namespace that -n contradicts is refused, as kubectl apply refuses it
    assert cli.main(["render", "-f", str(EXAMPLES / "01-minimal.yaml"), "-n", "other"]) == 2
    assert "is not -n 'other'" in capsys.readouterr().err


def test_an_env_file_without_the_needed_keys_is_warned_about(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    env = tmp_path / ".env.production"
    env.write_text("# filled in from .env.example\nDATABASE_URL=postgresql://a:b@c/d\nREDIS_URL=\nJWT_SECRET=\n"
                   "PAYMENT_WEBHOOK_SECRET=\n")
    assert cli.main(["render", "-f", str(EXAMPLES / "01-minimal.yaml"), "--secret-env-file", str(env)]) == 0
    out, err = capsys.readouterr()
    assert out
    assert err.startswith(f"warning: {env} lacks REDIS_URL (for learner-api, evaluator); "
                          "JWT_SECRET or JWT_PUBLIC_KEY (for learner-api): ")
    assert "SecretKeysMissing" in err
    assert "postgresql://" not in err
    env.write_text("DATABASE_URL=postgresql://a:b@c/d\nREDIS_URL=redis://e\nJWT_SECRET=k\nALERTMANAGER_URL=\n")
    assert cli.main(["render", "-f", str(EXAMPLES / "01-minimal.yaml"), "--secret-env-file", str(env)]) == 0
    assert capsys.readouterr().err == ""
