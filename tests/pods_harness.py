"""Real learner-api processes as the pods of the emulator's learner-api Deployments, and the traffic a Service
would send them.

The emulator runs no controller and no kubelet; this harness plays both for the learner-api Deployments
(stable and canary): for each it keeps as many `learner-api serve` processes as the Deployment's replicas, on
its template's image, and stores a Pod per process (the template's labels, ``status.podIP`` 127.0.0.1, phase
Running, Ready once /readyz answers, the container port named ``metrics`` set to the process's own metrics port:
every "pod" shares the loopback address, so each has ports of its own). An image is "built" by the test: its
tag maps to the environment that makes that build good or bad (learner-api's test-only fault switches).

``Traffic`` is kube-proxy without the kernel: requests spread evenly over the ready pods that the Service's
selector matches, at a steady rate, whatever each pod answers and however slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.api.conftest import JWT_SECRET, REDIS_URL, WEBHOOK_SECRET
from tests.kube_emulator import Cluster
from tests.net import free_port

APP = "learner-api"


@dataclass
class Process:
    pod: str
    deployment: str
    image: str
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    ready: bool = False
    ready_at: float = 0.0  # time.monotonic() when /readyz first answered


@dataclass
class PodsHarness:
    cluster: Cluster
    namespace: str
    database_url: str
    logs: Path
    #: image tag -> extra environment (a "build": e.g. {"TEST_FAULT_5XX_RATIO": "0.5"}).
    builds: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _session: aiohttp.ClientSession | None = None

    # -- the Deployment controller and the kubelet ------------------------------------------------

    def _deployments(self) -> list[dict[str, Any]]:
        return [d for d in self.cluster.all("apps/v1", "deployments", self.namespace)
                if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/name") == APP]

    def _start(self, deployment: dict[str, Any]) -> None:
        template = deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        image = str(container["image"])
        tag = image.rpartition(":")[2]
        name = f"{deployment['metadata']['name']}-{uuid.uuid4().hex[:10]}"
        port, metrics_port = free_port(), free_port()
        env = {**os.environ, "DATABASE_URL": self.database_url, "REDIS_URL": REDIS_URL, "NODE_ENV": "development",
               "JWT_SECRET": JWT_SECRET, "PAYMENT_WEBHOOK_SECRET": WEBHOOK_SECRET, "PORT": str(port),
               "METRICS_PORT": str(metrics_port), "LOG_FORMAT": "text", **self.builds.get(tag, {})}
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen([str(Path(sys.executable).parent / "learner-api"), "serve", "--host", "127.0.0.1",
                                    "--drain-seconds", "0"], env=env, stdout=log, stderr=log)
        log.close()
        self.processes[name] = Process(name, deployment["metadata"]["name"], image, process, port, metrics_port)
        ports = [{"name": "http", "containerPort": port, "protocol": "TCP"},
                 {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"}]
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"],
                 "uid": deployment["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        self.cluster.put({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": self.namespace, "labels": dict(template["metadata"]["labels"]),
            "ownerReferences": [owner]},
            "spec": {"containers": [{"name": container["name"], "image": image, "ports": ports}]}},
            manager="kube-controller-manager")
        self.cluster.edit("v1", "pods", self.namespace, name, {"status": {
            "phase": "Pending", "podIP": "127.0.0.1"}}, status=True, manager="kubelet")

    def _stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.process.send_signal(signal.SIGKILL)
        process.process.wait(10)
        with contextlib.suppress(KeyError):
            self.cluster.remove("v1", "pods", self.namespace, name)

    async def _ready(self, process: Process) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(f"http://127.0.0.1:{process.port}/readyz",
                                         timeout=aiohttp.ClientTimeout(total=1)) as answer:
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def sync(self) -> None:
        """One pass of the controller: processes and Pods to match each Deployment, readiness, Deployment status."""
        deployments = {d["metadata"]["name"]: d for d in self._deployments()}
        for name, process in list(self.processes.items()):
            deployment = deployments.get(process.deployment)
            image = deployment["spec"]["template"]["spec"]["containers"][0]["image"] if deployment else None
            if image != process.image or process.process.poll() is not None:
                self._stop(name)
        for name, deployment in deployments.items():
            mine = [p for p in self.processes.values() if p.deployment == name]
            wanted = int(deployment["spec"].get("replicas", 1))
            for _ in range(wanted - len(mine)):
                self._start(deployment)
            for extra in mine[wanted:]:
                self._stop(extra.pod)
        for process in list(self.processes.values()):
            if not process.ready and await self._ready(process):
                process.ready, process.ready_at = True, time.monotonic()
                self.cluster.edit("v1", "pods", self.namespace, process.pod, {"status": {
                    "phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": APP, "ready": True, "restartCount": 0, "image": process.image,
                                           "imageID": "", "state": {"running": {}}}]}},
                    status=True, manager="kubelet")
        for name, deployment in deployments.items():
            mine = [p for p in self.processes.values() if p.deployment == name]
            ready = sum(1 for p in mine if p.ready)
            status = deployment.get("status") or {}
            if (status.get("readyReplicas"), status.get("observedGeneration")) != (
                    ready, deployment["metadata"]["generation"]):
                with contextlib.suppress(KeyError):
                    self.cluster.set_deployment_status(self.namespace, name, ready=ready)

    async def _loop(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(0.2)

    async def __aenter__(self) -> PodsHarness:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for name in list(self.processes):
            self._stop(name)
        if self._session is not None:
            await self._session.close()

    def first_ready(self, deployment: str) -> float | None:
        """When the first pod of ``deployment`` that is still running became ready."""
        return min((p.ready_at for p in self.processes.values() if p.deployment == deployment and p.ready),
                   default=None)

    def ready_pods(self, selector: Mapping[str, str]) -> list[Process]:
        """The ready "pods" whose labels match ``selector`` (a Service's endpoints)."""
        out = []
        for process in self.processes.values():
            if not process.ready:
                continue
            pod = self.cluster.get("v1", "pods", self.namespace, process.pod)
            labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
            if all(labels.get(k) == v for k, v in selector.items()):
                out.append(process)
        return out


class Traffic:
    """Requests at ``rate`` per second, round-robin over the Service's ready endpoints, never waiting for an
    answer before sending the next (an open loop: a slow pod does not slow the others' traffic)."""

    def __init__(self, pods: PodsHarness, selector: Mapping[str, str], rate: float = 60.0,
                 path: str = "/v1/courses") -> None:
        self.pods, self.selector, self.rate, self.path = pods, dict(selector), rate, path
        self.sent = 0
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def _one(self, session: aiohttp.ClientSession, port: int) -> None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"http://127.0.0.1:{port}{self.path}") as answer:
                await answer.read()

    async def _loop(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            turn = itertools.count()
            while True:
                endpoints = self.pods.ready_pods(self.selector)
                if endpoints and len(self._inflight) < 64:
                    target = endpoints[next(turn) % len(endpoints)]
                    task = asyncio.create_task(self._one(session, target.port))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                    self.sent += 1
                await asyncio.sleep(1 / self.rate)

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in [self._task, *self._inflight]:
            if task is not None:
                task.cancel()
        for task in [self._task, *self._inflight]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
