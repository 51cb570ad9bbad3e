"""Shared fixtures. The Kubernetes emulator and its fixtures live in kube_emulator.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
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


@pytest.fixture
async def cluster(crd: dict[str, Any]) -> AsyncIterator[Any]:
    """The Kubernetes API emulator, served over HTTP, with the `learning` namespace."""
    from tests.kube_emulator import standard_cluster

    emulator = standard_cluster(crd)
    async with emulator, kmock.Server(emulator):
        emulator.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "learning"}})
        yield emulator
        emulator.hang_up()
