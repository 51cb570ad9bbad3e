"""Chaos soak: the whole system on this machine under steady load and overlapping random faults.

    .venv/bin/python -m bench.soak --minutes 60 --seed 7

Starts, all on loopback and all its own:
- a throwaway PostgreSQL (initdb + pg_ctl under a temporary folder, on a free port) and a throwaway
  Redis (redis-server, append-only file fsynced on every write: a managed Redis does not lose what it
  acknowledged), so that it may kill -9, freeze (SIGSTOP) and restart them. The shared 5432/6379 are
  never touched;
- the tests' Kubernetes API emulator (in this process), with 3 `learner-operator run` replicas electing a
  leader through the Lease;
- 2 `learner-api serve` and 2 `learner-api evaluator` processes.

Load (bounded): progress batches from learners of 3 tenants, retried with the same event ids as real
clients do; purchases (checkout with an Idempotency-Key, then a signed payment webhook, both retried with
the same key / event id); LearnerPlatform churn in 3 namespaces (create, image tag, autoscaling, evaluator
on/off, pause, delete). The soak plays the Job controller, the Deployment controller and the HPA.

Faults, drawn from ``--seed``, several at once: kill -9 of the operator's leader or a follower, of a
learner-api or evaluator process; SIGSTOP/SIGCONT of PostgreSQL, Redis or an operator replica; restart of
PostgreSQL or Redis; the API server dropping every watch, restarting (429, then 410 Gone) or away for
10-60 s (503); a child deleted or edited by someone else.

Everything is written to a history (JSONL), then checked: every progress event answered 202 is stored
exactly once, none dead-lettered; at most one order per Idempotency-Key, each confirmed payment fulfilled
once; every LearnerPlatform converged within 60 s of the last fault, no child of a deleted one
re-created; 0 operator writes for ``--quiet-seconds`` at rest; every process under its RSS bound and
ready at the end; Redis keys bounded. The report names every broken invariant with the seed to replay it;
the exit status is 1 when one broke. Every loop is bounded in count and time; all it started is stopped
and its folder removed (kept when an invariant broke, or with ``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import httpx
import jwt
import kmock
import redis.asyncio as aioredis

from learner_api.migrate import bundled, migrate
from learner_api.seed import COURSES, seed
from learner_api.streams import CONSUMER_GROUP, dead_letters
from learner_api.webhook_signature import HEADER, sign
from learner_operator.builders import children
from learner_operator.builders.common import Platform
from learner_operator.models import LearnerPlatformSpec
from tests.conftest import CRD_FILE, EXAMPLES, load
from tests.kube_emulator import Cluster, standard_cluster
from tests.net import free_port
from tests.operator_harness import operator_kubeconfig

JWT_SECRET = "soak-signing-key-with-enough-entropy-0123456789"
WEBHOOK_SECRET = "soak-webhook-secret-0123456789abcdef"
TENANTS = ("t-a", "t-b", "t-c")
NAMESPACES = ("soak-a", "soak-b", "soak-c")
LEASE_NS = "soak-system"
LEASE = "learner-platform-operator"
STREAM = "lp:progress"
LESSONS = [lesson[0] for course in COURSES for lesson in course[3]]
PRODUCT = "python-101-full"
#: RSS bounds (MiB) per kind of process: what the chart's limits leave room for, with a margin.
RSS_BOUND_MIB = {"operator": 300.0, "api": 300.0, "evaluator": 300.0, "redis": 200.0}
#: Writes after convergence that still belong to it (see Soak.finish), at most this far apart.
SETTLE_SECONDS = 3.0
CONVERGE_SECONDS = 60.0
#: Kinds the emulator does not serve (no KEDA): what the operator leaves out.
UNSERVED = ("ScaledObject", "TriggerAuthentication")
BIN = Path(sys.executable).parent


def _now() -> float:
    return time.monotonic()


# -- processes ------------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process the soak may kill, freeze and restart; its output goes to ``log``."""

    name: str
    kind: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    ready_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    wanted: bool = False  # should be running (an exit not caused by a fault is a crash)
    frozen: bool = False
    restarts: int = 0
    peak_rss_mib: float = 0.0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.wanted, self.frozen = True, False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: signal.Signals) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill9(self) -> None:
        self.wanted = False
        self.send(signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        self.frozen = False

    def stop(self) -> None:
        self.wanted = False
        if not self.running():
            return
        self.send(signal.SIGCONT)
        self.send(signal.SIGTERM)
        assert self.process is not None
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill9()

    def rss_mib(self) -> float:
        if not self.running():
            return 0.0
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                    self.peak_rss_mib = max(self.peak_rss_mib, rss)
                    return rss
        except OSError:
            pass
        return 0.0


def _children_of(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            out.append(int(entry.name))
    return out


class Postgres:
    """A throwaway PostgreSQL cluster: initdb under ``folder``, served on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.data, self.sockets = folder / "data", folder / "sock"
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin")) if Path("/usr/lib/postgresql").exists() else []
        found = shutil.which("initdb")
        where = Path(found).parent if found else (candidates[-1] if candidates else None)
        if where is None or not (where / "pg_ctl").exists():
            raise SystemExit("error: initdb/pg_ctl not found: apt-get install postgresql (the soak runs its own)")
        self.bin: Path = where
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        self.frozen: list[int] = []

    def _run(self, *argv: str) -> None:
        subprocess.run([*self.as_user, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                       timeout=60)

    def init(self) -> None:
        self.folder.mkdir(parents=True)
        self.sockets.mkdir()
        if self.as_user:
            shutil.chown(self.folder, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-t", "60",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off -c max_connections=200",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self.thaw()
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def postmaster(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def freeze(self) -> None:
        main = self.postmaster()
        if main is None:
            return
        self.frozen = [main, *_children_of(main)]
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


# -- the system ---------------------------------------------------------------------------------------------


@dataclass
class Stats:
    faults: Counter[str] = field(default_factory=Counter)
    broken: list[str] = field(default_factory=list)
    convergence: list[float] = field(default_factory=list)
    final_convergence: dict[str, float] = field(default_factory=dict)
    writes_at_rest: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)


class Soak:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args, self.folder = args, folder
        self.rng = random.Random(args.seed)  # noqa: S311  # replayable, not secret
        self.stats = Stats()
        self.history = (Path(args.history) if args.history else folder / f"history-seed{args.seed}.jsonl").open("a")
        self.postgres = Postgres(folder / "postgres")
        self.redis_port = free_port()
        self.procs: dict[str, Proc] = {}
        self.cluster: Cluster | None = None
        self.stop_load = asyncio.Event()
        self.hard_stop = asyncio.Event()  # the load's retries give up too
        self.stopping_churn = False
        self.api_down = False
        self.busy: set[str] = set()
        self.active_faults = 0
        self.last_fault_end = _now()
        self.lp_seq = 0
        #: (namespace, name) -> (when the spec last changed, its generation)
        self.pending: dict[tuple[str, str], tuple[float, int]] = {}
        self.deleted_uids: set[str] = set()
        self.progress_acked: set[str] = set()
        self.progress_sent: set[str] = set()
        self.buyers: dict[str, dict[str, Any]] = {}
        self.started = _now()

    # -- recording ------------------------------------------------------------------------------------------

    def record(self, op: str, **fields: Any) -> None:
        self.history.write(json.dumps({"t": round(_now() - self.started, 3), "op": op, **fields}) + "\n")

    def broke(self, what: str) -> None:
        self.stats.broken.append(what)
        self.record("invariant_broken", what=what)
        print(f"  BROKEN: {what}", flush=True)

    # -- set-up ---------------------------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def app_url(self, database: str = "soak") -> str:
        return f"postgresql://soak_app@127.0.0.1:{self.postgres.port}/{database}"

    def admin_db_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.postgres.port}/soak"

    def _redis_proc(self) -> Proc:
        folder = self.folder / "redis"
        folder.mkdir(exist_ok=True)
        return Proc("redis", "redis", [
            shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(folder),
            "--protected-mode", "yes"], dict(os.environ), folder / "log")

    async def setup_data(self) -> None:
        self.postgres.init()
        self.postgres.start()
        redis = self.procs["redis"] = self._redis_proc()
        redis.start()
        await _until(lambda: _redis_ping(self.redis_url), 20, "the soak's Redis answers")
        admin = await asyncpg.connect(self.postgres.admin_url)
        try:
            await admin.execute('CREATE DATABASE "soak"')
        finally:
            await admin.close()
        await migrate(self.admin_db_url())
        admin = await asyncpg.connect(self.admin_db_url())
        try:
            await admin.execute("CREATE ROLE soak_app LOGIN; GRANT learner_app TO soak_app")
        finally:
            await admin.close()
        for tenant in TENANTS:
            await seed(self.admin_db_url(), self.redis_url, tenant)

    def _service_env(self, port: int, metrics_port: int, pod: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "DATABASE", "REDIS"))}
        return {**env, "DATABASE_URL": self.app_url(), "REDIS_URL": self.redis_url, "NODE_ENV": "development",
                "JWT_SECRET": JWT_SECRET, "PAYMENT_WEBHOOK_SECRET": WEBHOOK_SECRET, "PORT": str(port),
                "METRICS_PORT": str(metrics_port), "PROGRESS_STREAM": STREAM, "LOG_FORMAT": "text",
                "RATE_LIMIT_PER_LEARNER": "1000000", "RATE_LIMIT_PER_TENANT": "1000000", "POD_NAME": pod,
                "EVALUATOR_CLAIM_IDLE_SECONDS": "15", "DATABASE_POOL_MAX": "5"}

    def start_services(self) -> None:
        logs = self.folder / "logs"
        logs.mkdir(exist_ok=True)
        for i in range(2):
            port, metrics = free_port(), free_port()
            self.procs[f"api-{i}"] = Proc(
                f"api-{i}", "api", [str(BIN / "learner-api"), "serve", "--host", "127.0.0.1", "--drain-seconds", "0"],
                self._service_env(port, metrics, f"api-{i}"), logs / f"api-{i}.log",
                ready_url=f"http://127.0.0.1:{port}/readyz")
            metrics = free_port()
            self.procs[f"evaluator-{i}"] = Proc(
                f"evaluator-{i}", "evaluator", [str(BIN / "learner-api"), "evaluator"],
                self._service_env(free_port(), metrics, f"evaluator-{i}"), logs / f"evaluator-{i}.log",
                ready_url=f"http://127.0.0.1:{metrics}/livez")
        for proc in self.procs.values():
            if proc.kind in ("api", "evaluator"):
                proc.start()

    def start_operators(self) -> None:
        assert self.cluster is not None
        logs = self.folder / "logs"
        kubeconfig = operator_kubeconfig(self.cluster, self.folder)
        for i in range(self.args.replicas):
            health = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
            env.update(KUBECONFIG=str(kubeconfig), POD_NAME=f"replica-{i}")
            self.procs[f"operator-{i}"] = proc = Proc(f"operator-{i}", "operator", [
                str(BIN / "learner-operator"), "run", "--all-namespaces", "--lease-namespace", LEASE_NS,
                "--lease-seconds", "5", "--liveness", f"http://127.0.0.1:{health}/healthz",
                "--metrics-port", str(free_port()), "--resync-seconds", str(self.args.resync_seconds)],
                env, logs / f"operator-{i}.log", ready_url=f"http://127.0.0.1:{health}/healthz")
            proc.start()

    def prepare_cluster(self) -> None:
        assert self.cluster is not None
        for ns in (*NAMESPACES, LEASE_NS):
            self.cluster.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        data = {"DATABASE_URL": "postgresql://learner:soak@db.invalid:5432/learn?sslmode=require",
                "REDIS_URL": "rediss://:soak@cache.invalid:6380/0", "JWT_SECRET": "soak-signing-key-0123456789abcdef"}
        for ns in NAMESPACES:
            self.cluster.put({"apiVersion": "v1", "kind": "Secret",
                              "metadata": {"name": "ai-platform-secrets", "namespace": ns},
                              "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    async def wait_ready(self, names: list[str] | None = None, within: float = 60.0) -> list[str]:
        """The processes (all by default) that did not answer their readiness URL within ``within``."""
        targets = [self.procs[n] for n in (names or list(self.procs)) if self.procs[n].ready_url]
        deadline = _now() + within
        late = []
        async with httpx.AsyncClient(timeout=2) as client:
            for proc in targets:
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        assert proc.ready_url is not None
                        if (await client.get(proc.ready_url)).status_code == 200:
                            break
                    if _now() > deadline:
                        late.append(proc.name)
                        break
                    await asyncio.sleep(0.3)
        return late

    # -- Kubernetes: the controllers the emulator lacks, churn, convergence ----------------------------------

    def play_controllers(self) -> None:
        """The Job controller (a migration succeeds), the HPA (2 replicas) and the Deployment controller."""
        cluster = self.cluster
        assert cluster is not None
        version = bundled()[-1].version
        for ns in NAMESPACES:
            for job in cluster.all("batch/v1", "jobs", ns):
                if not (job.get("status") or {}).get("conditions"):
                    with contextlib.suppress(KeyError):
                        cluster.finish_job(ns, job["metadata"]["name"], succeeded=True,
                                           message=f"learner-api migrate: schema version {version} (applied all)")
            hpas = {h["spec"]["scaleTargetRef"]["name"] for h in cluster.all("autoscaling/v2",
                                                                             "horizontalpodautoscalers", ns)}
            for deployment in cluster.all("apps/v1", "deployments", ns):
                name = deployment["metadata"]["name"]
                with contextlib.suppress(KeyError):
                    if name in hpas and "replicas" not in deployment["spec"]:
                        deployment = cluster.scale(ns, name, 2)
                    status = deployment.get("status") or {}
                    if status.get("observedGeneration") != deployment["metadata"].get("generation") or \
                            status.get("readyReplicas") != deployment["spec"].get("replicas", 1):
                        cluster.set_deployment_status(ns, name)

    def platforms(self) -> list[dict[str, Any]]:
        assert self.cluster is not None
        return [lp for ns in NAMESPACES for lp in self.cluster.all("learner.dev/v1alpha1", "learnerplatforms", ns)]

    def owned(self) -> dict[str, set[tuple[str, str]]]:
        """(kind, name) of every object owned by a LearnerPlatform, by the owner's uid."""
        assert self.cluster is not None
        out: dict[str, set[tuple[str, str]]] = {}
        for plural, api_version in _CHILD_PLURALS.items():
            for ns in NAMESPACES:
                for obj in self.cluster.all(api_version, plural, ns):
                    for ref in obj["metadata"].get("ownerReferences") or []:
                        if ref.get("kind") == "LearnerPlatform":
                            out.setdefault(ref["uid"], set()).add((obj["kind"], obj["metadata"]["name"]))
        return out

    def converged(self, lp: dict[str, Any], owned: dict[str, set[tuple[str, str]]]) -> str:
        """Empty when ``lp`` is as its spec asks (children, status); else what is not (yet)."""
        meta, status = lp["metadata"], lp.get("status") or {}
        if status.get("observedGeneration") != meta.get("generation"):
            return f"observedGeneration {status.get('observedGeneration')} != generation {meta.get('generation')}"
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        spec = LearnerPlatformSpec.model_validate(lp["spec"])
        if spec.paused:
            reasons = {c.get("reason") for c in conditions.values()}
            return "" if "Paused" in reasons else f"paused but no condition says so: {sorted(map(str, reasons))}"
        ready = conditions.get("Ready", {})
        if ready.get("status") != "True":
            return f"Ready={ready.get('status')} {ready.get('reason')}: {ready.get('message')}"
        platform = Platform(meta["name"], meta["namespace"], meta["uid"], spec)
        wanted = {(m["kind"], m["metadata"]["name"]) for m in children(platform, unserved=UNSERVED)}
        have = {k for k in owned.get(meta["uid"], set()) if k[0] not in ("Job", "Pod")}
        if wanted != have:
            return f"children: missing {sorted(wanted - have)}, extra {sorted(have - wanted)}"
        assert self.cluster is not None
        api = self.cluster.get("apps/v1", "deployments", meta["namespace"], f"{meta['name']}-learner-api") or {}
        images = [c["image"] for c in api.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])]
        if not images or not images[0].endswith(":" + spec.image.tag):
            return f"learner-api runs {images}, the spec says {spec.image.tag}"
        return ""

    def check_zombies(self, owned: dict[str, set[tuple[str, str]]]) -> None:
        for uid in set(owned) & self.deleted_uids:
            self.broke(f"zombie: {sorted(owned[uid])} owned by a deleted LearnerPlatform (uid {uid}) re-created")
            self.deleted_uids.discard(uid)  # reported once

    def _touch(self, lp: dict[str, Any]) -> None:
        meta = lp["metadata"]
        self.pending[(meta["namespace"], meta["name"])] = (_now(), int(meta.get("generation") or 1))

    def churn_once(self) -> None:
        cluster, rng = self.cluster, self.rng
        assert cluster is not None
        ns = rng.choice(NAMESPACES)
        existing = cluster.all("learner.dev/v1alpha1", "learnerplatforms", ns)
        op = rng.choice(["create", "create", "tag", "autoscaling", "evaluator", "pause", "delete"])
        if op == "create" or not existing:
            if len(existing) >= self.args.platforms_per_namespace:
                op = "delete"
            else:
                self.lp_seq += 1
                doc = load(EXAMPLES / "01-minimal.yaml")
                doc["metadata"] = {"name": f"lp-{self.lp_seq}", "namespace": ns}
                doc["spec"]["image"]["tag"] = f"{rng.getrandbits(160):040x}"
                lp = cluster.put(doc)
                self._touch(lp)
                self.record("lp_create", ns=ns, name=doc["metadata"]["name"], uid=lp["metadata"]["uid"])
                return
        lp = rng.choice(existing)
        name, spec = lp["metadata"]["name"], lp["spec"]
        patch: dict[str, Any]
        if op == "delete":
            cluster.remove("learner.dev/v1alpha1", "learnerplatforms", ns, name)
            self.deleted_uids.add(lp["metadata"]["uid"])
            self.pending.pop((ns, name), None)
            self.record("lp_delete", ns=ns, name=name, uid=lp["metadata"]["uid"])
            return
        if op == "tag":
            patch = {"image": {"tag": f"{rng.getrandbits(160):040x}"}}
        elif op == "autoscaling":
            on = not ((spec.get("learnerApi") or {}).get("autoscaling") or {}).get("enabled", True)
            patch = {"learnerApi": {"autoscaling": {"enabled": on}, "replicas": rng.randint(1, 4)}}
        elif op == "evaluator":
            patch = {"evaluator": {"enabled": not (spec.get("evaluator") or {}).get("enabled", True)}}
        else:
            patch = {"paused": not spec.get("paused", False)}
        try:
            lp = cluster.edit("learner.dev/v1alpha1", "learnerplatforms", ns, name, {"spec": patch})
        except kmock.KubernetesError as exc:  # refused by admission: a client error, recorded as such
            self.record("lp_edit_refused", ns=ns, name=name, patch=patch, error=str(exc))
            return
        self._touch(lp)
        self.record("lp_edit", ns=ns, name=name, patch=patch, generation=lp["metadata"].get("generation"))

    async def kube_loop(self) -> None:
        """Play the controllers, churn the platforms, measure convergence, watch for zombies: until the end."""
        next_churn = _now() + 1
        while not self.stop_load.is_set():
            if not self.api_down:
                self.play_controllers()
                if _now() >= next_churn and not self.stopping_churn:
                    self.churn_once()
                    next_churn = _now() + self.rng.uniform(1.0, self.args.churn_seconds * 2)
                self.measure_convergence()
            await asyncio.sleep(0.5)

    def measure_convergence(self) -> None:
        owned = self.owned()
        self.check_zombies(owned)
        for lp in self.platforms():
            key = (lp["metadata"]["namespace"], lp["metadata"]["name"])
            if key in self.pending and not self.converged(lp, owned):
                since, generation = self.pending.pop(key)
                if int(lp["metadata"].get("generation") or 1) >= generation:
                    self.stats.convergence.append(_now() - since)
                else:
                    self.pending[key] = (since, generation)

    # -- load -------------------------------------------------------------------------------------------

    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p.env['PORT']}" for p in self.procs.values() if p.kind == "api"]

    async def _send(self, client: httpx.AsyncClient, method: str, path: str, *, what: str,
                    accept: Callable[[httpx.Response], bool], attempts: int = 40, deadline: float = 90.0,
                    **kwargs: Any) -> httpx.Response | None:
        """Send, retrying the same request (same ids, same key) on errors, 409, 429 and 5xx: bounded."""
        end = _now() + deadline
        delay = 0.1
        for _ in range(attempts):
            url = self.rng.choice(self.api_urls())
            try:
                response = await client.request(method, url + path, **kwargs)
                self.stats.requests[f"{what} {response.status_code}"] += 1
                if accept(response):
                    return response
                if response.status_code < 500 and response.status_code not in (408, 409, 429):
                    return response  # a client error: not retried
            except httpx.HTTPError as exc:
                self.stats.requests[f"{what} {type(exc).__name__}"] += 1
            if _now() + delay > end or self.hard_stop.is_set():
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        return None

    @staticmethod
    def token(learner: str, tenant: str) -> dict[str, str]:
        claims = {"sub": learner, "tenant": tenant, "exp": int(time.time()) + 3600}
        return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET)}"}

    async def progress_worker(self, worker: int) -> None:
        rng = random.Random(f"{self.args.seed}-progress-{worker}")  # noqa: S311
        async with httpx.AsyncClient(timeout=5) as client:
            while not self.stop_load.is_set():
                tenant = rng.choice(TENANTS)
                learner = f"learner-{rng.randint(1, 200)}"
                ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(rng.randint(1, 5))]
                events = [{"id": i, "verb": rng.choice(["lesson_viewed", "lesson_completed"]),
                           "lesson_id": rng.choice(LESSONS), "occurred_at": datetime.now(UTC).isoformat()}
                          for i in ids]
                self.progress_sent.update(ids)
                body = {"events": events}
                response = await self._send(client, "POST", "/v1/progress", what="progress",
                                            accept=lambda r: r.status_code == 202, json=body,
                                            headers=self.token(learner, tenant))
                ok = response is not None and response.status_code == 202
                if ok:
                    self.progress_acked.update(ids)
                    if rng.random() < 0.1:  # the answer was "lost": the client sends the batch again
                        await self._send(client, "POST", "/v1/progress", what="progress-again",
                                         accept=lambda r: r.status_code == 202, json=body,
                                         headers=self.token(learner, tenant), attempts=3, deadline=10)
                self.record("progress", tenant=tenant, learner=learner, ids=ids, acked=ok,
                            status=None if response is None else response.status_code)
                await asyncio.sleep(rng.uniform(0.1, 0.5))

    async def purchase_worker(self) -> None:
        rng = random.Random(f"{self.args.seed}-purchase")  # noqa: S311
        async with httpx.AsyncClient(timeout=8) as client:
            while not self.stop_load.is_set():
                tenant, n = rng.choice(TENANTS), len(self.buyers)
                learner, key = f"buyer-{n}", str(uuid.UUID(int=rng.getrandbits(128), version=4))
                buyer: dict[str, Any] = {"tenant": tenant, "key": key, "order": None, "paid": False}
                self.buyers[learner] = buyer
                headers = {**self.token(learner, tenant), "Idempotency-Key": key}
                response = await self._send(client, "POST", "/v1/checkout", what="checkout",
                                            accept=lambda r: r.status_code in (200, 201),
                                            json={"product_id": PRODUCT}, headers=headers)
                if response is not None and response.status_code in (200, 201):
                    order = response.json()["order"]
                    buyer["order"] = order["id"]
                    event = {"id": f"evt-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
                             "type": "payment.succeeded",
                             "data": {"tenant": tenant, "order_id": order["id"],
                                      "amount_cents": order["amount_cents"], "currency": order["currency"]}}
                    raw = json.dumps(event).encode()
                    for _ in range(2 if rng.random() < 0.2 else 1):  # providers deliver at least once
                        hook = await self._send(client, "POST", "/v1/webhooks/payments", what="webhook",
                                                accept=lambda r: r.status_code == 200, content=raw,
                                                headers={"Content-Type": "application/json",
                                                         HEADER: sign(WEBHOOK_SECRET, raw)})
                        buyer["paid"] = buyer["paid"] or (hook is not None and hook.status_code == 200)
                self.record("purchase", learner=learner, **buyer,
                            status=None if response is None else response.status_code)
                await asyncio.sleep(rng.uniform(0.5, 2.0))

    # -- faults -----------------------------------------------------------------------------------------

    def leader(self) -> str:
        assert self.cluster is not None
        lease = self.cluster.get("coordination.k8s.io/v1", "leases", LEASE_NS, LEASE) or {}
        holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
        return holder.replace("replica-", "operator-") if holder else ""

    def span(self, low: float, high: float) -> float:
        """A fault's duration from the seed, at most ``--longest-fault`` seconds (same draws whatever the cap)."""
        return min(self.rng.uniform(low, high), self.args.longest_fault)

    async def _restart_later(self, proc: Proc, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))
        proc.start()
        proc.restarts += 1

    async def fault(self, kind: str) -> None:
        rng, cluster = self.rng, self.cluster
        assert cluster is not None
        operators = [p for p in self.procs.values() if p.kind == "operator"]
        if kind in ("kill_operator_leader", "kill_operator_follower", "freeze_operator"):
            leader = self.leader()
            pool = [p for p in operators if p.running() and not p.frozen and p.name not in self.busy and
                    ((p.name == leader) == (kind == "kill_operator_leader") or kind == "freeze_operator")]
            if not pool:
                return
            proc = rng.choice(pool)
            self.busy.add(proc.name)
            self.record("fault", kind=kind, target=proc.name, leader=leader)
            try:
                if kind == "freeze_operator":
                    proc.send(signal.SIGSTOP)
                    proc.frozen = True
                    await asyncio.sleep(self.span(2, 30))
                    proc.send(signal.SIGCONT)
                    proc.frozen = False
                else:
                    proc.kill9()
                    await self._restart_later(proc, 0.5, 10)
            finally:
                self.busy.discard(proc.name)
        elif kind in ("kill_api", "kill_evaluator"):
            pool = [p for p in self.procs.values() if p.kind == kind.split("_")[1] and p.running()
                    and p.name not in self.busy]
            if not pool:
                return
            proc = rng.choice(pool)
            self.busy.add(proc.name)
            self.record("fault", kind=kind, target=proc.name)
            try:
                proc.kill9()
                await self._restart_later(proc, 0.5, 5)
            finally:
                self.busy.discard(proc.name)
        elif kind in ("freeze_postgres", "restart_postgres", "kill_postgres"):
            self.record("fault", kind=kind)
            if kind == "freeze_postgres":
                self.postgres.freeze()
                await asyncio.sleep(self.span(2, 20))
                self.postgres.thaw()
            else:
                await asyncio.to_thread(self.postgres.stop, "fast" if kind == "restart_postgres" else "immediate")
                await asyncio.sleep(rng.uniform(0.5, 5))
                await asyncio.to_thread(self.postgres.start)
        elif kind in ("freeze_redis", "restart_redis", "kill_redis"):
            redis = self.procs["redis"]
            self.record("fault", kind=kind)
            if kind == "freeze_redis":
                redis.send(signal.SIGSTOP)
                await asyncio.sleep(self.span(2, 15))
                redis.send(signal.SIGCONT)
            else:
                if kind == "kill_redis":
                    redis.kill9()
                else:
                    redis.stop()
                await self._restart_later(redis, 0.5, 5)
        elif kind == "watches_dropped":
            self.record("fault", kind=kind)
            cluster.hang_up()
        elif kind in ("apiserver_restart", "apiserver_outage"):
            seconds = self.span(1, 8) if kind == "apiserver_restart" else self.span(10, 60)
            self.record("fault", kind=kind, seconds=round(seconds, 1))
            self.api_down = kind == "apiserver_outage"
            try:
                async with cluster.watch_gap(down=self.api_down):
                    await asyncio.sleep(seconds)
            finally:
                self.api_down = False
        elif kind in ("child_deleted", "child_edited"):
            self.someone_else(kind)
        self.stats.faults[kind] += 1

    def someone_else(self, kind: str) -> None:
        cluster = self.cluster
        assert cluster is not None
        lps = [lp for lp in self.platforms() if not lp["spec"].get("paused")]
        if not lps:
            return
        lp = self.rng.choice(lps)
        ns, name = lp["metadata"]["namespace"], lp["metadata"]["name"]
        if kind == "child_deleted":
            plural, api_version = self.rng.choice([("configmaps", "v1"), ("services", "v1"),
                                                   ("deployments", "apps/v1"), ("networkpolicies",
                                                                                "networking.k8s.io/v1")])
            candidates = [o for o in cluster.all(api_version, plural, ns)
                          if any(r.get("uid") == lp["metadata"]["uid"] for r in o["metadata"].get("ownerReferences")
                                 or [])]
            if candidates:
                victim = self.rng.choice(candidates)["metadata"]["name"]
                with contextlib.suppress(KeyError):
                    cluster.remove(api_version, plural, ns, victim)
                self.record("fault", kind=kind, target=f"{plural}/{ns}/{victim}")
        else:
            target = f"{name}-learner-api"

            def mutate(obj: dict[str, Any]) -> None:
                obj["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/someone/else:latest"

            with contextlib.suppress(KeyError):
                cluster.update("apps/v1", "deployments", ns, target, mutate)
                self.record("fault", kind=kind, target=f"deployments/{ns}/{target}")
        self.pending.setdefault((ns, name), (_now(), int(lp["metadata"].get("generation") or 1)))

    FAULTS = ("kill_operator_leader", "kill_operator_follower", "freeze_operator", "kill_api", "kill_evaluator",
              "freeze_postgres", "restart_postgres", "kill_postgres", "freeze_redis", "restart_redis", "kill_redis",
              "watches_dropped", "apiserver_restart", "apiserver_outage", "child_deleted", "child_edited")
    TARGET: ClassVar[dict[str, str]] = {
        "freeze_postgres": "postgres", "restart_postgres": "postgres", "kill_postgres": "postgres",
        "freeze_redis": "redis", "restart_redis": "redis", "kill_redis": "redis",
        "apiserver_restart": "kube", "apiserver_outage": "kube", "watches_dropped": "kube"}

    async def fault_loop(self, until: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        while _now() < until:
            await asyncio.sleep(self.rng.uniform(2, self.args.fault_seconds * 2))
            if _now() >= until or len(tasks) >= self.args.max_faults:
                continue
            free = [k for k in self.FAULTS if self.TARGET.get(k, k) not in self.busy]
            kind = self.rng.choice(free)
            target = self.TARGET.get(kind)

            async def run(kind: str = kind, target: str | None = target) -> None:
                if target:
                    self.busy.add(target)
                try:
                    await self.fault(kind)
                except Exception as exc:  # a fault that could not be injected is reported
                    self.record("fault_failed", kind=kind, error=repr(exc))
                    print(f"  fault {kind} could not be injected: {exc!r}", flush=True)
                finally:
                    if target:
                        self.busy.discard(target)
                    self.last_fault_end = _now()

            task = asyncio.create_task(run())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=120)
        self.last_fault_end = _now()

    # -- supervision ------------------------------------------------------------------------------------

    async def supervise(self) -> None:
        """Restart a process that died by itself (a kubelet would), sample RSS: until the end."""
        while not self.hard_stop.is_set():
            for proc in list(self.procs.values()):
                if proc.wanted and proc.process is not None and proc.process.poll() is not None:
                    self.stats.crashes.append(f"{proc.name} exited by itself ({proc.process.returncode})")
                    self.broke(f"{proc.name} exited by itself (status {proc.process.returncode}; see {proc.log}): "
                               "restarted, as the kubelet would")
                    proc.start()
                    proc.restarts += 1
                proc.rss_mib()
            await asyncio.sleep(2)

    # -- the run ------------------------------------------------------------------------------------------

    async def run(self) -> int:
        args = self.args
        print(f"soak: seed {args.seed}, {args.minutes} min of load and faults, folder {self.folder}", flush=True)
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.setup_data()
            self.cluster = cluster = standard_cluster(load(CRD_FILE))
            async with cluster, kmock.Server(cluster):
                self.prepare_cluster()
                self.start_services()
                self.start_operators()
                late = await self.wait_ready(within=90)
                if late:
                    self.broke(f"not ready at start: {late}")
                tasks = [asyncio.create_task(self.supervise())]
                kube = asyncio.create_task(self.kube_loop())
                load_tasks = [asyncio.create_task(self.progress_worker(i)) for i in range(args.progress_workers)]
                load_tasks.append(asyncio.create_task(self.purchase_worker()))
                tasks += [kube, *load_tasks]
                await self.fault_loop(_now() + args.minutes * 60)
                self.stopping_churn = True
                print(f"faults over ({sum(self.stats.faults.values())} injected); stopping the load", flush=True)
                self.stop_load.set()
                await asyncio.wait(load_tasks, timeout=120)
                self.hard_stop.set()
                await asyncio.wait(load_tasks, timeout=30)
                await asyncio.wait_for(kube, 30)
                await self.finish()
                cluster.hang_up()
        finally:
            self.stop_load.set()
            self.hard_stop.set()
            for task in tasks:
                task.cancel()
            for proc in self.procs.values():
                proc.stop()
            self.postgres.stop("immediate")
        return self.report()

    async def finish(self) -> None:
        """After the last fault: convergence, readiness, the drained stream, then the writes at rest."""
        assert self.cluster is not None
        # every process that should run is back and ready
        late = await self.wait_ready(within=60)
        if late:
            self.broke(f"not ready 60 s after the last fault: {late}")
        # convergence within 60 s of the last fault
        deadline = self.last_fault_end + CONVERGE_SECONDS
        waiting: dict[str, str] = {}
        while True:
            self.play_controllers()
            owned = self.owned()
            self.check_zombies(owned)
            waiting = {}
            for lp in self.platforms():
                key = f"{lp['metadata']['namespace']}/{lp['metadata']['name']}"
                why = self.converged(lp, owned)
                if why:
                    waiting[key] = why
                elif key not in self.stats.final_convergence:
                    self.stats.final_convergence[key] = max(0.0, _now() - self.last_fault_end)
            if not waiting or _now() > deadline:
                break
            await asyncio.sleep(0.5)
        for key, why in waiting.items():
            self.broke(f"{key} not converged {CONVERGE_SECONDS:.0f} s after the last fault: {why}")
        await self.drain()
        # A replica frozen mid-reconcile may still send, once thawed, the write it had checked its lease for
        # (no lease fences that), and the leader then repairs what it wrote: both are the last fault's
        # convergence, not writes at rest. So rest begins once nothing but lease renewals was written for
        # SETTLE_SECONDS; still writing a minute after convergence is a broken invariant of its own.
        if not await self.settled(within=CONVERGE_SECONDS):
            self.broke(f"the operator still writes {CONVERGE_SECONDS:.0f} s after convergence")
        # at rest: no operator writes (lease renewals aside) for --quiet-seconds
        start = len(self.cluster.log)
        await asyncio.sleep(self.args.quiet_seconds)
        self.play_controllers()  # nothing to do at rest; a write it needed would show below
        for request in self.cluster.mutating_requests(start):
            if request.resource is None or request.resource.plural != "leases":
                self.stats.writes_at_rest.append(f"{request.method.value} {request.url}")
        if self.stats.writes_at_rest:
            self.broke(f"{len(self.stats.writes_at_rest)} operator writes in {self.args.quiet_seconds:.0f} s "
                       f"at rest: {self.stats.writes_at_rest[:5]}")
        owned = self.owned()
        self.check_zombies(owned)
        for lp in self.platforms():
            if why := self.converged(lp, owned):
                self.broke(f"{lp['metadata']['namespace']}/{lp['metadata']['name']} diverged at rest: {why}")
        await self.check_data()

    def writes_since(self, start: int) -> int:
        assert self.cluster is not None
        return sum(1 for request in self.cluster.mutating_requests(start)
                   if request.resource is None or request.resource.plural != "leases")

    async def settled(self, within: float) -> bool:
        """Until the operator wrote nothing but lease renewals for SETTLE_SECONDS; False after ``within``."""
        assert self.cluster is not None
        deadline, mark, since = _now() + within, len(self.cluster.log), _now()
        while _now() - since < SETTLE_SECONDS:
            if _now() > deadline:
                return False
            await asyncio.sleep(0.25)
            self.play_controllers()
            if self.writes_since(mark):
                mark, since = len(self.cluster.log), _now()
        return True

    async def drain(self) -> None:
        """Until the evaluators have stored every entry of the stream (bounded: 180 s)."""
        client = aioredis.from_url(self.redis_url)
        try:
            deadline = _now() + 180
            while _now() < deadline:
                groups = {g["name"].decode(): g for g in await client.xinfo_groups(STREAM)}
                group = groups.get(CONSUMER_GROUP)
                if group and group["pending"] == 0 and (group.get("lag") or 0) == 0:
                    return
                await asyncio.sleep(1)
            self.broke(f"the evaluators did not drain the stream within 180 s: {group}")
        finally:
            await client.aclose()

    async def check_data(self) -> None:
        connection = await asyncpg.connect(self.admin_db_url())
        try:
            stored = Counter(str(r["event_id"]) for r in await connection.fetch("SELECT event_id FROM progress_events"))
            orders = Counter(r["learner_id"] for r in await connection.fetch("SELECT learner_id FROM orders"))
            rows = await connection.fetch("SELECT learner_id, status FROM orders")
            paid = {r["learner_id"]: r["status"] for r in rows}
            entitled = Counter(r["learner_id"] for r in await connection.fetch("SELECT learner_id FROM entitlements"))
        finally:
            await connection.close()
        self.stored_events = len(stored)
        missing = self.progress_acked - set(stored)
        if missing:
            self.broke(f"{len(missing)} progress events answered 202 are not stored, e.g. {sorted(missing)[:3]}")
        twice = [k for k, n in stored.items() if n > 1]
        if twice:
            self.broke(f"{len(twice)} progress events stored more than once, e.g. {twice[:3]}")
        unknown = set(stored) - self.progress_sent
        if unknown:
            self.broke(f"{len(unknown)} stored progress events were never sent, e.g. {sorted(unknown)[:3]}")
        client = aioredis.from_url(self.redis_url)
        try:
            dead = await client.xlen(dead_letters(STREAM))
            self.redis_keys = await client.dbsize()
            keys = [k async for k in client.scan_iter(count=1000)]
            without_ttl = []
            for start in range(0, len(keys), 1000):
                async with client.pipeline(transaction=False) as pipe:
                    for key in keys[start:start + 1000]:
                        pipe.ttl(key)
                    ttls = await pipe.execute()
                without_ttl += [k for k, ttl in zip(keys[start:start + 1000], ttls, strict=True) if ttl == -1]
        finally:
            await client.aclose()
        if dead:
            self.broke(f"{dead} valid progress events dead-lettered")
        self.redis_keys_without_ttl = len(without_ttl)
        if len(without_ttl) > 50:
            self.broke(f"{len(without_ttl)} Redis keys never expire (bounded by 50): {sorted(without_ttl)[:5]}")
        for learner, buyer in self.buyers.items():
            if orders[learner] > 1:
                self.broke(f"{orders[learner]} orders for one Idempotency-Key ({learner}, key {buyer['key']})")
            if buyer["paid"] and (paid.get(learner) != "paid" or entitled[learner] != 1):
                self.broke(f"{learner}'s confirmed payment: order {paid.get(learner)}, "
                           f"{entitled[learner]} entitlements (1 expected)")
        for proc in self.procs.values():
            bound = RSS_BOUND_MIB.get(proc.kind)
            if bound and proc.peak_rss_mib > bound:
                self.broke(f"{proc.name} reached {proc.peak_rss_mib:.0f} MiB RSS (bound {bound:.0f})")

    stored_events = 0
    redis_keys = 0
    redis_keys_without_ttl = 0

    def report(self) -> int:
        s = self.stats
        conv = sorted(s.convergence)

        def pct(q: float) -> str:
            return f"{conv[min(len(conv) - 1, int(q * len(conv)))]:.1f}" if conv else "-"

        final = sorted(s.final_convergence.values())
        rss: dict[str, float] = {}
        for proc in self.procs.values():
            rss[proc.kind] = max(rss.get(proc.kind, 0.0), proc.peak_rss_mib)
        summary = {
            "seed": self.args.seed, "minutes": self.args.minutes,
            "faults": dict(sorted(s.faults.items())), "faults_total": sum(s.faults.values()),
            "events_sent": len(self.progress_sent), "events_acked": len(self.progress_acked),
            "events_stored": self.stored_events,
            "purchases": len(self.buyers), "orders": sum(1 for b in self.buyers.values() if b["order"]),
            "paid": sum(1 for b in self.buyers.values() if b["paid"]),
            "convergence_s": {"n": len(conv), "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
            "final_convergence_s": {"platforms": len(final), "max": round(final[-1], 1) if final else None,
                                    "median": round(statistics.median(final), 1) if final else None},
            "writes_at_rest": len(s.writes_at_rest), "quiet_seconds": self.args.quiet_seconds,
            "peak_rss_mib": {k: round(v) for k, v in sorted(rss.items())},
            "redis_keys": self.redis_keys, "redis_keys_without_ttl": self.redis_keys_without_ttl,
            "crashes": s.crashes, "requests": dict(sorted(s.requests.items())),
            "broken": s.broken,
        }
        self.record("report", **summary)
        self.history.close()
        print("\n== soak report")
        print(json.dumps(summary, indent=1))
        if s.broken:
            print(f"\n{len(s.broken)} invariant(s) broke; replay with: python -m bench.soak --seed {self.args.seed} "
                  f"--minutes {self.args.minutes}")
            return 1
        print("\nall invariants held")
        return 0


_CHILD_PLURALS = {"serviceaccounts": "v1", "configmaps": "v1", "services": "v1", "deployments": "apps/v1",
                  "horizontalpodautoscalers": "autoscaling/v2", "poddisruptionbudgets": "policy/v1",
                  "networkpolicies": "networking.k8s.io/v1", "jobs": "batch/v1",
                  "servicemonitors": "monitoring.coreos.com/v1"}


async def _redis_ping(url: str) -> bool:
    client = aioredis.from_url(url)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = _now() + within
    while not await check():
        if _now() > deadline:
            raise SystemExit(f"error: not within {within:.0f} s: {what}")
        await asyncio.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="load and faults this long (then the checks)")
    parser.add_argument("--seed", type=int, default=None, help="the faults' and the load's seed (default: random)")
    parser.add_argument("--quiet-seconds", type=float, default=60.0, help="at rest, this long with no operator write")
    parser.add_argument("--replicas", type=int, default=3, help="operator replicas")
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="the operator's full resync period")
    parser.add_argument("--progress-workers", type=int, default=4)
    parser.add_argument("--platforms-per-namespace", type=int, default=3)
    parser.add_argument("--churn-seconds", type=float, default=3.0, help="mean time between platform changes")
    parser.add_argument("--fault-seconds", type=float, default=8.0, help="mean time between faults")
    parser.add_argument("--max-faults", type=int, default=3, help="faults under way at once")
    parser.add_argument("--longest-fault", type=float, default=60.0,
                        help="cap on a freeze's or an API server outage's seconds (the smoke run's: 15)")
    parser.add_argument("--history", help="the JSONL history (default: in the soak's folder)")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, data) even when all held")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1_000_000)
    if args.minutes <= 0 or args.quiet_seconds < 0 or args.replicas < 1:
        parser.error("--minutes must be > 0, --quiet-seconds >= 0, --replicas >= 1")
    if os.environ.get("KUBEBUILDER_ASSETS"):
        print("note: the soak runs against the emulator; the real control plane (KUBEBUILDER_ASSETS) is not "
              "supported by it yet", file=sys.stderr)
    folder = Path(tempfile.mkdtemp(prefix=f"soak-{args.seed}-"))
    folder.chmod(0o755)  # PostgreSQL runs as its own user under it
    code = 2
    try:
        code = asyncio.run(Soak(args, folder).run())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        if code == 0 and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"logs, data and history kept in {folder}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
