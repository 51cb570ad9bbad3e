"""`learner-api evaluator`: the worker, the alert rules and the metrics endpoint in one process.

Port METRICS_PORT serves /livez and /metrics. While PostgreSQL or Redis is away at start the process
waits for it (evaluator/startup.py) with the port open and /livez answering 200 "waiting": an exit or a
restart would only delay the start (CrashLoopBackOff). After that /livez fails (503) when the worker has
stopped, or when entries are waiting and none has been stored or dead-lettered for EVALUATOR_STALL_SECONDS (a hung
connection, say): the kubelet then restarts the pod and another consumer claims its entries.
SIGTERM stops taking new entries, lets the batch in hand commit and be acknowledged (or, if it cannot,
stay pending for the next consumer: nothing is lost either way), deletes this pod's Pushgateway group and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import ResponseError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from learner_api import startup_checks
from learner_api.app import connect_postgres
from learner_api.data.progress import prune_bookkeeping, tenant_stats
from learner_api.dependencies import POSTGRES_DOWN, REDIS_DOWN, Database
from learner_api.evaluator import rules as rule_files
from learner_api.evaluator import startup
from learner_api.evaluator.alerting import AlertEngine, Alertmanager, Signals
from learner_api.evaluator.metrics import EvaluatorMetrics
from learner_api.evaluator.pushgateway import Pusher
from learner_api.evaluator.worker import Worker
from learner_api.redis_client import connect_redis, progress_streams
from learner_api.settings import Settings

logger = logging.getLogger("learner_api.evaluator")


class _QuietServer(uvicorn.Server):
    """uvicorn for the metrics port only: the evaluator owns SIGTERM, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Health:
    """What /livez reports: the dependencies still waited for at start, then the worker task. The port is
    opened when a wait begins, or when the work does: a refusal found at once (a superuser role, a wrong
    password) stays the one line on stderr."""

    def __init__(self) -> None:
        self.waiting: set[str] = set()
        self.worker_task: asyncio.Task[None] | None = None
        self.server: uvicorn.Server | None = None
        self.serving: asyncio.Task[None] | None = None

    def serve(self) -> None:
        if self.serving is None and self.server is not None:
            self.serving = asyncio.create_task(self.server.serve(), name="metrics")

    async def close(self) -> None:
        if self.serving is not None and self.server is not None:
            self.server.should_exit = True
            await asyncio.gather(self.serving, return_exceptions=True)


def health_app(metrics: EvaluatorMetrics, health: Health, workers: list[Worker], stall_seconds: float) -> Starlette:
    async def livez(request: Request) -> Response:
        if health.worker_task is None:  # waiting for a dependency is right: a restart would not help
            return JSONResponse({"status": "waiting", "for": sorted(health.waiting) or ["start-up"]})
        if health.worker_task.done():
            return JSONResponse({"status": "worker stopped"}, status_code=503)
        stalled = [worker.stream for worker in workers if worker.stalled(stall_seconds)]
        if stalled:  # a restart is the one remedy left (a hung connection, a batch that never ends...)
            return JSONResponse({"status": "stalled", "streams": stalled,
                                 "detail": f"entries are waiting and none was stored for over {stall_seconds:.0f}s"},
                                status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/livez", livez), Route("/metrics", metrics_endpoint)])


async def _checked_database(settings: Settings, stop: asyncio.Event, health: Health) -> bool:
    """Wait for PostgreSQL, then refuse (ConfigError) a role or schema this code cannot work with.
    False if stopped while waiting."""
    async def connect_and_check() -> bool:  # a server lost during the checks is waited for as one away
        connection = await startup_checks.connect(settings)
        try:
            await startup_checks.check(settings, connection, startup_checks.EVALUATOR)
        finally:
            with contextlib.suppress(*POSTGRES_DOWN):
                await connection.close(timeout=5)
        return True

    checked = await startup.until_up("PostgreSQL", connect_and_check, startup.POSTGRES_AWAY, stop, health.waiting,
                                     health.serve)
    return checked is True


async def _redis_ready(workers: list[Worker], stop: asyncio.Event, health: Health) -> bool:
    """Wait for Redis and make the consumer groups; False if stopped while waiting."""
    await startup.until_up("Redis", lambda: startup.redis_setup([worker.setup for worker in workers]),
                           startup.REDIS_AWAY, stop, health.waiting, health.serve)
    return not stop.is_set()


async def observe(workers: list[Worker], metrics: EvaluatorMetrics) -> dict[str, float]:
    """The stream signals of all streams (shards) together, also set as the gauges."""
    total = {"pending_entries": 0.0, "stream_lag_entries": 0.0, "dead_letters": 0.0, "ingest_lag_seconds": 0.0}
    for worker in workers:
        for name, value in (await worker.observe()).items():
            total[name] = max(total[name], value) if name == "ingest_lag_seconds" else total[name] + value
    metrics.pending.set(total["pending_entries"])
    metrics.lag_entries.set(total["stream_lag_entries"])
    metrics.dead_letters.set(total["dead_letters"])
    metrics.ingest_lag.set(total["ingest_lag_seconds"])
    return total


async def measure(workers: list[Worker], database: Database) -> Signals:
    """Everything the alert rules can look at; a signal that cannot be measured now is left out."""
    signals: Signals = {}
    try:
        signals.update(await observe(workers, workers[0].metrics))
    except REDIS_DOWN:
        logger.warning("Redis unavailable: stream signals not measured")
    except ResponseError as exc:  # the stream or group was deleted under us; the worker makes them again
        logger.warning("stream signals not measured: %s", exc)
    try:
        async with database.pool.acquire(timeout=database.timeout) as connection:
            rows = await tenant_stats(connection)
    except POSTGRES_DOWN:
        logger.warning("PostgreSQL unavailable: tenant signals not measured")
        return signals
    except asyncpg.PostgresError as exc:  # not migrated yet, say: the worker may still do its job
        logger.warning("tenant signals not measured: %s", exc)
        return signals
    for name in ("seconds_since_progress", "failed_purchases_1h", "unfulfilled_purchases"):
        signals[name] = {row["tenant_id"]: float(row[name]) for row in rows if row[name] is not None}
    return signals


async def _run_all(workers: list[Worker], stop: asyncio.Event) -> None:
    """One loop per stream; if one of them ends with an error, the others stop too."""
    tasks = [asyncio.create_task(worker.run(stop), name=f"worker {worker.stream}") for worker in workers]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run(settings: Settings, stop: asyncio.Event, *, claim_interval: float | None = None,
              trim_interval: float = 30.0) -> None:
    rules = rule_files.load(Path(settings.alert_rules_file) if settings.alert_rules_file else None)
    consumer = settings.pod_name or socket.gethostname()
    metrics = EvaluatorMetrics()
    pool = await connect_postgres(settings, role="learner-evaluator")
    client = connect_redis(settings, socket_timeout=10, socket_connect_timeout=5)
    database = Database(pool, timeout=5.0)  # the pool (DATABASE_POOL_MAX) must exceed evaluator_concurrency
    writers = asyncio.Semaphore(settings.evaluator_concurrency)  # transactions at once, over all streams
    workers = [Worker(client, database, metrics, stream=stream, consumer=consumer,
                      batch_size=settings.evaluator_batch_size, claim_idle=settings.evaluator_claim_idle_seconds,
                      claim_interval=claim_interval or max(1.0, settings.evaluator_claim_idle_seconds / 4),
                      max_deliveries=settings.evaluator_max_deliveries, trim_interval=trim_interval,
                      block_ms=200 if claim_interval else 1000, concurrency=settings.evaluator_concurrency,
                      writers=writers)
               for stream in progress_streams(settings).streams]
    engine = AlertEngine(rules, metrics)
    alertmanager = Alertmanager(settings.alertmanager_url.get_secret_value(), metrics) \
        if settings.alertmanager_url else None
    pusher = Pusher(settings.pushgateway_url, consumer, metrics.registry) if settings.pushgateway_url else None
    generator = f"learner-evaluator://{consumer}"

    async def watch() -> None:
        while not stop.is_set():
            try:
                notify = engine.evaluate(await measure(workers, database), datetime.now(UTC))
                if alertmanager is not None:
                    await alertmanager.send(notify, valid_for=4 * rules.interval, generator=generator)
            except Exception:  # a bug in alerting must not stop the progress it watches: logged, tried again
                logger.exception("alert evaluation failed; trying again in %.1fs", rules.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rules.interval)

    async def housekeeping() -> None:
        """Hourly: drop Idempotency-Keys and payment event ids past their retention (every replica may;
        the deletes are idempotent)."""
        while not stop.is_set():
            try:
                async with database.pool.acquire(timeout=database.timeout) as connection:
                    keys, events = await prune_bookkeeping(
                        connection, keys_days=settings.idempotency_key_retention_days,
                        events_days=settings.payment_event_retention_days)
                if keys or events:
                    logger.info("pruned %d idempotency keys and %d payment event ids", keys, events)
            except (*POSTGRES_DOWN, asyncpg.PostgresError) as exc:
                logger.warning("housekeeping skipped: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 3600)

    async def push(pusher: Pusher) -> None:
        while not stop.is_set():
            await pusher.push()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.push_interval_seconds)

    tasks: list[asyncio.Task[None]] = []
    health = Health()
    health.server = _QuietServer(uvicorn.Config(
        health_app(metrics, health, workers, settings.evaluator_stall_seconds), host="0.0.0.0",  # noqa: S104
        port=settings.metrics_port, log_config=None, access_log=False, lifespan="off"))
    try:
        if not (await _checked_database(settings, stop, health) and await _redis_ready(workers, stop, health)):
            return  # stopped while waiting
        health.serve()
        logger.info("evaluator %s consuming %s; %d alert rules from %s", consumer,
                    ", ".join(worker.stream for worker in workers), len(rules.rules), rules.source)
        health.worker_task = worker_task = asyncio.create_task(_run_all(workers, stop), name="worker")
        tasks += [worker_task, asyncio.create_task(watch(), name="alerts"),
                  asyncio.create_task(housekeeping(), name="housekeeping")]
        if pusher is not None:
            tasks.append(asyncio.create_task(push(pusher), name="push"))
        done, _ = await asyncio.wait([stop_task := asyncio.create_task(stop.wait()), *tasks],
                                     return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        for task in done:
            if task is not stop_task and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await health.close()
        if pusher is not None and health.worker_task is not None:
            await pusher.delete()
        await client.aclose()
        await pool.close()
        if health.serving is not None:
            logger.info("evaluator %s stopped", consumer)
