"""Operator benchmark: time to children, CPU per platform, requests per reconcile, memory per platform.

One run, one API server, two contenders. The API server is, when KUBEBUILDER_ASSETS names a folder with
envtest's binaries, a real control plane set up as for the tests (tests/control_plane.py: etcd,
kube-apiserver, kube-controller-manager if there; the operator under the chart's ServiceAccount and
RBAC): that is the headline. Otherwise (or with --emulator) the tests' emulator in a process of its own,
which is CPU-bound itself: there the operator's own CPU seconds per platform say more than wall time.
The contenders:

* baseline: a plain script that applies the same manifests (``builders.children``) with the same
  client (``learner_operator.kube.KubeApi``), as fast as it can;
* the operator: ``learner-operator run`` as a process (with its image's MALLOC_ARENA_MAX=2), reacting
  to LearnerPlatforms created via HTTP.

"All children applied" is seen the same way for both: a watch on PodDisruptionBudgets, the last
kind applied for each platform. Printed: a headline line; median seconds for 1 platform (over several
rounds); for ``--many`` platforms at once, each of ``--repeats`` bursts per contender with wall seconds,
the contender's CPU seconds (the operator process; the script's is this process's) and the API server's;
the operator's writes and requests per created platform (on the emulator from its own /metrics; on a
real API server writes from the audit log: every mutating request of its ServiceAccount but Lease
renewals), its writes when restarted over all platforms and during a no-op resync, and its RSS idle and
at each ``--memory`` count. Goals (issue 20): <= 1.2x + 0.2 s; <= 30 KiB per platform at 1,000.

    .venv/bin/python -m bench.operator_bench [--rounds 5] [--many 100] [--repeats 3] [--memory 1000,5000]
    KUBEBUILDER_ASSETS=/path/to/envtest/bin .venv/bin/python -m bench.operator_bench
    PATH=$PATH:/path/to/py-spy/bin .venv/bin/python -m bench.operator_bench --profile /tmp/operator.txt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from learner_operator import builders, drift
from learner_operator.kube import KubeApi, ref_of
from learner_operator.kube.client import connect
from learner_operator.models import parse_spec
from tests.audit_log import MUTATING, AuditLog
from tests.control_plane import Binaries, ControlPlane

ROOT = Path(__file__).resolve().parent.parent
NS = "bench"
#: The plain script's namespace, apart from the operator's platforms. (The operator runs with -A, as its image
#: does, so its idle RSS includes the script's children, which its informers list and keep.)
BASE_NS = "bench-baseline"
WORKERS = 8


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def platform_doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "01-minimal.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": NS}
    return doc


@contextlib.asynccontextmanager
async def process(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=30)


@dataclasses.dataclass
class Server:
    """The API server under test: how to reach it as cluster-admin and as the operator, whose CPU counts."""

    url: str
    tls: ssl.SSLContext | bool  # aiohttp's ssl=: the CA and the admin's client certificate, or True (HTTP)
    pids: list[int]
    lease_namespace: str
    operator_kubeconfig: Path | None = None  # None: a token-less kubeconfig for the emulator's URL
    operator_user: str = ""  # on a real API server: whose writes the audit log counts
    audit_log: Path | None = None

    async def client(self) -> KubeApi:
        """The baseline's client: the operator's identity and client, so only the work differs."""
        if self.operator_kubeconfig is None:
            return await connect(self.url)
        return await connect(kubeconfig=str(self.operator_kubeconfig))


@contextlib.asynccontextmanager
async def emulator() -> AsyncIterator[Server]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with process(sys.executable, "-m", "bench.emulator", "--port", str(port), env=env) as proc:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/version"):
                        break
                await asyncio.sleep(0.1)
        yield Server(url=url, tls=True, pids=[proc.pid], lease_namespace="default")


@contextlib.asynccontextmanager
async def control_plane(binaries: Binaries) -> AsyncIterator[Server]:
    crd = yaml.safe_load((ROOT / "crds" / "learnerplatforms.learner.dev.yaml").read_text())
    # Metadata is enough to count writes, and keeps the audit log's cost off the measurement.
    plane = ControlPlane(binaries, Path(tempfile.mkdtemp(prefix="bench-control-plane-")), crd, namespace=NS,
                         audit_level="Metadata")
    progress(f"starting a real control plane from {binaries.folder} in {plane.folder}")
    await asyncio.to_thread(plane.start)
    try:
        tls = ssl.create_default_context(cafile=str(plane.pki.ca_cert))
        tls.load_cert_chain(str(plane.pki.admin_cert), str(plane.pki.admin_key))
        yield Server(url=plane.url, tls=tls, lease_namespace=NS, operator_kubeconfig=plane.operator_kubeconfig,
                     operator_user=plane.operator_user, audit_log=plane.audit_log,
                     pids=[plane.processes[name].pid for name in ("kube-apiserver", "etcd")])
    finally:
        await asyncio.to_thread(plane.stop)


class Watcher:
    """Counts PodDisruptionBudgets as they appear (one per platform, applied last)."""

    def __init__(self, url: str, tls: ssl.SSLContext | bool = True, namespace: str = NS) -> None:
        self.url = url
        self.tls = tls
        self.namespace = namespace
        self.seen: set[str] = set()
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.url}/apis/policy/v1/namespaces/{self.namespace}/poddisruptionbudgets",
                                   ssl=self.tls) as r:
                listing = await r.json()
            self.seen |= {item["metadata"]["name"] for item in listing["items"]}
            params = {"watch": "true", "resourceVersion": listing["metadata"]["resourceVersion"]}
            async with session.get(f"{self.url}/apis/policy/v1/namespaces/{self.namespace}/poddisruptionbudgets",
                                   params=params, timeout=aiohttp.ClientTimeout(total=None), ssl=self.tls) as r:
                async for line in r.content:
                    if line.strip():
                        event = json.loads(line)
                        if event["type"] == "ADDED":
                            self.seen.add(event["object"]["metadata"]["name"])
                            self.changed.set()

    async def __aenter__(self) -> Watcher:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.2)
        return self

    async def __aexit__(self, *_: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait_for(self, names: set[str], within: float = 600) -> None:
        deadline = time.monotonic() + within
        while not names <= self.seen:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), timeout=max(0.01, deadline - time.monotonic()))


async def apply_like_a_script(api: KubeApi, names: list[str]) -> None:
    """The baseline: the same manifests, the same client, no operator."""
    async def one(name: str) -> None:
        spec = parse_spec(platform_doc(name)["spec"])
        platform = builders.Platform(name, BASE_NS, f"uid-{name}", spec, "0" * 16)
        for manifest in builders.children(platform):
            manifest = drift.with_digest(manifest)
            await api.apply(ref_of(manifest), manifest)

    queue = list(names)

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    await asyncio.gather(*(worker() for _ in range(min(WORKERS, len(names)))))


async def create_platforms(session: aiohttp.ClientSession, server: Server, names: list[str]) -> None:
    sem = asyncio.Semaphore(16)

    async def one(name: str) -> None:
        async with sem, session.post(f"{server.url}/apis/learner.dev/v1alpha1/namespaces/{NS}/learnerplatforms",
                                     json=platform_doc(name), ssl=server.tls) as response:
            assert response.status < 300, await response.text()

    await asyncio.gather(*(one(name) for name in names))


async def metrics(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if m := re.match(r'^learner_operator_api_requests_total\{verb="(\w+)"\} ([0-9.e+]+)$', line):
            out[m.group(1)] = float(m.group(2))
        elif m := re.match(r"^learner_operator_reconcile_duration_seconds_(sum|count) ([0-9.e+]+)$", line):
            out[f"reconcile_{m.group(1)}"] = float(m.group(2))
    return out


def writes(counts: dict[str, float]) -> float:
    return sum(v for k, v in counts.items() if k in ("POST", "PUT", "PATCH", "DELETE"))


class WriteCounter:
    """The operator's writes so far: from its /metrics (emulator), or the API server's audit log."""

    def __init__(self, server: Server, session: aiohttp.ClientSession, metrics_port: int) -> None:
        self._session, self._port = session, metrics_port
        self._audit = AuditLog(server.audit_log, server.operator_user) if server.audit_log else None

    async def __call__(self) -> float:
        if self._audit is None:
            return writes(await metrics(self._session, self._port))
        return sum(1 for r in self._audit.requests if r.method.value in MUTATING
                   and (r.resource is None or r.resource.plural != "leases"))  # renewals never stop


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def settle_rss(pid: int, seconds: float = 3.0) -> int:
    await asyncio.sleep(seconds)
    return rss_kib(pid)


def operator_kubeconfig(server: Server) -> Path:
    if server.operator_kubeconfig is not None:
        return server.operator_kubeconfig
    kubeconfig = Path(tempfile.mkdtemp()) / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "e",
        "clusters": [{"name": "e", "cluster": {"server": server.url}}],
        "users": [{"name": "u", "user": {"token": "bench"}}],
        "contexts": [{"name": "e", "context": {"cluster": "e", "user": "u"}}]}))
    return kubeconfig


def server_cpu(server: Server) -> float:
    return sum(cpu_seconds(pid) for pid in server.pids)


async def start_profiler(path: str | None, pid: int) -> asyncio.subprocess.Process | None:
    """py-spy (``pip install py-spy``, not a project dependency) sampling the operator in collapsed-stack form."""
    if path is None:
        return None
    spy = await asyncio.create_subprocess_exec("py-spy", "record", "--pid", str(pid), "--format", "raw",
                                               "--rate", "250", "--nonblocking", "--output", path,
                                               stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(1)
    return spy


async def stop_profiler(spy: asyncio.subprocess.Process | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        await asyncio.wait_for(spy.wait(), timeout=60)


@dataclasses.dataclass
class Burst:
    """One burst of ``many`` platforms at once: wall seconds, CPU seconds of the contender and of the server."""

    wall: float
    cpu: float
    server_cpu: float


def summary(bursts: list[Burst]) -> tuple[float, float, float]:
    return (statistics.median(b.wall for b in bursts), statistics.median(b.cpu for b in bursts),
            statistics.median(b.server_cpu for b in bursts))


def requests(counts: dict[str, float]) -> float:
    return sum(v for k, v in counts.items() if k in ("GET", "POST", "PUT", "PATCH", "DELETE"))


@contextlib.asynccontextmanager
async def operator(session: aiohttp.ClientSession, server: Server, resync: float,
                   ) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``learner-operator run`` as in its image (MALLOC_ARENA_MAX=2), with its metrics port."""
    metrics_port = free_port()
    op_env = {**os.environ, "KUBECONFIG": str(operator_kubeconfig(server)), "MALLOC_ARENA_MAX": "2"}
    command = str(Path(sys.executable).parent / "learner-operator")
    async with process(command, "run", "-A", "--metrics-port", str(metrics_port), "--liveness",
                       f"http://127.0.0.1:{free_port()}/healthz", "--resync-seconds", str(resync),
                       "--lease-namespace", server.lease_namespace, env=op_env) as op:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                await metrics(session, metrics_port)
                break
            await asyncio.sleep(0.1)
        yield op, metrics_port


async def until_quiet(session: aiohttp.ClientSession, port: int, at_least: float, quiet: float = 2.0) -> None:
    """Until the operator has reconciled ``at_least`` times and then nothing for ``quiet`` seconds."""
    last, since = -1.0, time.monotonic()
    while True:
        count = (await metrics(session, port)).get("reconcile_count", 0)
        if count != last:
            last, since = count, time.monotonic()
        elif count >= at_least and time.monotonic() - since >= quiet:
            return
        await asyncio.sleep(0.25)


async def main(rounds: int, many: int, repeats: int, memory_points: list[int], profile: str | None = None,
               force_emulator: bool = False) -> None:
    binaries = None if force_emulator else Binaries.from_environment()
    async with (control_plane(binaries) if binaries else emulator()) as server:
        url = server.url
        async with aiohttp.ClientSession() as session:
            api = await server.client()
            secret = {"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": "ai-platform-secrets", "namespace": NS},
                      "data": {"DATABASE_URL": "cG9zdGdyZXM6Ly94", "REDIS_URL": "cmVkaXM6Ly95",
                               "JWT_SECRET": "and0LWtleQ=="}}
            async with session.post(f"{url}/api/v1/namespaces/{NS}/secrets", json=secret, ssl=server.tls) as answer:
                assert answer.status < 300, await answer.text()

            if binaries:  # (the emulator makes it at its start)
                async with session.post(f"{url}/api/v1/namespaces", ssl=server.tls, json={
                        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BASE_NS}}) as answer:
                    assert answer.status < 300 or answer.status == 409, await answer.text()
            progress("baseline: applying with a plain script")
            base_one: list[float] = []
            base_many: list[Burst] = []
            async with Watcher(url, server.tls, BASE_NS) as watch:
                for i in range(rounds):
                    start = time.monotonic()
                    await apply_like_a_script(api, [f"base-{i}"])
                    await watch.wait_for({f"base-{i}-learner-api"})
                    base_one.append(time.monotonic() - start)
                for r in range(repeats):
                    names = [f"basemany-{r}-{i}" for i in range(many)]
                    # The script's CPU is this process's (its watcher of PodDisruptionBudgets included).
                    cpu, start = (time.process_time(), server_cpu(server)), time.monotonic()
                    await apply_like_a_script(api, names)
                    await watch.wait_for({f"{n}-learner-api" for n in names})
                    base_many.append(Burst(time.monotonic() - start, time.process_time() - cpu[0],
                                           server_cpu(server) - cpu[1]))
            await api.close()
            total = rounds + many * repeats  # the baseline's platforms are not the operator's

            progress("starting the operator")
            rss: list[tuple[int, int]] = []
            async with operator(session, server, resync=3600) as (op, metrics_port):
                await asyncio.sleep(2)  # let it finish its initial listings
                idle_rss = await settle_rss(op.pid, 6)  # and trim after it
                operator_writes = WriteCounter(server, session, metrics_port)
                before, counted = await operator_writes(), await metrics(session, metrics_port)

                progress("operator: creating platforms")
                op_one: list[float] = []
                op_many: list[Burst] = []
                async with Watcher(url, server.tls) as watch:
                    for i in range(rounds):
                        start = time.monotonic()
                        await create_platforms(session, server, [f"op-{i}"])
                        await watch.wait_for({f"op-{i}-learner-api"})
                        op_one.append(time.monotonic() - start)
                    await until_quiet(session, metrics_port, rounds)
                    per_create = (await operator_writes() - before) / rounds
                    reads_per_create = (requests(await metrics(session, metrics_port)) - requests(counted)) / rounds
                    reconciles = reconcile_seconds = 0.0
                    for r in range(repeats):
                        names = [f"opmany-{r}-{i}" for i in range(many)]
                        counts = await metrics(session, metrics_port)
                        spy = await start_profiler(profile if r == 0 else None, op.pid)
                        cpu, start = (cpu_seconds(op.pid), server_cpu(server)), time.monotonic()
                        await create_platforms(session, server, names)
                        await watch.wait_for({f"{n}-learner-api" for n in names})
                        op_many.append(Burst(time.monotonic() - start, cpu_seconds(op.pid) - cpu[0],
                                             server_cpu(server) - cpu[1]))
                        await stop_profiler(spy)
                        await until_quiet(session, metrics_port, 0)  # the status writes that follow
                        after = await metrics(session, metrics_port)
                        reconciles += after.get("reconcile_count", 0) - counts.get("reconcile_count", 0)
                        reconcile_seconds += after.get("reconcile_sum", 0) - counts.get("reconcile_sum", 0)
                        rss.append((rounds + many * (r + 1), await settle_rss(op.pid, 6)))

                    for point in sorted(p for p in memory_points if p > total):
                        progress(f"operator: {point - total} more platforms, {point} in all, for its RSS")
                        names = [f"mem-{i}" for i in range(total, point)]
                        for chunk in range(0, len(names), 500):
                            await create_platforms(session, server, names[chunk:chunk + 500])
                            await watch.wait_for({f"{n}-learner-api" for n in names[chunk:chunk + 500]},
                                                 within=1800)
                        total = point
                        rss.append((total, await settle_rss(op.pid, 8)))

            progress(f"operator restarted: reconciling {total} platforms at start-up, then one resync")
            async with operator(session, server, resync=5) as (op, metrics_port):
                operator_writes = WriteCounter(server, session, metrics_port)
                start_writes = await operator_writes()
                await until_quiet(session, metrics_port, total)
                startup_writes = await operator_writes() - start_writes
                quiet = await operator_writes()
                await asyncio.sleep(6)  # one full resync (every 5 s) over everything
                await until_quiet(session, metrics_port, 0)
                resync_writes = await operator_writes() - quiet

    sample = builders.Platform("x", NS, "u", parse_spec(platform_doc("x")["spec"]))
    kids = len(builders.children(sample))
    one_b, one_o = statistics.median(base_one), statistics.median(op_one)
    (wall_b, cpu_b, srv_b), (wall_o, cpu_o, srv_o) = summary(base_many), summary(op_many)
    where = f"a real control plane from {binaries.folder}" if binaries else "the emulator"
    verdict = "met" if wall_o <= 1.2 * wall_b + 0.2 else "MISSED"
    print(f"HEADLINE on {where}: {many} platforms at once, operator {wall_o:.2f} s vs plain script {wall_b:.2f} s "
          f"= {wall_o / wall_b:.2f}x (median of {repeats}; goal <= 1.2x + 0.2 s: {verdict}); operator CPU "
          f"{cpu_o / many * 100:.2f} s per 100 platforms")
    if not binaries:
        print("  (the emulator is CPU-bound itself: set KUBEBUILDER_ASSETS to envtest's binaries for the real "
              "control plane, the run that decides)")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"children per platform: {kids}")
    print(f"1 platform  (median of {rounds}): baseline {one_b:.3f} s, operator {one_o:.3f} s, "
          f"ratio {one_o / one_b:.2f}x, goal <= 1.2x + 0.2 s: {'met' if one_o <= 1.2 * one_b + 0.2 else 'MISSED'}")
    print(f"{many} platforms at once, each of {repeats} bursts (wall s, contender CPU s, API server CPU s):")
    print("  baseline: " + "; ".join(f"{b.wall:.2f} / {b.cpu:.2f} / {b.server_cpu:.2f}" for b in base_many))
    print("  operator: " + "; ".join(f"{b.wall:.2f} / {b.cpu:.2f} / {b.server_cpu:.2f}" for b in op_many))
    print(f"  medians: wall {wall_o / wall_b:.2f}x; CPU operator {cpu_o:.2f} s vs script {cpu_b:.2f} s "
          f"({cpu_o / cpu_b:.2f}x); API server {srv_o:.2f} s vs {srv_b:.2f} s "
          f"({'kube-apiserver and etcd' if binaries else 'the emulator'})")
    print(f"  reconciles per burst: {reconciles / repeats:.0f}, "
          f"{reconcile_seconds / max(reconciles, 1) * 1000:.0f} ms each on average (wall, queued I/O included)")
    # + the migration Job of its first image (created once, never applied again) + one status write
    print(f"operator writes per created platform: {per_create:.1f} (goal: children + the migration Job + 1 status "
          f"write = {kids + 2}: {'met' if per_create <= kids + 2 else 'MISSED'}); requests of any verb but watch: "
          f"{reads_per_create:.1f}")
    print(f"operator writes at a restart with {total} platforms: {startup_writes:.0f}; "
          f"during a no-op resync of them: {resync_writes:.0f}")
    print(f"operator RSS idle {idle_rss / 1024:.1f} MiB; " + "; ".join(
        f"{n} platforms {kib / 1024:.1f} MiB = {(kib - idle_rss) / n:.1f} KiB per platform" for n, kib in rss))
    at = min(rss, key=lambda point: abs(point[0] - 1000))
    per_cr = (at[1] - idle_rss) / at[0]
    print(f"  at {at[0]}: {per_cr:.1f} KiB per platform, goal <= 30 KiB at 1,000: "
          f"{'met' if per_cr <= 30 else 'MISSED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="single platforms, one after the other")
    parser.add_argument("--many", type=int, default=100, help="platforms created at once, per burst")
    parser.add_argument("--repeats", type=int, default=3, help="bursts per contender (medians are printed)")
    parser.add_argument("--memory", default="1000", help="platform counts at which to read the operator's RSS "
                        "(comma-separated, e.g. 100,1000,5000)")
    parser.add_argument("--emulator", action="store_true", help="the emulator even when KUBEBUILDER_ASSETS is set")
    parser.add_argument("--profile", metavar="FILE", help="py-spy's collapsed stacks of the operator during its "
                        "first burst (needs py-spy on PATH)")
    args = parser.parse_args()
    points = [int(p) for p in args.memory.split(",") if p.strip()]
    asyncio.run(main(args.rounds, args.many, args.repeats, points, args.profile, args.emulator))
