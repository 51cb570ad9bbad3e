"""Starting the operator: kopf itself, with our handlers in a registry of their own."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Sequence

import kopf

from learner_operator import memory
from learner_operator.handlers import LeaseConfig, OperatorConfig, register


def run(
    *, namespaces: Sequence[str], all_namespaces: bool, peering: str | None, liveness: str,
    lease_namespace: str | None, lease_seconds: int = 15,
    metrics_port: int, resync_seconds: float, verbose: bool,
) -> int:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not verbose:
        # kopf logs "Handler ... succeeded." at INFO for every watch event of every child: noise at
        # best, and a measurable share of the CPU. The reconciler logs what changed, at INFO.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    registry = kopf.OperatorRegistry()
    election = None
    if lease_namespace is not None:
        election = LeaseConfig(namespace=lease_namespace, lease_seconds=lease_seconds,
                               renew_seconds=max(0.2, lease_seconds / 3))
        if pod := os.environ.get("POD_NAME"):  # unique per replica, and readable in `kubectl get lease`
            election = dataclasses.replace(election, identity=pod)
    config = OperatorConfig(resync_seconds=resync_seconds, metrics_port=metrics_port, leader_election=election,
                            namespaces=() if all_namespaces else tuple(namespaces))
    register(registry, config, login=kopf.login_via_client)
    memory.freeze()  # the modules, kopf and the registry live as long as the process
    asyncio.run(kopf.operator(
        registry=registry,
        clusterwide=all_namespaces or not namespaces,
        namespaces=list(namespaces),
        standalone=peering is None,
        peering_name=peering,
        liveness_endpoint=liveness,
    ))
    return 0
