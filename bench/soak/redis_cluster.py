"""The soak's Redis Cluster (``--redis cluster``): six redis-server processes, three masters with a replica
each, every append-only file fsynced on every write, and what a managed cluster does to them underneath a
running platform: a coordinated failover, a master killed (its replica takes over after the node timeout;
the old one, restarted, rejoins as a replica), a master frozen for about the node timeout, a slot moved.

Redis replicates asynchronously and learner-api does not WAIT for a replica: a write a master acknowledged
and died before sending on can be lost on the failover that follows (docs/install.md, "Redis Cluster").
The soak keeps its invariant (every event answered 202 is stored) and reports such a loss, naming the
unclean failovers before it, rather than excusing it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from bench.soak.processes import Proc
from learner_api.redis_client import CLUSTER_SHARDS
from learner_api.streams import ProgressStreams
from tests.evaluator.redis_cluster import NODES, Cluster, binary, create, free_ports, node_argv

#: How long a master may not answer before its replica is promoted (ElastiCache's is 15 s; short here so
#: that a minute of soak sees several).
NODE_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class Node:
    port: int
    node_id: str
    master: bool
    master_id: str  # "-" for a master
    failed: bool


class RedisClusterSide:
    """The cluster's six nodes as processes the soak supervises, kills and freezes, and the operations a
    managed cluster performs (run in a thread: the tests' cluster helpers are synchronous)."""

    cluster = True

    def __init__(self, folder: Path) -> None:
        self.folder, self.ports = folder, free_ports(NODES)
        server = binary("redis-server")
        self.nodes = {port: Proc(f"redis-{port}", "redis", node_argv(server, port, folder, durable=True,
                                                                     node_timeout_ms=NODE_TIMEOUT_MS),
                                 dict(os.environ), folder / f"stdout-{port}.log") for port in self.ports}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def service_env(self) -> dict[str, str]:
        return {"REDIS_CLUSTER": "true", "PROGRESS_STREAM_SHARDS": str(CLUSTER_SHARDS)}

    def processes(self) -> list[Proc]:
        self.folder.mkdir(exist_ok=True)
        return list(self.nodes.values())

    async def start(self) -> None:
        for proc in self.nodes.values():
            proc.start()
        await asyncio.to_thread(create, binary("redis-cli"), self.ports)

    def client(self) -> aioredis.Redis:
        return RedisCluster.from_url(self.url)  # type: ignore[return-value]  # the same command methods

    async def node_urls(self) -> list[str]:
        """Every master's URL (where the keys are)."""
        return [f"redis://127.0.0.1:{n.port}/0" for n in await asyncio.to_thread(self.view)
                if n.master and not n.failed]

    # -- what the cluster looks like, asked of a node that answers

    def view(self) -> list[Node]:
        for port, proc in self.nodes.items():
            if not proc.running() or proc.frozen:
                continue
            try:  # redis-py hands CLUSTER NODES over parsed: {"ip:port@cport": {"node_id": ..., "flags": ...}}
                described = redis.Redis(port=port, socket_timeout=2, protocol=2).execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER NODES")
            except redis.RedisError:
                continue
            nodes = []
            for address, node in described.items():
                flags, port_text = str(node["flags"]), address.split("@")[0].rpartition(":")[2]
                if not port_text.isdigit() or "noaddr" in flags or "handshake" in flags:
                    continue  # a node being met or forgotten: not one of ours yet
                nodes.append(Node(int(port_text), str(node["node_id"]), "master" in flags, str(node["master_id"]),
                                  "fail" in flags.replace("fail?", "")))
            return nodes
        raise RuntimeError("no node of the Redis Cluster answers")

    def masters(self) -> list[Node]:
        return sorted((n for n in self.view() if n.master and not n.failed), key=lambda n: n.port)

    def wait_ok(self, within: float = 90) -> None:
        Cluster(self.ports).wait_ok(within)

    # -- the faults: each returns what it did, for the history

    async def failover(self, pick: float) -> str:
        """CLUSTER FAILOVER on a master's replica: coordinated, nothing acknowledged is lost."""
        masters = await asyncio.to_thread(self.masters)
        master = masters[int(pick * len(masters))]
        nodes = await asyncio.to_thread(self.view)
        replica = next((n for n in nodes if n.master_id == master.node_id and not n.failed), None)
        if replica is None:
            raise RuntimeError(f"master {master.port} has no replica to fail over to")
        await asyncio.to_thread(lambda: redis.Redis(port=replica.port, socket_timeout=5).execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER FAILOVER"))
        await asyncio.to_thread(self.wait_ok)
        return f"{master.port} -> {replica.port}"

    async def kill_master(self, pick: float, down: float) -> str:
        """kill -9 of a master; its replica is promoted after the node timeout; restarted ``down`` seconds
        later, the old master rejoins as a replica."""
        masters = await asyncio.to_thread(self.masters)
        master = masters[int(pick * len(masters))]
        proc = self.nodes[master.port]
        proc.kill9()
        await asyncio.sleep(down)
        proc.start()
        proc.restarts += 1
        await asyncio.to_thread(self.wait_ok)
        return await self.outcome(master)

    async def freeze_master(self, pick: float, seconds: float) -> str:
        """SIGSTOP of a master for ``seconds``: past the node timeout its replica takes over and the thawed
        master turns into a replica; under it, clients only wait."""
        masters = await asyncio.to_thread(self.masters)
        master = masters[int(pick * len(masters))]
        proc = self.nodes[master.port]
        proc.send(signal.SIGSTOP)
        proc.frozen = True
        try:
            await asyncio.sleep(seconds)
        finally:
            proc.send(signal.SIGCONT)
            proc.frozen = False
        await asyncio.to_thread(self.wait_ok)
        return await self.outcome(master)

    async def outcome(self, master: Node) -> str:
        still = any(n.port == master.port for n in await asyncio.to_thread(self.masters))
        return f"{master.port} ({'still master' if still else 'failed over to its replica'})"

    async def migrate_slot(self, pick: float, stream_base: str) -> str:
        """Move the slot of one progress stream to another master, a few keys at a time, under load."""
        streams = ProgressStreams(stream_base, CLUSTER_SHARDS, cluster=True).streams
        stream = streams[int(pick * len(streams))]
        slot = key_slot(stream.encode())
        target = await asyncio.to_thread(Cluster(self.ports).migrate_slot, slot)
        return f"{stream} (slot {slot}) -> {target}"

