"""See the operator work without a cluster: the real operator against the tests' API emulator.

Applies the Secret and examples/01-minimal.yaml, plays the HPA and the Deployment controller (there
are no nodes to run pods), and prints what an SRE would see. Then it keeps running, serving the
emulated API on the printed URL, until Ctrl-C (or after --seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import sys
from typing import Any

import kmock

from learner_api.migrate import bundled
from tests.conftest import CRD_FILE, EXAMPLES, load
from tests.kube_emulator import Cluster, standard_cluster
from tests.operator_harness import eventually, running_operator

NS = "learning"


def _print_platforms(cluster: Cluster) -> None:
    rows = [("NAME", "READY", "REASON", "API", "IMAGE", "SCHEMA")]
    for lp in cluster.all("learner.dev/v1alpha1", "learnerplatforms", NS):
        ready = {c["type"]: c for c in lp.get("status", {}).get("conditions", [])}.get("Ready", {})
        rows.append((lp["metadata"]["name"], ready.get("status", ""), ready.get("reason", ""),
                     lp.get("status", {}).get("learnerApi", {}).get("ready", ""), lp["spec"]["image"]["tag"][:12],
                     lp.get("status", {}).get("schemaVersion", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _print_conditions(cluster: Cluster) -> None:
    lp = cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform") or {}
    for c in lp.get("status", {}).get("conditions", []):
        print(f"  {c['type']:<20} {c['status']:<6} {c['reason']:<26} {c['message']}")


def _secret() -> dict[str, Any]:
    data = {"DATABASE_URL": "postgresql://learner:demo@db.invalid:5432/learn?sslmode=require",
            "REDIS_URL": "rediss://:demo@cache.invalid:6380/0", "JWT_SECRET": "demo-signing-key-0123456789abcdef"}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ai-platform-secrets", "namespace": NS},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


async def main(seconds: float | None) -> None:
    cluster = standard_cluster(load(CRD_FILE))
    async with cluster, kmock.Server(cluster) as server, running_operator(cluster):
        print(f"Kubernetes API emulator on {server.url} ; operator running.\n")
        cluster.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        print("$ kubectl apply -f examples/01-minimal.yaml   (no Secret yet)")
        cluster.put(load(EXAMPLES / "01-minimal.yaml"))
        await eventually(lambda: (cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform")
                                  or {}).get("status"))
        _print_platforms(cluster)
        _print_conditions(cluster)

        print("\n$ kubectl create secret generic ai-platform-secrets --from-env-file=.env.production")
        cluster.put(_secret())
        api = await eventually(lambda: cluster.get("apps/v1", "deployments", NS, "ai-platform-learner-api"))
        await eventually(lambda: cluster.get("apps/v1", "deployments", NS, "ai-platform-evaluator"))
        await eventually(lambda: cluster.get("policy/v1", "poddisruptionbudgets", NS, "ai-platform-learner-api"))
        print("children:", ", ".join(sorted(f"{o['kind']}/{o['metadata']['name']}" for av, p in [
            ("v1", "serviceaccounts"), ("v1", "configmaps"), ("v1", "services"), ("apps/v1", "deployments"),
            ("autoscaling/v2", "horizontalpodautoscalers"), ("policy/v1", "poddisruptionbudgets"),
            ("networking.k8s.io/v1", "networkpolicies")] for o in cluster.all(av, p, NS))))
        print("(the pods would start now: the demo plays the Job controller, the HPA and the Deployment controller)")
        [job] = await eventually(lambda: cluster.all("batch/v1", "jobs", NS))
        cluster.finish_job(NS, job["metadata"]["name"], succeeded=True,
                           message=f"learner-api migrate: schema version {bundled()[-1].version} (applied all)")
        cluster.scale(NS, api["metadata"]["name"], 2)
        cluster.set_deployment_status(NS, "ai-platform-learner-api")
        cluster.set_deployment_status(NS, "ai-platform-evaluator")
        await eventually(lambda: {c["type"]: c["status"] for c in (cluster.get(
            "learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform") or {}).get("status", {})
            .get("conditions", [])}.get("Ready") == "True")
        await eventually(lambda: (cluster.get("learner.dev/v1alpha1", "learnerplatforms", NS, "ai-platform") or {})
                         .get("status", {}).get("schemaVersion"))
        print("\n$ kubectl get lp -n learning")
        _print_platforms(cluster)
        print("\n$ kubectl describe lp ai-platform   (conditions)")
        _print_conditions(cluster)
        print(f"\nDone. Try: kubectl --server {server.url} -n learning get lp,deployments   (Ctrl-C to stop)")
        await asyncio.sleep(seconds if seconds is not None else float("inf"))
        cluster.hang_up()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, help="stop after this long instead of waiting for Ctrl-C")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.seconds))
    sys.exit(0)
