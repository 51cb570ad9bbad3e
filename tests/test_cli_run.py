"""`learner-operator run` as a process, as the operator's container runs it: kubeconfig, liveness, metrics.

On a real API server the kubeconfig is the chart's ServiceAccount's, and the Lease lives in the
release's namespace, as the chart sets it (``POD_NAMESPACE``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import EXAMPLES, load
from tests.net import free_port
from tests.operator_harness import NS, AnyCluster, eventually, operator_kubeconfig
from tests.test_operator import children, secret

pytestmark = pytest.mark.operator


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


@contextlib.asynccontextmanager
async def running_process(cluster: AnyCluster, tmp_path: Path) -> AsyncIterator[tuple[Process, int, int]]:
    """`learner-operator run` as the chart runs it; stopped with SIGTERM, which it must obey (exit 0)."""
    liveness, metrics = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(operator_kubeconfig(cluster, tmp_path))}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    command = shutil.which("learner-operator", path=str(Path(os.sys.executable).parent))  # type: ignore[attr-defined]
    assert command, "the learner-operator console script is installed with the project"
    process = await asyncio.create_subprocess_exec(
        command, "run", "--all-namespaces", "--lease-namespace", NS, "--liveness", f"http://127.0.0.1:{liveness}/healthz",
        "--metrics-port", str(metrics), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield process, liveness, metrics
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, output.decode()[-3000:]
    assert b"postgresql://" not in output  # the Secret's values never reach the logs


async def probe(url: str) -> tuple[int, str] | None:
    try:
        return await get(url)
    except aiohttp.ClientError:
        return None


async def test_run_serves_liveness_and_metrics_and_stops_on_sigterm(cluster: AnyCluster, tmp_path: Path) -> None:
    async with running_process(cluster, tmp_path) as (_, liveness, metrics):
        cluster.put(secret())
        cluster.put(load(EXAMPLES / "01-minimal.yaml"))
        await eventually(lambda: len(children(cluster)) == 12, within=30, what="children from the process")

        status, _ = await eventually_async(lambda: probe(f"http://127.0.0.1:{liveness}/healthz"))
        assert status == 200
        async def reconciled() -> tuple[int, str] | None:
            answer = await probe(f"http://127.0.0.1:{metrics}/metrics")
            return answer if answer and 'learner_operator_reconciles_total{result="ok"}' in answer[1] else None

        status, text = await eventually_async(reconciled)
        assert status == 200
        assert "learner_operator_platforms 1.0" in text
        assert 'learner_operator_platform_condition{name="ai-platform",namespace="learning",status="True",' \
               'type="SecretReady"} 1.0' in text
        assert 'learner_operator_api_requests_total{verb="PATCH"}' in text
        assert "learner_operator_api_server_available 1.0" in text
        lease = cluster.get("coordination.k8s.io/v1", "leases", NS, "learner-platform-operator") or {}
        assert lease["spec"]["holderIdentity"]  # leader election is on by default


@pytest.mark.emulator_only("the API server kept away while the probes are read: a real one is back before the block")
async def test_while_the_api_server_is_away_liveness_holds_and_health_and_metrics_say_so(
    cluster: AnyCluster, tmp_path: Path,
) -> None:
    """A failing liveness probe would only restart the operator, which cannot bring the API server back; but an
    SRE looking at /healthz or a dashboard must see that it is away, and since when."""
    async with running_process(cluster, tmp_path) as (process, liveness, metrics):
        health, scrape = f"http://127.0.0.1:{liveness}/healthz", f"http://127.0.0.1:{metrics}/metrics"

        async def saying(url: str, text: str) -> tuple[int, str] | None:
            answer = await probe(url)
            return answer if answer and text in answer[1] else None

        await eventually_async(lambda: saying(scrape, "learner_operator_api_server_available 1.0"))
        async with cluster.watch_gap(down=True):
            status, text = await eventually_async(lambda: saying(scrape, "learner_operator_api_server_available 0.0"))
            # kopf keeps probe results for 10 s: the body says it within that.
            status, text = await eventually_async(lambda: saying(health, '"available": false'), within=30)
            assert status == 200, "liveness must not fail because the API server is away"
            assert "503" in json.loads(text)["apiServer"]["lastError"]
            assert process.returncode is None
        await eventually_async(lambda: saying(scrape, "learner_operator_api_server_available 1.0"), within=30)
        await eventually_async(lambda: saying(health, '"available": true'), within=30)


async def eventually_async(probe: Any, within: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while (result := await probe()) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not reachable in time")
        await asyncio.sleep(0.1)
    return result
