"""Pushing the evaluator's metrics to a Pushgateway, for clusters where Prometheus cannot scrape it.

Grouping key job + instance (the pod), pushed with PUT (the group is replaced, so nothing stale
lingers), and deleted on clean shutdown as Prometheus' docs advise: a pushed group otherwise outlives
its pod forever.
"""

from __future__ import annotations

import asyncio
import http.client
import logging

from prometheus_client import CollectorRegistry, delete_from_gateway, push_to_gateway

logger = logging.getLogger("learner_api.evaluator")

JOB = "learner-evaluator"


class Pusher:
    def __init__(self, url: str, instance: str, registry: CollectorRegistry) -> None:
        self.url, self.instance, self.registry = url, instance, registry

    async def push(self) -> bool:
        try:
            await asyncio.to_thread(push_to_gateway, self.url, job=JOB, registry=self.registry,
                                    grouping_key={"instance": self.instance}, timeout=5)
        except (OSError, http.client.HTTPException) as exc:  # down, or not an HTTP server (BadStatusLine...)
            logger.warning("Pushgateway push failed: %s", exc)
            return False
        return True

    async def delete(self) -> None:
        try:
            await asyncio.to_thread(delete_from_gateway, self.url, job=JOB,
                                    grouping_key={"instance": self.instance}, timeout=5)
        except (OSError, http.client.HTTPException) as exc:
            logger.warning("Pushgateway group not deleted: %s", exc)
