"""Evaluator benchmark, each number against its baseline in the same run.

1. Throughput: N progress events already in a Redis Stream (as learner-api writes them), drained by 1, 2
   and 4 evaluator processes (the real Worker: read, msgspec splits, PostgreSQL writes events and projection
   under row-level security, XACK), against raw asyncpg ``copy_records_to_table`` of as many rows into the
   same table (goal >= 0.5x). The baseline runs as the superuser: PostgreSQL refuses COPY FROM into a
   table under row-level security. Rounds alternate baseline and workers, so that the shared machine's
   load hits both alike; each run is compared with the COPY runs just before and after it (their
   geometric mean) and the ratio is the median over the rounds: the load on a shared machine drifts
   within seconds, and a COPY of 60,000 rows takes a fraction of one. CPU per row: the evaluator
   processes, their PostgreSQL backends, and Redis (shared with whoever else uses it: approximate);
   COPY's CPU per row over the evaluator's is the ratio the two would have with the same CPU, which
   the load does not move.
2. Lag at a fixed rate: an open-loop producer sends events through the real accept script
   (ProgressIntake: dedupe keys and XADD) at ``--rate`` events/s, 10 per request, while evaluator
   processes consume; p50/p99 from XADD (the entry id's time) to the committed row.

It uses its own database (learner_evaluator_bench, emptied at the start) and streams of its own.

Usage: .venv/bin/python -m bench.evaluator_bench [--events 60000] [--batch 2000] [--processes 1,2,4]
       [--concurrency 3] [--rounds 3] [--rate 5000] [--pairs repeat|new] [--profile]
       .venv/bin/python -m bench.evaluator_bench --hot-slot 1,3,12   (Redis Cluster: one stream or shards)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import math
import multiprocessing
import os
import pstats
import secrets
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from learner_api.data import progress
from learner_api.data.progress import Written, write_entries
from learner_api.dependencies import Database
from learner_api.evaluator import process as evaluator_process
from learner_api.evaluator.metrics import EvaluatorMetrics
from learner_api.evaluator.worker import Worker, entry_time
from learner_api.progress_intake import ProgressIntake, body_hash, stream_entry
from learner_api.settings import Settings
from learner_api.streams import FIELD, TENANT_FIELD
from scripts.api_dev import ADMIN_URL, REDIS_URL, prepare

TENANT = "default"
DATABASE = "learner_evaluator_bench"
APPLICATION = "evaluator-bench"
TICK = os.sysconf("SC_CLK_TCK")


def events(n: int, pairs: str, salt: str = "") -> list[tuple[str, bytes]]:
    """(event id, stream entry) exactly as learner-api writes them. ``repeat``: 1,000 learner/lesson pairs
    over and over (the projection mostly learns nothing new); ``new``: every event a new pair."""
    now = datetime.now(UTC).isoformat()
    out = []
    for i in range(n):
        event_id = str(uuid.uuid4())
        learner = f"learner-{i % 1000}" if pairs == "repeat" else f"learner-{salt}{i}"
        out.append((event_id, stream_entry(
            tenant=TENANT, learner=learner, event_id=event_id,
            verb="lesson_completed" if i % 5 == 0 else "lesson_viewed", lesson_id=f"lesson-{i % 50}",
            occurred_at=now)))
    return out


async def fill(client: aioredis.Redis, stream: str, items: list[tuple[str, bytes]]) -> None:
    for start in range(0, len(items), 5000):
        async with client.pipeline(transaction=False) as pipe:
            for _, data in items[start:start + 5000]:
                pipe.xadd(stream, {TENANT_FIELD: TENANT, FIELD: data})
            await pipe.execute()


def process_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


async def backend_pids(admin: asyncpg.Connection) -> list[int]:
    return list(await admin.fetchval("SELECT array_agg(pid) FROM pg_stat_activity WHERE application_name = $1",
                                     APPLICATION) or [])


async def redis_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class LagWorker(Worker):
    """The real worker, noting each entry's lag when its batch is acknowledged (in the lag run only: it
    costs CPU of its own)."""

    lags: list[float] | None

    async def _acknowledge(self, ids: list[bytes], written: Written, handled: int) -> None:
        await super()._acknowledge(ids, written, handled)
        if self.lags is not None:
            now = time.time()
            self.lags.extend(now - entry_time(entry_id) for entry_id in ids)


@dataclass(frozen=True)
class Child:
    database_url: str
    stream: str
    index: int
    batch: int
    concurrency: int
    profile: bool
    lags: bool = False


def child_main(child: Child, ready: Any, go: ProcessEvent, stop: ProcessEvent, results: Any) -> None:
    evaluator_process.run(_child(child, ready, go, stop, results))  # as `learner-api evaluator` runs


async def _child(child: Child, ready: Any, go: ProcessEvent, stop: ProcessEvent, results: Any) -> None:
    pool = await asyncpg.create_pool(child.database_url, min_size=child.concurrency, max_size=child.concurrency + 1,
                                     statement_cache_size=0, server_settings={"application_name": APPLICATION})
    client = aioredis.from_url(REDIS_URL)
    worker = LagWorker(client, Database(pool, 10), EvaluatorMetrics(), stream=child.stream,
                       consumer=f"bench-{child.index}", batch_size=child.batch, block_ms=20, claim_interval=3600,
                       trim_interval=3600, concurrency=child.concurrency)
    worker.lags = [] if child.lags else None
    await worker.setup()
    evaluator_process.quiet_gc()
    ready.put(os.getpid())
    await asyncio.to_thread(go.wait)
    profiler = cProfile.Profile(time.process_time) if child.profile else None  # CPU, not wall: the machine is shared
    cpu = os.times()
    if profiler:
        profiler.enable()
    while not stop.is_set():
        await worker.step()
    await worker.quiesce()
    if profiler:
        profiler.disable()
        profiler.dump_stats(f"/tmp/evaluator-bench-{child.index}.prof")  # noqa: S108
    used = os.times()
    results.put((child.index, (used.user - cpu.user, used.system - cpu.system), worker.lags or []))
    await client.aclose()
    await pool.close()


class Evaluators:
    """``n`` evaluator processes on one stream, started (imports, connections) before the clock starts."""

    def __init__(self, n: int, child: Child) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready, self.results = context.Queue(), context.Queue()
        self.go, self.stop = context.Event(), context.Event()
        self.processes = [context.Process(target=child_main, args=(
            Child(child.database_url, child.stream, i, child.batch, child.concurrency, child.profile and i == 0,
                  child.lags),
            self.ready, self.go, self.stop, self.results)) for i in range(n)]

    async def __aenter__(self) -> Evaluators:
        for process in self.processes:
            process.start()
        for _ in self.processes:
            await asyncio.to_thread(self.ready.get, True, 60)
        return self

    async def finish(self) -> tuple[float, float, list[float]]:
        """Stop them; their CPU seconds while running (all, and in the kernel) and every entry's lag."""
        self.stop.set()
        cpu, system, lags = 0.0, 0.0, []
        for _ in self.processes:
            _, (user_seconds, system_seconds), entry_lags = await asyncio.to_thread(self.results.get, True, 60)
            cpu += user_seconds + system_seconds
            system += system_seconds
            lags += entry_lags
        return cpu, system, lags

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        for process in self.processes:
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()


async def drained(client: aioredis.Redis, stream: str) -> bool:
    for group in await client.xinfo_groups(stream):
        return int(group["pending"]) == 0 and int(group.get("lag") or 0) == 0
    return False


@dataclass
class Run:
    rows: int
    seconds: float
    cpu_client: float
    cpu_postgres: float
    cpu_redis: float
    cpu_client_kernel: float  # of cpu_client: system calls (on loopback, the kernel's TCP work for both ends)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    @property
    def cpu_per_row(self) -> float:
        """Microseconds of CPU per row: client, PostgreSQL and Redis."""
        return (self.cpu_client + self.cpu_postgres + self.cpu_redis) * 1e6 / self.rows

    def per_row(self) -> str:
        us = 1e6 / self.rows
        cpu = self.cpu_client + self.cpu_postgres + self.cpu_redis
        return (f"CPU/row {cpu * us:5.1f} us (client {self.cpu_client * us:4.1f} of which kernel "
                f"{self.cpu_client_kernel * us:3.1f}, "
                f"PostgreSQL {self.cpu_postgres * us:4.1f}, Redis {self.cpu_redis * us:4.1f}); "
                f"{cpu:4.2f} CPU s in {self.seconds:4.2f} s; load {load()}")


def load() -> str:
    """The machine's 1-minute load average over its cores: the benchmark shares them with whatever else runs."""
    return f"{os.getloadavg()[0]:.1f}/{os.cpu_count()}"


async def copy_baseline(admin: asyncpg.Connection, n: int) -> Run:
    rows = [(TENANT, uuid.uuid4(), f"learner-{i % 1000}", f"lesson-{i % 50}", "lesson_viewed", datetime.now(UTC))
            for i in range(n)]
    backend = await admin.fetchval("SELECT pg_backend_pid()")
    server, client = process_cpu(backend), os.times()
    start = time.perf_counter()
    columns = ["tenant_id", "event_id", "learner_id", "lesson_id", "verb", "occurred_at"]
    await admin.copy_records_to_table("progress_events", records=rows, columns=columns)
    seconds = time.perf_counter() - start
    used = os.times()
    return Run(n, seconds, used.user + used.system - client.user - client.system, process_cpu(backend) - server,
               0.0, used.system - client.system)


async def drain_with(processes: int, *, client: aioredis.Redis, admin: asyncpg.Connection, database_url: str,
                     n: int, batch: int, concurrency: int, pairs: str, profile: bool = False) -> Run:
    stream = f"bench:evaluator:{secrets.token_hex(4)}"
    items = events(n, pairs, salt=stream[-8:])
    try:
        await fill(client, stream, items)
        async with Evaluators(processes, Child(database_url, stream, 0, batch, concurrency, profile)) as evaluators:
            pids = await backend_pids(admin)
            postgres, redis_before = sum(map(process_cpu, pids)), await redis_cpu(client)
            start = time.perf_counter()
            evaluators.go.set()
            while not await drained(client, stream):  # noqa: ASYNC110  # polling Redis
                await asyncio.sleep(0.01)
            seconds = time.perf_counter() - start
            postgres = sum(map(process_cpu, pids)) - postgres
            redis_used = await redis_cpu(client) - redis_before
            cpu, kernel, _ = await evaluators.finish()
        stored = await admin.fetchval("SELECT count(*) FROM progress_events WHERE event_id = ANY($1::uuid[])",
                                      [uuid.UUID(event_id) for event_id, _ in items])
        if stored != n:
            raise SystemExit(f"only {stored} of {n} events stored")
        return Run(n, seconds, cpu, postgres, redis_used, kernel)
    finally:
        await client.delete(stream)


async def statement_alone(pool: asyncpg.Pool, n: int, batch: int, pairs: str) -> float:
    """The write statement alone (one connection, no Redis, entries already joined): the ceiling of one
    transaction at a time."""
    items = [data for _, data in events(n, pairs, salt="alone")]
    payloads = [progress.batch(items[at:at + batch]) for at in range(0, n, batch)]
    start = time.perf_counter()
    async with pool.acquire() as connection:
        for payload in payloads:
            async with connection.transaction():
                await write_entries(connection, TENANT, payload, fresh=True)
    return n / (time.perf_counter() - start)


async def lag_at_rate(rate: int, seconds: float, processes: int, *, client: aioredis.Redis, database_url: str,
                      batch: int, concurrency: int, pairs: str) -> list[float]:
    """Open loop: each 10 ms tick sends its share of requests (10 events each) whatever the evaluator
    does; every entry's lag is measured by the process that committed it."""
    stream = f"bench:evaluator:{secrets.token_hex(4)}"
    intake = ProgressIntake(client, stream, ttl=120)
    items = events(int(rate * seconds), pairs, salt=stream[-8:])
    requests = [items[at:at + 10] for at in range(0, len(items), 10)]
    try:
        async with Evaluators(processes, Child(database_url, stream, 0, batch, concurrency, False, lags=True)) \
                as evaluators:
            evaluators.go.set()
            per_tick = max(1, len(requests) // int(seconds * 100))
            begin = time.perf_counter()
            for tick, at in enumerate(range(0, len(requests), per_tick)):
                await asyncio.gather(*(intake.accept(TENANT, [(event_id, body_hash(data), data)
                                                              for event_id, data in request])
                                       for request in requests[at:at + per_tick]))
                await asyncio.sleep(max(0.0, begin + (tick + 1) * 0.01 - time.perf_counter()))
            offered = len(items) / (time.perf_counter() - begin)
            while not await drained(client, stream):  # noqa: ASYNC110  # polling Redis
                await asyncio.sleep(0.01)
            _, _, lags = await evaluators.finish()
        if offered < rate * 0.95:
            print(f"  (the producer kept only {offered:.0f} events/s of {rate})")
        return sorted(lags)
    finally:
        await client.delete(stream)


async def hot_slot(shard_counts: list[int], seconds: float) -> None:
    """The accept script on a three-master Redis Cluster (started here, as the tests do) with every tenant
    in one stream (one slot) or spread over shards: events/s and how the masters' CPU divides."""
    import tempfile
    from pathlib import Path

    from redis.asyncio.cluster import RedisCluster

    from learner_api.streams import ProgressStreams
    from tests.evaluator.redis_cluster import redis_cluster

    with tempfile.TemporaryDirectory() as directory, redis_cluster(Path(directory)) as cluster:
        masters = [port for port, _ in cluster.masters()]
        print(f"\naccept script on a Redis Cluster of {len(masters)} masters, 40 tenants, 10 events a request, "
              f"{seconds:.0f} s each")
        for shards in shard_counts:
            client = RedisCluster.from_url(cluster.url)
            intake = ProgressIntake(client, ProgressStreams(f"bench:{shards}", shards, cluster=True),  # type: ignore[arg-type]
                                    ttl=120)
            tenants = [f"tenant-{i}" for i in range(40)]
            cpu = {port: await redis_cpu(aioredis.Redis(port=port)) for port in masters}
            sent, begin = 0, time.perf_counter()
            while time.perf_counter() - begin < seconds:
                batch = [(tenant, events(10, "new", salt=secrets.token_hex(2))) for tenant in tenants]
                await asyncio.gather(*(intake.accept(tenant, [(event_id, body_hash(data), data)
                                                              for event_id, data in items]) for tenant, items in batch))
                sent += 10 * len(tenants)
            elapsed = time.perf_counter() - begin
            used = [await redis_cpu(aioredis.Redis(port=port)) - cpu[port] for port in masters]
            share = ", ".join(f"{100 * u / sum(used):.0f}%" for u in sorted(used, reverse=True))
            print(f"  {shards:2d} shard(s): {sent / elapsed:8.0f} events/s; masters' Redis CPU split {share}; "
                  f"busiest master {max(used) / elapsed * 100:.0f}% of a core")
            await client.aclose()


async def main(args: argparse.Namespace) -> None:
    if args.hot_slot:
        await hot_slot([int(n) for n in args.hot_slot.split(",")], args.seconds)
        return
    database_url = await prepare(DATABASE)
    admin_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + DATABASE
    admin = await asyncpg.connect(admin_url)
    await admin.execute("TRUNCATE progress_events, lesson_progress")
    client = aioredis.from_url(REDIS_URL)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2, statement_cache_size=0)
    common = {"client": client, "database_url": database_url, "batch": args.batch, "concurrency": args.concurrency,
              "pairs": args.pairs}
    counts = [int(p) for p in args.processes.split(",")]
    print(f"\n{args.events} events a run, batches of {args.batch}, {args.concurrency} in flight per process, "
          f"pairs: {args.pairs}; PostgreSQL and Redis on this machine ({os.cpu_count()} cores, shared)\n")
    runs: dict[int, list[Run]] = {p: [] for p in counts}
    copies: list[Run] = []
    loads: list[float] = []
    try:
        for round_ in range(1, args.rounds + 1):
            copy = await copy_baseline(admin, args.events)
            copies.append(copy)
            print(f"round {round_}: copy_records_to_table {copy.rate:9.0f} rows/s  {copy.per_row()}")
            for processes in counts:
                run = await drain_with(processes, admin=admin, n=args.events,
                                       profile=args.profile and round_ == args.rounds and processes == counts[-1],
                                       **common)  # type: ignore[arg-type]
                runs[processes].append(run)
                loads.append(os.getloadavg()[0])
                plural = "es" if processes > 1 else "  "
                print(f"         {processes} evaluator process{plural}  {run.rate:9.0f} rows/s  {run.per_row()}")
        copy = await copy_baseline(admin, args.events)
        copies.append(copy)
        print(f"finally: copy_records_to_table {copy.rate:9.0f} rows/s  {copy.per_row()}")
        alone = await statement_alone(pool, args.events, args.batch, args.pairs)
        print(f"\nthe write statement alone (one connection, no Redis): {alone:9.0f} rows/s")
        copy_cpu = statistics.median(run.cpu_per_row for run in copies)
        print(f"\nRatio to COPY (goal >= 0.5x): each run's rows/s over the geometric mean of the COPY runs just "
              f"before and after it, the median of the {args.rounds} rounds (load {statistics.median(loads):.1f} "
              f"on {os.cpu_count()} cores); CPU: COPY's CPU per row over the evaluator's (the ratio if both had "
              f"the same CPU), COPY {copy_cpu:.1f} us/row:")
        for processes, measured in runs.items():
            ratio = statistics.median(run.rate / math.sqrt(copies[i].rate * copies[i + 1].rate)
                                      for i, run in enumerate(measured))
            cpu = statistics.median(run.cpu_per_row for run in measured)
            print(f"  {processes} process{'es' if processes > 1 else '  '}: "
                  f"{statistics.median(run.rate for run in measured):9.0f} rows/s, {ratio:.2f}x "
                  f"({'met' if ratio >= 0.5 else 'MISSED'}); CPU {cpu:.1f} us/row, {copy_cpu / cpu:.2f}x")
        lags = await lag_at_rate(args.rate, args.seconds, args.lag_processes, **common)  # type: ignore[arg-type]
        print(f"\nend-to-end lag at {args.rate} events/s for {args.seconds:.0f} s through the accept script, "
              f"{args.lag_processes} evaluator process(es), {len(lags)} events (XADD -> committed row): "
              f"p50 {lags[len(lags) // 2] * 1000:.0f} ms, p99 {lags[int(len(lags) * 0.99)] * 1000:.0f} ms, "
              f"max {lags[-1] * 1000:.0f} ms")
        if args.profile:
            print("\nprofile of evaluator process 0 in the last run (cProfile on CPU time, by own time):")
            pstats.Stats("/tmp/evaluator-bench-0.prof").sort_stats("tottime").print_stats(25)  # noqa: S108
    finally:
        await client.aclose()
        await pool.close()
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=2000, help="EVALUATOR_BATCH_SIZE")
    parser.add_argument("--processes", default="1,2,4", help="evaluator process counts to measure")
    parser.add_argument("--concurrency", type=int, default=Settings.model_fields["evaluator_concurrency"].default,
                        help="batches in flight per process (EVALUATOR_CONCURRENCY; its default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--lag-processes", type=int, default=1)
    parser.add_argument("--pairs", choices=("repeat", "new"), default="repeat")
    parser.add_argument("--profile", action="store_true", help="cProfile one evaluator process in the last run")
    parser.add_argument("--hot-slot", metavar="SHARDS", help="only: the accept script on a local Redis Cluster "
                        "with these shard counts (e.g. 1,3,12)")
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
