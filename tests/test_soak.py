"""The chaos soak (the bench/soak package) as smoke runs: half a minute of load and faults from a fixed seed,
then every invariant checked; once on one Redis, once on a Redis Cluster. Select them alone with
``pytest -m soak``; a long run is ``python -m bench.soak``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak.faults import CLUSTER_REDIS
from bench.soak.processes import postgres_bin
from tests.conftest import ROOT

_POSTGRES = postgres_bin() is not None
pytestmark = [pytest.mark.soak, pytest.mark.skipif(
    not (_POSTGRES and shutil.which("redis-server")),
    reason="the soak starts its own PostgreSQL and Redis: apt-get install postgresql redis-server")]


@pytest.mark.parametrize("kube", [
    [],  # the emulator, or a real control plane where KUBEBUILDER_ASSETS names envtest's binaries
    ["--kube", "emulator-rest"],  # the emulator through the real control plane's client: that code runs here
], ids=["default", "emulator-rest"])
def test_a_short_soak_with_a_fixed_seed_holds_every_invariant(tmp_path: Path, kube: list[str]) -> None:
    history = tmp_path / "history.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "0.5", "--seed", "5", "--quiet-seconds", "10",
         "--fault-seconds", "4", "--longest-fault", "15", "--history", str(history), *kube],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = [json.loads(line) for line in history.read_text().splitlines() if '"op": "report"' in line][-1]
    assert report["faults_total"] >= 3, report["faults"]
    assert report["events_acked"] > 0
    assert report["events_stored"] >= report["events_acked"]
    assert report["paid"] > 0
    assert report["broken"] == []


def test_a_short_soak_on_a_redis_cluster_holds_every_invariant(tmp_path: Path) -> None:
    """Seed 6 plans a master killed, a master frozen and a slot moved in its first half-minute (the ones that
    find Redis still busy with the one before are skipped)."""
    history = tmp_path / "history.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "0.5", "--seed", "6", "--redis", "cluster",
         "--quiet-seconds", "10", "--fault-seconds", "4", "--longest-fault", "15", "--history", str(history)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = [json.loads(line) for line in history.read_text().splitlines() if '"op": "report"' in line][-1]
    assert set(report["faults"]) & set(CLUSTER_REDIS), report["faults"]
    assert report["fault_plan"]["redis"] == "cluster"
    assert report["redis_keys"] > 0  # read from the cluster's masters
    assert report["events_stored"] >= report["events_acked"] > 0
    assert report["broken"] == []
