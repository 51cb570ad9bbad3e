"""The evaluator as it runs in its pod: alert rules to a real Alertmanager, metrics to a real
Pushgateway (group deleted on shutdown), and SIGKILL in the middle of 10,000 events losing nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from learner_api.evaluator import service
from learner_api.streams import FIELD
from tests.api.conftest import REDIS_URL, settings_for
from tests.evaluator.conftest import entry, rows
from tests.net import free_port, wait_http


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
        return str(response.read().decode())


async def eventually(check, within: float = 10.0, every: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)


async def test_alert_goes_pending_firing_resolved_in_alertmanager_and_pushgateway_group_is_removed(
        database_url: str, stream: str, tenant: str, alertmanager: str, pushgateway: str, tmp_path: Path,
        redis_client: aioredis.Redis) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("interval: 0.2\nrules:\n  - alert: DeadLettersTest\n    signal: dead_letters\n    above: 0\n"
                     "    for: 1s\n    labels: {severity: warning}\n"
                     "    annotations: {summary: '{{ $value }} dead letters'}\n")
    settings = settings_for(database_url, progress_stream=stream, alert_rules_file=str(rules),
                            alertmanager_url=alertmanager, pushgateway_url=pushgateway, push_interval_seconds=0.2,
                            metrics_port=free_port(), pod_name=f"evaluator-{tenant}")
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(settings, stop, claim_interval=0.2))
    group = f'instance="evaluator-{tenant}",job="learner-evaluator"'
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{settings.metrics_port}/livez")
        await redis_client.xadd(stream, entry(tenant))
        await redis_client.xadd(stream, {FIELD: b"not json"})  # straight to the dead letters

        def am_alerts() -> list[dict[str, object]]:
            return [a for a in json.loads(get(f"{alertmanager}/api/v2/alerts"))
                    if a["labels"]["alertname"] == "DeadLettersTest"]  # type: ignore[index]

        def metric(line: str) -> bool:
            return line in get(f"http://127.0.0.1:{settings.metrics_port}/metrics")

        await eventually(lambda: metric("evaluator_dead_letter_entries 1.0"))
        assert await asyncio.to_thread(am_alerts) == []  # pending for 1s first
        assert await asyncio.to_thread(metric, 'evaluator_alerts_firing{alertname="DeadLettersTest"} 0.0')
        [alert] = await eventually(am_alerts)
        assert alert["annotations"] == {"summary": "1 dead letters"}
        assert alert["status"]["state"] == "active"  # type: ignore[index]
        assert await asyncio.to_thread(metric, 'evaluator_alerts_firing{alertname="DeadLettersTest"} 1.0')

        pushed = await eventually(lambda: group in get(f"{pushgateway}/metrics") and get(f"{pushgateway}/metrics"))
        assert f"lesson_views_total{{{group}}} 1" in pushed

        await redis_client.delete(f"{stream}:dead")  # an SRE handled the dead letters
        await eventually(lambda: am_alerts() == [])  # resolved: Alertmanager no longer lists it as active
        assert await asyncio.to_thread(metric, 'evaluator_alerts_firing{alertname="DeadLettersTest"} 0.0')
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)
    assert group not in get(f"{pushgateway}/metrics")


N = 20_000
#: uvicorn's exit status when it cannot listen (its STARTUP_FAILURE)
BIND_FAILED = 3


async def test_sigkill_mid_batch_then_restart_stores_every_event_exactly_once(
        database_url: str, admin_database_url: str, stream: str, tenant: str, redis_client: aioredis.Redis,
        tmp_path: Path) -> None:
    async with redis_client.pipeline(transaction=False) as pipe:
        for i in range(N):
            pipe.xadd(stream, entry(tenant, verb="lesson_completed" if i % 4 == 0 else "lesson_viewed",
                                    learner=f"learner-{i % 300}", lesson=f"lesson-{i % 40}"))
        await pipe.execute()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "NODE_ENV": "development",
           "PROGRESS_STREAM": stream, "EVALUATOR_BATCH_SIZE": "200", "EVALUATOR_CLAIM_IDLE_SECONDS": "1",
           "POD_NAME": "evaluator-0"}
    log_path = tmp_path / "evaluator.log"
    log = log_path.open("wb")

    async def start() -> tuple[asyncio.subprocess.Process, int]:
        port = free_port()
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "learner_api.cli", "evaluator",
                                                       env={**env, "METRICS_PORT": str(port)}, stdout=log, stderr=log)
        return process, port

    def started_again(process: asyncio.subprocess.Process) -> bool:
        """Whether ``process`` exited because its metrics port was taken between free_port() and its bind
        (other test suites on the machine open connections all the time): then it is started again."""
        if process.returncode is None:
            return False
        assert process.returncode == BIND_FAILED, f"the evaluator exited with {process.returncode}: {log_path}"
        return True

    admin = await asyncpg.connect(admin_database_url)  # polled on one connection: the kill follows the first commit
    first, _ = await start()
    try:
        deadline = time.monotonic() + 30
        while not await admin.fetchval("SELECT EXISTS (SELECT FROM progress_events WHERE tenant_id = $1)", tenant):
            assert time.monotonic() < deadline, "the evaluator stored nothing in 30 s"
            if started_again(first):
                first, _ = await start()
            await asyncio.sleep(0.002)
        if first.returncode is None:
            first.send_signal(signal.SIGKILL)
        await first.wait()
        # A COMMIT the killed process had sent is still the server's to finish: count once its sessions are gone.
        deadline = time.monotonic() + 30
        while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                                   " AND datname = current_database()",
                                   "learner-evaluator/evaluator-0"):
            assert time.monotonic() < deadline, "the killed evaluator's sessions outlived it by 30 s"
            await asyncio.sleep(0.05)
    finally:
        if first.returncode is None:
            first.send_signal(signal.SIGKILL)
        await first.wait()
        await admin.close()
    before_restart = await rows(admin_database_url, tenant)
    assert 0 < before_restart < N, f"the kill should land in the middle of the work ({before_restart} of {N})"

    second, port = await start()
    try:
        deadline = time.monotonic() + 60
        while await rows(admin_database_url, tenant) < N:
            assert time.monotonic() < deadline, "the restarted evaluator did not store every event in 60 s"
            if started_again(second):  # what it stored before it exited is not the next one's to count
                before_restart = await rows(admin_database_url, tenant)
                second, port = await start()
            await asyncio.sleep(0.05)
        metrics = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
        counted = sum(float(line.split()[1]) for line in metrics.splitlines()
                      if line.startswith(("lesson_views_total ", "lesson_completed_total ")))
        # the second process counted exactly the rows it added: redelivered ones count nothing
        assert counted == N - before_restart
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 20) == 0
    finally:
        if second.returncode is None:
            second.kill()
        log.close()
    assert await rows(admin_database_url, tenant) == N
    assert (await redis_client.xpending(stream, "evaluator"))["pending"] == 0


async def test_an_alertmanager_or_pushgateway_url_that_does_not_speak_http_is_a_failure_not_a_crash(
        database_url: str, admin_database_url: str, stream: str, tenant: str, tmp_path: Path,
        redis_client: aioredis.Redis) -> None:
    """ALERTMANAGER_URL pointing at the wrong port (an SSH server, say) answered every notification with a line
    urllib cannot read (http.client.BadStatusLine, not an OSError): the alert loop died and took the evaluator,
    and its progress ingestion, down with it at every firing alert: a crash loop. It is a failed notification
    (and, for a PUSHGATEWAY_URL so wrong, a failed push)."""
    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rules = tmp_path / "rules.yaml"
    rules.write_text("interval: 0.2\nrules:\n  - alert: AlwaysFiring\n    signal: dead_letters\n    above: -1\n"
                     "    for: 0s\n    labels: {severity: warning}\n")
    settings = settings_for(database_url, progress_stream=stream, alert_rules_file=str(rules),
                            alertmanager_url=f"http://127.0.0.1:{port}/api/v2/alerts",
                            pushgateway_url=f"http://127.0.0.1:{port}", push_interval_seconds=0.2,
                            metrics_port=free_port(), pod_name=f"evaluator-{tenant}")
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(settings, stop, claim_interval=0.2))
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{settings.metrics_port}/livez")

        def failed_notifications() -> float:
            for line in get(f"http://127.0.0.1:{settings.metrics_port}/metrics").splitlines():
                if line.startswith('evaluator_alert_notifications_total{result="failed"}'):
                    return float(line.split()[1])
            return 0.0

        await eventually(lambda: failed_notifications() >= 3, within=30)
        assert not running.done(), running
        await redis_client.xadd(stream, entry(tenant))  # and progress is still stored
        deadline = time.monotonic() + 30
        while await rows(admin_database_url, tenant) < 1:
            assert time.monotonic() < deadline, "progress not stored while notifications failed"
            await asyncio.sleep(0.1)
        assert not running.done(), running
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)
        server.close()
        await server.wait_closed()
