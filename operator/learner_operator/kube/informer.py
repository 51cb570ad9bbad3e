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
import fnmatch
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import orjson

from learner_operator.kube.client import ApiError, KubeApi

logger = logging.getLogger(__name__)

#: (event type, object): "ADDED", "MODIFIED" or "DELETED"; a re-list reports what vanished as "DELETED".
OnEvent = Callable[[str, dict[str, Any]], None]
#: Called with every object of a (re-)listing at once (and the listing's resourceVersion), before the
#: watch starts: the cache's new content.
OnListed = Callable[[list[dict[str, Any]], str], None]
_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Metadata only: a watch asks for PartialObjectMetadata, a list for PartialObjectMetadataList (a server
#: answers a list asked for as PartialObjectMetadata with 406). Servers that cannot send the full objects.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


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
        self._metadata_only = metadata_only
        self._server_timeout = server_timeout
        #: Set once the first listing has been handed over: the cache is complete from then on.
        self.ready = asyncio.Event()
        self.relists = 0
        self._version = ""  # where the watch resumes: the last listing's or event's resourceVersion

    def __repr__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"<Informer {self.api_version} {self.plural}{where}>"

    async def run(self) -> None:
        failures = 0
        self._version = ""
        while True:
            try:
                if not self._version:
                    self._version = await self._list()
                # A watch that fails (say "429 storage is (re)initializing" after a restart) is retried from
                # the same resourceVersion with a growing backoff: never a full list of every object a second.
                # An event whose handling failed is not handled again: it was logged, the resync repairs.
                while True:
                    if await self._watch():
                        failures = 0
            except asyncio.CancelledError:
                raise
            except Gone:
                logger.debug("%r: resourceVersion expired, re-listing", self)
                self._version = ""
            except Exception as exc:  # whatever it is, this cache must not die with it
                delay = _BACKOFF[min(failures, len(_BACKOFF) - 1)]
                failures += 1
                expected = isinstance(exc, (ApiError, aiohttp.ClientError, TimeoutError, ValueError, OSError))
                logger.warning("%r: %s; trying again in %.1f s", self, exc or type(exc).__name__, delay,
                               exc_info=not expected)
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        accept = METADATA_LIST if self._metadata_only else "application/json"
        items, version = await self.api.list_objects(self.api_version, self.plural, self.namespace,
                                                     self.label_selector, accept=accept)
        if self.ready.is_set():
            self.relists += 1
        self._on_listed(items, version)
        self.ready.set()
        return version

    async def _watch(self) -> bool:
        """One watch request from ``self._version``, until the server ends it (the version moves with every
        event); returns whether it delivered anything (a watch that keeps failing must back off)."""
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("resourceVersion", self._version),
                 # spread the reconnects of many kinds, as client-go does
                 ("timeoutSeconds", str(int(self._server_timeout * random.uniform(1.0, 1.2))))]  # noqa: S311
        if self.label_selector:
            query.append(("labelSelector", self.label_selector))
        read_timeout = self._server_timeout * 1.2 + 30
        delivered = False
        accept = METADATA_ONLY if self._metadata_only else "application/json"
        try:
            async with self.api.stream(self.api_version, self.plural, self.namespace, query, accept=accept,
                                       read_timeout=read_timeout) as lines:
                async for line in lines:
                    event = orjson.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone()
                        raise ApiError(int(obj.get("code") or 500), str(obj.get("reason")), str(obj.get("message")))
                    delivered = True
                    self._version = str((obj.get("metadata") or {}).get("resourceVersion") or self._version)
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self._on_event(kind, obj)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone() from None
            raise
        return delivered


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

    def unready(self) -> list[Informer]:
        return [i for i in self._informers if not i.ready.is_set()]

    @property
    def relists(self) -> int:
        return sum(i.relists for i in self._informers)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):  # stopping: whatever ended a task is not our concern now
                await task
        self._tasks, self._informers = [], []


_PATTERN = set(",!*?[")


def scopes(namespaces: Sequence[str]) -> list[str | None]:
    """Where to list and watch: every namespace (None) for all or for patterns, else each one named."""
    if not namespaces or any(_PATTERN & set(ns) for ns in namespaces):
        return [None]
    return list(namespaces)


def namespace_matches(name: str, pattern: str) -> bool:
    """kopf's namespace patterns (so both halves of the operator serve the same namespaces): comma-separated
    globs, ``!`` excludes, a leading exclusion implies ``*``; a later inclusive glob re-includes only what
    the first one matched."""
    globs = [glob.strip() for glob in pattern.split(",")]
    if not globs or globs[0].startswith("!"):
        globs.insert(0, "*")
    matches = first = fnmatch.fnmatch(name, globs[0])
    for glob in globs[1:]:
        if glob.startswith("!"):
            matches = matches and not fnmatch.fnmatch(name, glob.lstrip("!"))
        else:
            matches = matches or (first and fnmatch.fnmatch(name, glob))
    return matches


def in_scope(namespaces: Sequence[str]) -> Callable[[str], bool]:
    """Is a namespace one the operator serves (any of its names or patterns)?"""
    if not namespaces:
        return lambda _: True
    return lambda name: any(namespace_matches(name, pattern) for pattern in namespaces)
