"""kopf handlers, kept thin: they feed the caches and the work queue; the reconciler does the work.

Why not ``@kopf.on.create/update``: those keep their progress in annotations on the CR (a write per
change) and daemons/timers add a finalizer (a write per CR, and a CR that cannot be deleted while
the operator is down). Event handlers plus our own queue make a no-op resync cost zero writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import kopf

from learner_operator import builders, memory
from learner_operator.builders import FIELD_MANAGER
from learner_operator.engine import Engine
from learner_operator.kube import ApiError, Discovery, KubeApi, NotLeading, RequestCounter
from learner_operator.kube.backoff import EndlessBackoffs
from learner_operator.kube.client import connect
from learner_operator.kube.lease import LeaderElection
from learner_operator.livestate import LiveState
from learner_operator.metrics import Metrics
from learner_operator.models import GROUP, PLURAL, VERSION
from learner_operator.platforms import Key, Platforms
from learner_operator.reconcile import Deps, reconcile
from learner_operator.verify import compare_with_server
from learner_operator.watches import Watches

logger = logging.getLogger("learner_operator")
MANAGED = {"app.kubernetes.io/managed-by": FIELD_MANAGER}


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    resync_seconds: float = 300.0
    workers: int = 8
    #: The API server for the reconciler's own requests; None: in-cluster config, else kubeconfig.
    api_host: str | None = None
    #: A kubeconfig file for the reconciler's own requests (tests on a real API server: CA and token).
    kubeconfig: str | None = None
    #: Where /metrics is served; None: not served (tests that run several operators in one process).
    metrics_port: int | None = 9090
    #: First retry delay after an API error; doubles per consecutive failure, up to 5 minutes.
    retry_after_error: float = 10.0
    #: Only the holder of this Lease reconciles (replicas for availability); None: always reconcile.
    leader_election: LeaseConfig | None = None
    #: The namespaces kopf serves (names or patterns); empty: all. Fresh lists use the same scope.
    namespaces: tuple[str, ...] = ()
    #: After a watch re-lists, how long to wait for the rest of the listing before comparing with the server.
    verify_delay: float = 1.0
    #: kopf's delays between retries of one request (its watches, lists, discovery): endless, never given up.
    api_backoffs: EndlessBackoffs = dataclasses.field(default_factory=EndlessBackoffs)


@dataclasses.dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str = "learner-platform-operator"
    identity: str = dataclasses.field(default_factory=lambda: f"{socket.gethostname()}-{secrets.token_hex(3)}")
    lease_seconds: int = 15
    renew_seconds: float = 5.0


@dataclasses.dataclass
class Runtime:
    """Everything one running operator shares between handlers: kept in kopf's memo, not in globals."""

    deps: Deps
    engine: Engine[Key]
    watches: Watches
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    closers: list[Callable[[], Any]] = dataclasses.field(default_factory=list)
    verifying: asyncio.Task[None] | None = None
    #: Platforms whose reconcile stopped at the write fence: run again once the Lease is surely ours.
    fenced: set[Key] = dataclasses.field(default_factory=set)

    def retry_fenced(self) -> None:
        fenced, self.fenced = self.fenced, set()
        for key in fenced:
            self.engine.trigger(key)

    async def wait_idle(self) -> None:
        """Until no comparison with the server is pending and the work queue is empty (tests, benchmarks)."""
        while True:
            if self.verifying is not None and not self.verifying.done():
                await asyncio.wait([self.verifying])
            await self.engine.wait_idle()
            if self.verifying is None or self.verifying.done():
                return

    async def resync(self, config: OperatorConfig) -> None:
        """Compare the platforms with the server, watch optional kinds that appeared, reconcile everything."""
        self.deps.discovery.forget()
        await _verify(self, config, 0)
        for kind in builders.CHILD_KINDS:
            if (kind.api_version, kind.plural) not in self.watches.informers.kinds():
                with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
                    if await self.deps.discovery.served(kind.api_version, kind.plural):
                        self.watches.start_child(kind)
        # Let a kind that appeared be listed before reconciling, but never wait on one that cannot be.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.watches.informers.ready(), timeout=30)
        for key in self.platforms.known():
            self.engine.trigger(key)

    def verify_soon(self, config: OperatorConfig) -> None:
        """Compare the caches with the server shortly (once, however many events ask for it)."""
        if self.verifying is None or self.verifying.done():
            self.verifying = asyncio.create_task(_verify(self, config, config.verify_delay), name="verify")

    @property
    def platforms(self) -> Platforms:
        return self.deps.platforms


class PlatformLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with the platform, as kopf does for its own per-object lines."""

    def __init__(self, base: logging.Logger, key: Key) -> None:
        super().__init__(base, {"namespace": key[0], "name": key[1]})
        self._prefix = f"[{key[0]}/{key[1]}] "

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return self._prefix + str(msg), kwargs


def configure(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    # Watch streams that go silent (a dropped connection that never errors) are kopf's most reported
    # problem: the server closes each watch after server_timeout, the client gives up a bit later.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # kopf's default backoffs add up to 54 s (a watch that met "429 storage is (re)initializing" after
    # an API server restart waited 21 s before its next try); capped at 8 s, it is back within seconds.
    # When a finite sequence runs out, kopf stops the whole operator (every replica at once), and a
    # restart cannot bring the API server back: so they never run out (see kube.backoff).
    settings.networking.error_backoffs = config.api_backoffs
    # Only warnings and errors become Kubernetes Events: every INFO line would be a write.
    settings.posting.level = logging.WARNING
    # kopf computes a diff base (a deep copy of every platform body) and reads handler progress on every
    # watch event, for on.create/update handlers that this operator does not have (see the module docstring).
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.persistence.progress_storage = _NoProgress()


class _NoDiffBase(kopf.DiffBaseStorage):
    """No essence kept or compared: only on.event handlers here, which never read a diff."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


class _NoProgress(kopf.ProgressStorage):
    """No handler progress: on.event handlers have none, and no annotation or status is ever written for it."""

    def fetch(self, *, key: Any, body: kopf.Body) -> kopf.ProgressRecord | None:
        return None

    def store(self, *, key: Any, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch) -> None:
        pass

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        pass

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        pass

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, login: Callable[..., Any]) -> None:
    """Put the operator's handlers into ``registry`` (one registry per operator: tests run several)."""

    kopf.on.login(registry=registry)(login)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure(settings, config)
        metrics = Metrics()
        counter = RequestCounter(lambda verb: metrics.api_requests.labels(verb).inc())
        metrics.api_available.set_function(lambda: float(counter.availability.available))
        api: KubeApi = await connect(config.api_host, counter, kubeconfig=config.kubeconfig)
        deps = Deps(api=api, live=LiveState(), platforms=Platforms(), metrics=metrics, discovery=Discovery(api),
                    retry_after_error=config.retry_after_error)
        metrics.watch_conditions(deps.platforms.conditions)

        async def work(key: Key) -> float | None:
            snapshot = deps.platforms.get(key)
            if snapshot is None:
                return None
            with metrics.duration.time():
                try:
                    retry = await reconcile(deps, snapshot, PlatformLogger(logger, key))
                except NotLeading as exc:  # stopped before its next write; the leader (maybe us again) does it
                    # Not a failure: no backoff. A leader whose renewals run late (a busy machine) is unsure
                    # for moments at a time, and backing off each time left platforms minutes behind their
                    # spec (found by the chaos soak, seed 11); it goes again after its next renewal.
                    logger.info("[%s/%s] Reconcile stopped: %s", *key, exc)
                    metrics.reconciles.labels("fenced").inc()
                    runtime.fenced.add(key)
                    return None
                except Exception:
                    metrics.reconciles.labels("error").inc()
                    raise
            metrics.reconciles.labels("retry" if retry is not None else "ok").inc()
            metrics.queue_depth.set(runtime.engine.depth)
            # Our own writes' answers may carry what someone changed while we worked (a newer spec, an SRE's
            # annotation, a deletion); its watch event then looks older than what we know and triggers nothing,
            # so look here and go again (after an acknowledged annotation, once more for nothing: no write).
            latest = deps.platforms.get(key)
            if latest is not None and latest.asks_more_than(snapshot):
                runtime.engine.trigger(key)
            return retry

        engine: Engine[Key] = Engine(work, workers=config.workers)
        # After an outage, platforms whose reconciles failed meanwhile go again at once, not after their backoff.
        counter.availability.on_return = engine.retry_failed_now
        # The watches hold a connection each for minutes: a client of their own, so that they can never take
        # every connection the reconciles need (ten per watched namespace; the default pool has 100).
        watching = await connect(config.api_host, counter, kubeconfig=config.kubeconfig, connections=1000)
        runtime = Runtime(deps=deps, engine=engine, watches=Watches(deps, engine, config.namespaces, watching))
        runtime.watches.start([kind for kind in builders.CHILD_KINDS if kind.kind not in builders.OPTIONAL_KINDS
                               or await _served_once_answered(deps.discovery, kind)])
        restarts = _WatchRestarts(asyncio.get_running_loop(), lambda: runtime.verify_soon(config))
        logging.getLogger(_KOPF_WATCHING).addFilter(restarts)
        logging.getLogger(_KOPF_WATCHING).setLevel(logging.DEBUG)
        runtime.closers.append(lambda: logging.getLogger(_KOPF_WATCHING).removeFilter(restarts))
        if config.leader_election is not None:
            runtime.engine.pause()
            await _elect(runtime, config.leader_election)
        runtime.tasks.append(asyncio.create_task(_start_when_listed(runtime), name="start-when-listed"))
        runtime.tasks.append(asyncio.create_task(_resync(runtime, config), name="resync"))
        runtime.tasks.append(asyncio.create_task(
            memory.trim_after_bursts(lambda: runtime.engine.completed, lambda: runtime.engine.idle), name="trim"))
        if config.metrics_port is not None:
            runtime.closers.append(await _serve_metrics(metrics, config.metrics_port))
        memo["runtime"] = runtime

    @kopf.on.probe(id="apiServer", registry=registry)
    def api_server(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
        """In /healthz's body, never in its status: liveness must not fail while the API server is away."""
        runtime: Runtime | None = memo.get("runtime")
        return runtime.deps.api.counter.availability.report() if runtime is not None else {"available": None}

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        runtime: Runtime | None = memo.get("runtime")
        if runtime is None:
            return
        await runtime.engine.stop()
        await runtime.watches.informers.stop()
        await runtime.watches.api.close()
        for task in [*runtime.tasks, *([runtime.verifying] if runtime.verifying else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for close in runtime.closers:
            if asyncio.iscoroutine(closed := close()):
                await closed
        await runtime.deps.rollouts.scraper.close()
        await runtime.deps.api.close()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def platform_event(event: Any, body: Any, memo: kopf.Memo, **_: Any) -> None:
        runtime: Runtime = memo["runtime"]
        meta = body.get("metadata") or {}
        key: Key = (str(meta.get("namespace")), str(meta.get("name")))
        if event.get("type") is None:  # a listing: at start, or a re-list that may have missed deletions
            runtime.verify_soon(config)
        if event.get("type") == "DELETED":
            runtime.deps.forget_platform(key, str(meta.get("uid")))
            runtime.engine.forget(key)
        else:
            known = runtime.platforms.get(key)
            if known is not None and known.uid != str(meta.get("uid")):  # deleted and made again meanwhile
                runtime.deps.forget_platform(key, known.uid)
            if runtime.platforms.observe(body):
                runtime.engine.trigger(key)
        runtime.deps.metrics.platforms.set(len(runtime.platforms))


async def _served_once_answered(discovery: Discovery, kind: builders.ChildKind) -> bool:
    """Discovery's answer, waiting for the API server if it is away: a failed start-up would be retried by
    kopf only 60 s later, long after the server is back."""
    delay = 0.5
    while True:
        try:
            return await discovery.served(kind.api_version, kind.plural)
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("Waiting for the API server's discovery (%s %s): %s", kind.api_version, kind.plural, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 8.0)


async def _elect(runtime: Runtime, lease: LeaseConfig) -> None:
    """Every replica watches; the engine runs only while this replica holds the Lease."""
    # Its own client: lease renewals are not reconciler requests and stay out of its metrics.
    api = await connect(runtime.deps.api.host, kubeconfig=runtime.deps.api.kubeconfig)

    def changed(leading: bool) -> None:
        runtime.fenced.clear()  # leading: every platform runs below; not leading: the next leader's
        if leading:
            runtime.engine.resume()
            for key in runtime.platforms.known():  # whatever happened while we were not leading
                runtime.engine.trigger(key)
        else:
            runtime.engine.pause()

    election = LeaderElection(api, lease.namespace, lease.name, lease.identity, lease.lease_seconds,
                              lease.renew_seconds, on_change=changed, on_renew=runtime.retry_fenced)
    runtime.deps.api.write_fence = election.fence
    runtime.tasks.append(asyncio.create_task(election.run(), name="leader-election"))

    async def release() -> None:
        await election.release()
        await api.close()

    runtime.closers.append(release)


_KOPF_WATCHING = "kopf._cogs.clients.watching"


class _WatchRestarts(logging.Filter):
    """kopf re-lists after "410 Gone" and says so only in a debug line of its watcher: our cue to
    compare the caches with the server even when the new list is empty (and so brings no event).
    The line is then shown only if debug logging is on, as before."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_restart: Callable[[], None]) -> None:
        super().__init__()
        self._loop = loop
        self._on_restart = on_restart

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Restarting the watch-stream"):
            self._loop.call_soon_threadsafe(self._on_restart)
        return record.levelno >= logging.getLogger().getEffectiveLevel()


async def _start_when_listed(runtime: Runtime, patience: float = 60.0) -> None:
    """No reconcile before every child kind is listed: a half-filled cache would look like missing children.

    A kind that cannot be listed at all (RBAC, a broken conversion webhook) must not stop every platform,
    though: after ``patience`` the work starts anyway, and what is missing is said in the log.
    """
    try:
        await asyncio.wait_for(runtime.watches.informers.ready(), timeout=patience)
    except TimeoutError:
        logger.error("Not listed after %.0f s (see the warnings above): %s; reconciling without them",
                     patience, ", ".join(map(repr, runtime.watches.informers.unready())))
    runtime.engine.start()


async def _verify(runtime: Runtime, config: OperatorConfig, delay: float) -> None:
    await asyncio.sleep(delay)
    try:
        gone = await compare_with_server(runtime.deps, config.namespaces)
    except (ApiError, aiohttp.ClientError, TimeoutError) as exc:  # the server is still coming back
        logger.warning("Could not compare the platforms with the server (will again at the next re-list or "
                       "resync): %s", exc)
        return
    for key in gone:
        logger.info("[%s/%s] Deleted while no watch ran: forgotten", *key)
        runtime.engine.forget(key)
    runtime.deps.metrics.platforms.set(len(runtime.platforms))


async def _resync(runtime: Runtime, config: OperatorConfig) -> None:
    """Level-triggered safety net: the caches are compared with the server, then every platform is
    reconciled, at least once per period."""
    while True:
        await asyncio.sleep(config.resync_seconds)
        try:
            await runtime.resync(config)
        except Exception:  # the safety net must outlive whatever went wrong this time
            logger.exception("The periodic resync failed; trying again in %.0f s", config.resync_seconds)


async def _serve_metrics(metrics: Metrics, port: int) -> Callable[[], Any]:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104  # scraped from other pods
    return runner.cleanup
