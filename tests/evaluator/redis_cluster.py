"""A real Redis Cluster on loopback for the tests: six Debian ``redis-server`` processes (three masters,
each with a replica) in a temporary directory, made into a cluster by ``redis-cli --cluster create``,
plus the two operations a managed cluster performs under a running platform: moving a slot to another
master (resharding) and failing a master over to its replica."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

NODES = 6


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """Ports whose cluster bus port (+10000) is free too."""
    found: list[int] = []
    while len(found) < n:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < 55000 and port not in found and _free(port + 10000):
            found.append(port)
    return found


@dataclass
class Cluster:
    ports: list[int]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node, handing CLUSTER replies over as Redis sends them."""
        client = redis.Redis(port=port, socket_timeout=10, protocol=2)
        for command in ("CLUSTER INFO", "CLUSTER NODES", "CLUSTER SLOTS", "CLUSTER MYID", "CLUSTER GETKEYSINSLOT"):
            client.set_response_callback(command, lambda response, **_: response)
        return client

    def owner(self, slot: int) -> tuple[int, str]:
        """(port, node id) of the master serving ``slot``."""
        for start, end, master, *_ in self.node(self.ports[0]).execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                port = int(master[1])
                return port, self.node(port).execute_command("CLUSTER MYID").decode()
        raise LookupError(slot)

    def masters(self, seen_by: int | None = None) -> list[tuple[int, str]]:
        out = []
        for line in self.node(seen_by or self.ports[0]).execute_command("CLUSTER NODES").decode().splitlines():
            node_id, address, flags = line.split()[:3]
            if "master" in flags and "fail" not in flags:
                out.append((int(address.split(":")[1].split("@")[0]), node_id))
        return out

    def replica_of(self, master_id: str) -> int:
        for line in self.node(self.ports[0]).execute_command("CLUSTER NODES").decode().splitlines():
            parts = line.split()
            if "slave" in parts[2] and parts[3] == master_id:
                return int(parts[1].split(":")[1].split("@")[0])
        raise LookupError(master_id)

    def migrate_slot(self, slot: int, *, chunk: int = 50, pause: float = 0.02) -> int:
        """Move ``slot`` to another master the way ``redis-cli --cluster reshard`` does, a few keys at a
        time so that clients meet it half-moved; returns the new owner's port."""
        source_port, source_id = self.owner(slot)
        target_port, target_id = next((port, node) for port, node in self.masters() if node != source_id)
        source, target = self.node(source_port), self.node(target_port)
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, chunk):
            source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 10000, "REPLACE", "KEYS", *keys)
            time.sleep(pause)
        for port, _ in self.masters():
            self.node(port).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        return target_port

    def fail_over(self, slot: int) -> int:
        """A manual (coordinated) failover of the master serving ``slot``; returns the new master's port."""
        _, master_id = self.owner(slot)
        replica = self.replica_of(master_id)
        self.node(replica).execute_command("CLUSTER FAILOVER")
        deadline = time.monotonic() + 30
        while self.owner(slot)[0] != replica:
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not take over")
            time.sleep(0.1)
        return replica

    def wait_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for port in self.ports:  # every node agrees: slots served, and who is a master
                info = self.node(port).execute_command("CLUSTER INFO").decode()
                states.append("cluster_state:ok" in info and len(self.masters(seen_by=port)) == NODES // 2)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not become ok")
            time.sleep(0.1)


def binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        raise RuntimeError(f"{name} is not installed: apt-get install redis-server (scripts/test does this as root)")
    return found


def node_argv(server: str, port: int, directory: Path, *, node_timeout_ms: int = 3000,
              durable: bool = False) -> list[str]:
    """One node's command line; ``durable``: its append-only file fsynced on every write (in a folder of its
    own: nodes sharing ``directory`` would share it)."""
    persistence = ["--appendonly", "yes", "--appendfsync", "always", "--appenddirname", f"aof-{port}"] \
        if durable else ["--appendonly", "no"]
    return [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", str(node_timeout_ms),
            "--dir", str(directory), "--save", "", *persistence, "--logfile", f"redis-{port}.log"]


def create(cli: str, ports: list[int]) -> Cluster:
    """Once every node of ``ports`` answers: make them a cluster (a replica per master) and wait until ok."""
    for port in ports:
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis(port=port, socket_timeout=1).ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
                    "--cluster-replicas", "1", "--cluster-yes"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    cluster = Cluster(ports)
    cluster.wait_ok()
    return cluster


@contextmanager
def redis_cluster(directory: Path) -> Iterator[Cluster]:
    server, cli = binary("redis-server"), binary("redis-cli")
    ports = free_ports(NODES)
    processes = []
    try:
        for port in ports:
            processes.append(subprocess.Popen(node_argv(server, port, directory), stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
        cluster = create(cli, ports)
        yield cluster
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
