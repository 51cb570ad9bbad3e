"""Live Python memory per LearnerPlatform in the operator: what its caches hold, without allocator slack.

The operator benchmark reports RSS, which also counts memory Python's allocator keeps after a burst;
this one runs the operator in-process against the emulator (in a process of its own), creates N
platforms, and counts with tracemalloc what is still allocated once they converged, top lines first.

    .venv/bin/python -m bench.operator_memory [--platforms 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import aiohttp
import kopf

from bench.operator_bench import NS, free_port, platform_doc
from learner_operator.handlers import OperatorConfig, register

ROOT = Path(__file__).resolve().parent.parent


async def measure(url: str, count: int, memo: kopf.Memo) -> None:
    async with aiohttp.ClientSession() as session:
        data = {"DATABASE_URL": "cG9zdGdyZXM6Ly94", "REDIS_URL": "cmVkaXM6Ly95", "JWT_SECRET": "and0LWtleQ=="}
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ai-platform-secrets", "namespace": NS},
                  "data": data}
        async with session.post(f"{url}/api/v1/namespaces/{NS}/secrets", json=secret):
            pass
        await asyncio.sleep(3)
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        limit = asyncio.Semaphore(16)

        async def create(index: int) -> None:
            async with limit, session.post(f"{url}/apis/learner.dev/v1alpha1/namespaces/{NS}/learnerplatforms",
                                           json=platform_doc(f"m{index}")) as response:
                assert response.status < 300, await response.text()

        await asyncio.gather(*(create(i) for i in range(count)))
        await asyncio.sleep(max(10.0, count / 15))
        gc.collect()
        after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in stats)
    print(f"{count} platforms ({len(memo['runtime'].platforms)} known): {total / 1024 / count:.1f} KiB of live "
          "Python objects per platform")
    for stat in stats[:12]:
        where = stat.traceback[0]
        source = where.filename.split("site-packages/")[-1]
        print(f"  {stat.size_diff / 1024 / count:6.2f} KiB  {source}:{where.lineno}")


def main(count: int) -> None:
    port = free_port()
    emulator = subprocess.Popen([sys.executable, "-m", "bench.emulator", "--port", str(port)],
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    memo, ready, stop = kopf.Memo(), threading.Event(), threading.Event()

    def operator() -> None:
        registry = kopf.OperatorRegistry()
        register(registry, OperatorConfig(api_host=url, metrics_port=None),
                 login=lambda **_: kopf.ConnectionInfo(server=url, insecure=True))
        asyncio.run(kopf.operator(registry=registry, settings=kopf.OperatorSettings(), clusterwide=True,
                                  standalone=True, memo=memo, stop_flag=stop, ready_flag=ready))

    try:
        threading.Event().wait(3)  # the emulator starts
        thread = threading.Thread(target=operator, daemon=True)
        thread.start()
        ready.wait(30)
        asyncio.run(measure(url, count, memo))
        stop.set()
        thread.join(30)
    finally:
        emulator.terminate()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platforms", type=int, default=1000)
    main(parser.parse_args().platforms)
