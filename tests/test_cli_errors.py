"""A user's mistake gets one readable line and exit code 2 from either CLI, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES

BIN = Path(sys.executable).parent
MINIMAL = str(EXAMPLES / "01-minimal.yaml")
#: Nothing listens there.
DEAD = "postgresql://nobody@127.0.0.1:1/learn"

FILES = {
    "invalid.yaml": "apiVersion: learner.dev/v1alpha1\nkind: LearnerPlatform\nspec: {image: {tag: abc}\n",
    "list.yaml": "- apiVersion: learner.dev/v1alpha1\n  kind: LearnerPlatform\n",
    "scalar.yaml": "just some words\n",
    "empty.yaml": "",
    "comments-only.yaml": "# nothing here\n---\n",
    "deployment.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
    "no-metadata.yaml": "apiVersion: learner.dev/v1alpha1\nkind: LearnerPlatform\nspec: {image: {tag: abc}}\n",
    "spec-a-list.yaml": "apiVersion: learner.dev/v1alpha1\nkind: LearnerPlatform\nmetadata: {name: a}\nspec: []\n",
    "bad-env": "export DATABASE_URL=postgresql://x\n",
    "deep.yaml": "apiVersion: learner.dev/v1alpha1\nkind: LearnerPlatform\nmetadata: {name: a}\nspec: "
                 + "[" * 5000 + "]" * 5000 + "\n",
    "2Ei.yaml": "apiVersion: learner.dev/v1alpha1\nkind: LearnerPlatform\nmetadata: {name: a}\nspec: {image: {tag: a},"
                " learnerApi: {resources: {requests: {cpu: 2Ei, memory: 1Ei}, limits: {cpu: 1, memory: 1Gi}}}}\n",
}

OPERATOR = [
    ("no command", []),
    ("unknown command", ["rendr"]),
    ("render without -f", ["render"]),
    ("invalid YAML", ["render", "-f", "{invalid.yaml}"]),
    ("a YAML list", ["render", "-f", "{list.yaml}"]),
    ("a YAML scalar", ["render", "-f", "{scalar.yaml}"]),
    ("an empty file", ["render", "-f", "{empty.yaml}"]),
    ("comments only", ["render", "-f", "{comments-only.yaml}"]),
    ("another kind", ["render", "-f", "{deployment.yaml}"]),
    ("no metadata", ["render", "-f", "{no-metadata.yaml}"]),
    ("spec is a list", ["render", "-f", "{spec-a-list.yaml}"]),
    ("nested too deeply", ["render", "-f", "{deep.yaml}"]),
    ("2Ei above the limit", ["render", "-f", "{2Ei.yaml}"]),
    ("a missing file", ["render", "-f", "{dir}/nope.yaml"]),
    ("a directory", ["render", "-f", "{dir}"]),
    ("not UTF-8", ["render", "-f", "{binary}"]),
    ("namespace contradicts -n", ["render", "-f", MINIMAL, "-n", "other"]),
    ("a bad namespace", ["render", "-f", MINIMAL, "-n", "Not_A_Namespace"]),
    ("a missing env file", ["render", "-f", MINIMAL, "--secret-env-file", "{dir}/.env.nope"]),
    ("an env file kubectl refuses", ["render", "-f", MINIMAL, "--secret-env-file", "{bad-env}"]),
    ("crd into a missing directory", ["crd", "-o", "{dir}/no/such/dir/crd.yaml"]),
    ("run without a cluster", ["run"]),
]

API = [
    ("no command", [], {}),
    ("unknown command", ["serv"], {}),
    ("a ttl that is no number", ["token", "ada", "--ttl", "soon"], {"NODE_ENV": "development", "JWT_SECRET": "k"}),
    ("a tenant id that is not one", ["seed", "--tenant", "Team_A"], {}),
    ("a token outside development", ["token", "ada"], {"DATABASE_URL": "postgresql://a@b/c?sslmode=require",
                                                       "REDIS_URL": "rediss://c", "JWT_SECRET": "k" * 32}),
    ("serve with nothing set", ["serve"], {}),
    ("serve with a URL that is none", ["serve"], {"DATABASE_URL": "db.example:5432", "REDIS_URL": "redis://x",
                                                  "NODE_ENV": "development"}),
    ("serve with a port that is no number", ["serve"], {"DATABASE_URL": DEAD, "REDIS_URL": "redis://x",
                                                        "NODE_ENV": "development", "PORT": "eighty"}),
    ("migrate with nothing set", ["migrate"], {}),
    ("migrate against a database that is down", ["migrate"], {"DATABASE_URL": DEAD, "NODE_ENV": "development"}),
    ("migrate with a port out of range", ["migrate"], {"DATABASE_URL": "postgresql://a@127.0.0.1:99999/x",
                                                       "NODE_ENV": "development"}),
    ("migrate as a role that does not exist", ["migrate"], {
        "DATABASE_URL": "postgresql://no_such_role_here@127.0.0.1:5432/postgres", "NODE_ENV": "development"}),
    ("seed against a database that is down", ["seed"], {"DATABASE_URL": DEAD, "REDIS_URL": "redis://127.0.0.1:1",
                                                        "NODE_ENV": "development"}),
    ("evaluator with a rule file that is missing", ["evaluator"], {
        "DATABASE_URL": DEAD, "REDIS_URL": "redis://127.0.0.1:1", "NODE_ENV": "development",
        "ALERT_RULES_FILE": "{dir}/rules.yaml"}),
    ("dev-webhook without the secret", ["dev-webhook", "--order", "x"], {}),
    ("dev-webhook with no checkout answer", ["dev-webhook"], {"PAYMENT_WEBHOOK_SECRET": "s"}),
    ("dev-webhook to an API that is down", ["dev-webhook", "--url", "http://127.0.0.1:1", "--order",
                                            "6f1c2b1e-0000-4000-8000-000000000000", "--amount-cents", "100",
                                            "--currency", "EUR"], {"PAYMENT_WEBHOOK_SECRET": "s"}),
]


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, str]:
    names = {"dir": str(tmp_path), "binary": str(tmp_path / "binary.yaml")}
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
        names[name] = str(tmp_path / name)
    return names


def fill(text: str, workspace: dict[str, str]) -> str:
    for name, path in workspace.items():
        text = text.replace("{" + name + "}", path)
    return text


def clean_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("DATABASE", "REDIS", "JWT", "PAYMENT", "NODE_ENV", "KUBE", "ALERT", "PORT"))}
    return {**keep, "KUBECONFIG": "/nonexistent/kubeconfig", **extra}


def assert_one_line(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert len(lines[0]) < 400
    assert result.stdout == ""


@pytest.mark.parametrize(("case", "args"), OPERATOR, ids=[c for c, _ in OPERATOR])
def test_learner_operator(case: str, args: list[str], workspace: dict[str, str]) -> None:
    argv = [str(BIN / "learner-operator"), *(fill(a, workspace) for a in args)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=clean_env(), stdin=subprocess.DEVNULL)
    assert_one_line(result)


@pytest.mark.parametrize(("case", "args", "env"), API, ids=[c for c, _, _ in API])
def test_learner_api(case: str, args: list[str], env: dict[str, str], workspace: dict[str, str]) -> None:
    argv = [str(BIN / "learner-api"), *(fill(a, workspace) for a in args)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                            env=clean_env(**{k: fill(v, workspace) for k, v in env.items()}))
    assert_one_line(result)
    assert "nobody@" not in result.stderr  # never the URL itself
    assert "db.example" not in result.stderr
