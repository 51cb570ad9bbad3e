"""The load, bounded: progress batches and purchases as real clients send them (retried with the same event
ids and Idempotency-Key), and LearnerPlatform churn in the soak's namespaces."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import kmock

from bench.soak.common import JWT_SECRET, LESSONS, NAMESPACES, PRODUCT, TENANTS, WEBHOOK_SECRET, now
from bench.soak.history import History
from bench.soak.kube import KubeApi
from bench.soak.system import System
from learner_api.webhook_signature import HEADER, sign
from tests.conftest import EXAMPLES, load


class Clients:
    """Progress and purchase workers against the learner-api processes; what was sent and acknowledged."""

    def __init__(self, system: System, rng: random.Random, history: History, seed: int) -> None:
        self.system, self.rng, self.history, self.seed = system, rng, history, seed
        self.stats = history.stats
        self.stop_load = asyncio.Event()
        self.hard_stop = asyncio.Event()  # the load's retries give up too
        self.progress_acked: set[str] = set()
        self.progress_sent: set[str] = set()
        self.buyers: dict[str, dict[str, Any]] = {}

    def record(self, op: str, **fields: Any) -> None:
        self.history.record(op, **fields)

    def api_urls(self) -> list[str]:
        return self.system.api_urls()

    async def _send(self, client: httpx.AsyncClient, method: str, path: str, *, what: str,
                    accept: Callable[[httpx.Response], bool], attempts: int = 40, deadline: float = 90.0,
                    **kwargs: Any) -> httpx.Response | None:
        """Send, retrying the same request (same ids, same key) on errors, 409, 429 and 5xx: bounded."""
        end = now() + deadline
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
            if now() + delay > end or self.hard_stop.is_set():
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        return None

    @staticmethod
    def token(learner: str, tenant: str) -> dict[str, str]:
        claims = {"sub": learner, "tenant": tenant, "exp": int(time.time()) + 3600}
        return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET)}"}

    async def progress_worker(self, worker: int) -> None:
        rng = random.Random(f"{self.seed}-progress-{worker}")  # noqa: S311
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
        rng = random.Random(f"{self.seed}-purchase")  # noqa: S311
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


class Churn:
    """LearnerPlatform churn (create, image tag, autoscaling, evaluator on/off, pause, delete); ``pending`` is
    when each changed platform's spec last changed, for its convergence; ``deleted_uids`` those deleted."""

    def __init__(self, cluster: KubeApi, rng: random.Random, history: History, args: argparse.Namespace) -> None:
        self.cluster, self.rng, self.history, self.args = cluster, rng, history, args
        self.lp_seq = 0
        #: (namespace, name) -> (when the spec last changed, its generation)
        self.pending: dict[tuple[str, str], tuple[float, int]] = {}
        self.deleted_uids: set[str] = set()

    def record(self, op: str, **fields: Any) -> None:
        self.history.record(op, **fields)

    def touch(self, lp: dict[str, Any]) -> None:
        meta = lp["metadata"]
        self.pending[(meta["namespace"], meta["name"])] = (now(), int(meta.get("generation") or 1))

    def churn_once(self) -> None:
        cluster, rng = self.cluster, self.rng
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
                self.touch(lp)
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
        self.touch(lp)
        self.record("lp_edit", ns=ns, name=name, patch=patch, generation=lp["metadata"].get("generation"))
