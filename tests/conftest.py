"""Shared fixtures. The Kubernetes emulator and its fixtures live in kube_emulator.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CRD_FILE = ROOT / "crds" / "learnerplatforms.learner.dev.yaml"


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return load(CRD_FILE)
