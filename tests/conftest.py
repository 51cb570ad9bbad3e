"""Shared fixtures, and the choice of Kubernetes backend for the `cluster` fixture.

The emulator (tests/kube_emulator.py) by default; a real control plane (tests/control_plane.py,
tests/real_cluster.py) when KUBEBUILDER_ASSETS names a folder with envtest's binaries. Tests that
rely on what only the emulator can do are marked ``emulator_only(reason)``; tests that need a
controller (garbage collection, HPA) are marked ``needs_controller(which)`` and skip on a real
control plane without kube-controller-manager (on the emulator the tests play the controller).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from tests.control_plane import ASSETS, Binaries

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CRD_FILE = ROOT / "crds" / "learnerplatforms.learner.dev.yaml"
NAMESPACE = "learning"  # the harness's NS: every test's namespace, on either backend
_BINARIES = pytest.StashKey[Binaries | None]()


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def pytest_configure(config: pytest.Config) -> None:
    try:
        config.stash[_BINARIES] = Binaries.from_environment()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> str:
    binaries = config.stash.get(_BINARIES, None)
    if binaries is None:
        return f"kubernetes: the emulator (set {ASSETS} to an envtest folder for a real control plane)"
    with_controllers = "with" if binaries.kube_controller_manager else "without"
    return f"kubernetes: a real control plane from {binaries.folder}, {with_controllers} kube-controller-manager"


#: The tiers that are not marked in their modules (`operator` is): by folder or file, so that a new test
#: there is in its tier without saying so. `scripts/test -m api` runs one tier.
_TIERS = {"api": "api", "evaluator": "evaluator", "test_chart.py": "chart", "test_crd.py": "chart",
          "test_crd_admission.py": "chart"}


@pytest.hookimpl(tryfirst=True)  # before -m selects by them
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = ROOT / "tests"
    for item in items:
        parts = item.path.relative_to(tests).parts if item.path.is_relative_to(tests) else ()
        if parts and (tier := _TIERS.get(parts[0])):
            item.add_marker(tier)
    _skip_where_the_backend_cannot(config, items)


def _skip_where_the_backend_cannot(config: pytest.Config, items: list[pytest.Item]) -> None:
    binaries = config.stash.get(_BINARIES, None)
    if binaries is None:
        return
    for item in items:
        if marker := item.get_closest_marker("emulator_only"):
            item.add_marker(pytest.mark.skip(reason=f"emulator only: {marker.args[0]}"))
        elif (marker := item.get_closest_marker("needs_controller")) and binaries.kube_controller_manager is None:
            item.add_marker(pytest.mark.skip(reason=f"needs kube-controller-manager ({marker.args[0]}) "
                                                    f"in {binaries.folder}"))


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return load(CRD_FILE)


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest, crd: dict[str, Any],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """etcd and kube-apiserver (and kube-controller-manager) for the whole session; only on the real backend."""
    from tests.control_plane import ControlPlane

    binaries = request.config.stash[_BINARIES]
    assert binaries is not None
    plane = ControlPlane(binaries, tmp_path_factory.mktemp("control-plane"), crd, namespace=NAMESPACE)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
async def cluster(request: pytest.FixtureRequest, crd: dict[str, Any]) -> AsyncIterator[Any]:
    """The Kubernetes API with the `learning` namespace: the emulator, or a real API server (see above)."""
    if request.config.stash[_BINARIES] is not None:
        from tests.real_cluster import RealCluster

        real = RealCluster(request.getfixturevalue("control_plane"))
        real.reset()
        yield real
        return

    from tests.kube_emulator import standard_cluster

    emulator = standard_cluster(crd)
    async with emulator, kmock.Server(emulator):
        emulator.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        yield emulator
        emulator.hang_up()
