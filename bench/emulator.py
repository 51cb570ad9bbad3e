"""The tests' Kubernetes API emulator as a standalone server (for benchmarks and manual poking)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import kmock

from tests.conftest import CRD_FILE, load
from tests.kube_emulator import standard_cluster


async def serve(port: int) -> None:
    cluster = standard_cluster(load(CRD_FILE))
    async with cluster, kmock.Server(cluster, port=port):
        for namespace in ("bench", "bench-baseline"):  # the operator's, the plain script's (operator_bench)
            cluster.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parser.parse_args().port))
