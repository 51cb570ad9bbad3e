"""List, then watch, one kind: the children's caches, fed without kopf.

kopf watches the LearnerPlatforms. The children (a dozen per platform) are watched here instead,
for three reasons measured or met on real clusters:

* a re-list *replaces* what was known: objects deleted while no watch ran (an API server restart,
  "410 Gone") are reported as deleted, where kopf's indices keep them forever;
* kopf keeps a per-object record for every object it ever saw and runs each event through its
  handler machinery: several KiB and a few hundred microseconds per child;
* Secrets can be watched as metadata only (``PartialObjectMetadata``): the operator learns that a
  Secret changed without ever receiving the values of Secrets it does not use.

The server ends each watch after ``timeoutSeconds``; a stream that goes silent longer than that is
dropped by the client's read timeout (silent watches are kopf's most reported problem). Errors back
off up to 8 s; "410 Gone" re-lists at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from learner_operator.kube.client import ApiError, KubeApi

logger = logging.getLogger(__name__)

#: (event type, object): "ADDED", "MODIFIED" or "DELETED"; a re-list reports what vanished as "DELETED".
OnEvent = Callable[[str, dict[str, Any]], None]
#: Called with every object of a (re-)listing at once (and the listing's resourceVersion), before the
#: watch starts: the cache's new content.
OnListed = Callable[[list[dict[str, Any]], str], None]
_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


class Gone(Exception):
    """The watch's resourceVersion is too old: the history it needs is compacted away."""


class Informer:
    def __init__(
        self, api: KubeApi, api_version: str, plural: str, *, on_event: OnEvent, on_listed: OnListed,
        namespace: str | None = None, label_selector: str = "", metadata_only: bool = False,
        server_timeout: int = 300,
    ) -> None:
        self.api, self.api_version, self.plural = api, api_version, plural
        self.namespace, self.label_selector = namespace, label_selector
        self._on_event, self._on_listed = on_event, on_listed
        self._accept = METADATA_ONLY if metadata_only else "application/json"
        self._server_timeout = server_timeout
        #: Set once the first listing has been handed over: the cache is complete from then on.
        self.ready = asyncio.Event()
        self.relists = 0

    def __repr__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"<Informer {self.api_version} {self.plural}{where}>"

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                version = await self._list()
                failures = 0
                while True:
                    version = await self._watch(version)
            except Gone:
                logger.debug("%r: resourceVersion expired, re-listing", self)
            except (ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                delay = _BACKOFF[min(failures, len(_BACKOFF) - 1)]
                failures += 1
                logger.warning("%r: %s; listing again in %.1f s", self, exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        items, version = await self.api.list_objects(self.api_version, self.plural, self.namespace,
                                                     self.label_selector, accept=self._accept)
        if self.ready.is_set():
            self.relists += 1
        self._on_listed(items, version)
        self.ready.set()
        return version

    async def _watch(self, version: str) -> str:
        """One watch request, until the server ends it; returns the resourceVersion to resume from."""
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("resourceVersion", version),
                 # spread the reconnects of many kinds, as client-go does
                 ("timeoutSeconds", str(int(self._server_timeout * random.uniform(1.0, 1.2))))]  # noqa: S311
        if self.label_selector:
            query.append(("labelSelector", self.label_selector))
        read_timeout = self._server_timeout * 1.2 + 30
        async with self.api.stream(self.api_version, self.plural, self.namespace, query, accept=self._accept,
                                   read_timeout=read_timeout) as lines:
            async for line in lines:
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("reason")), str(obj.get("message")))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._on_event(kind, obj)
        return version


class Informers:
    """The informers of one operator: started together, ready together, stopped together."""

    def __init__(self) -> None:
        self._informers: list[Informer] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, informer: Informer) -> None:
        self._informers.append(informer)
        self._tasks.append(asyncio.create_task(informer.run(), name=repr(informer)))

    def kinds(self) -> set[tuple[str, str]]:
        return {(i.api_version, i.plural) for i in self._informers}

    async def ready(self) -> None:
        await asyncio.gather(*(i.ready.wait() for i in self._informers))

    @property
    def relists(self) -> int:
        return sum(i.relists for i in self._informers)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks, self._informers = [], []


def scopes(namespaces: Sequence[str]) -> list[str | None]:
    """Where to list and watch: every namespace (None) for all or for patterns, else each one named."""
    if not namespaces or any(set("*?[") & set(ns) for ns in namespaces):
        return [None]
    return list(namespaces)

