"""The informers that feed the operator's caches, against the emulator over HTTP."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import pytest
from kopf._cogs.structs.references import match_namespace

from learner_operator.kube.client import connect
from learner_operator.kube.informer import METADATA_ONLY, Informer, namespace_matches, scopes
from tests.kube_emulator import Cluster
from tests.operator_harness import NS, eventually

pytestmark = pytest.mark.emulator_only("drives the emulator's objects directly")


def secret(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
            "data": {"DATABASE_URL": base64.b64encode(value.encode()).decode()}}


async def test_a_list_asked_for_as_single_objects_metadata_is_refused_as_a_real_server_does(cluster: Cluster) -> None:
    url = f"{str(cluster.url).rstrip('/')}/api/v1/namespaces/{NS}/secrets"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Accept": METADATA_ONLY}) as refused:
            assert refused.status == 406
        async with session.get(url, headers={"Accept": METADATA_ONLY.replace(
                "PartialObjectMetadata", "PartialObjectMetadataList")}) as listed:
            assert listed.status == 200
            assert (await listed.json())["kind"] == "PartialObjectMetadataList"


async def test_secrets_are_seen_as_metadata_only_and_a_failing_callback_does_not_end_the_watch(
    cluster: Cluster,
) -> None:
    cluster.put(secret("before", "postgresql://listed-value"))
    seen: list[tuple[str, dict[str, Any]]] = []
    listed: list[list[dict[str, Any]]] = []

    def on_event(kind: str, body: dict[str, Any]) -> None:
        seen.append((kind, body))
        if body["metadata"]["name"] == "boom":
            raise KeyError("a bug in a callback")

    api = await connect(str(cluster.url).rstrip("/"))
    informer = Informer(api, "v1", "secrets", namespace=NS, metadata_only=True, on_event=on_event,
                        on_listed=lambda items, version: listed.append(items))
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.ready.wait(), 10)
        cluster.put(secret("boom", "postgresql://value-one"))
        cluster.put(secret("after", "postgresql://value-two"))
        await eventually(lambda: any(b["metadata"]["name"] == "after" for _, b in seen), what="events after a bug")
    finally:
        task.cancel()
        await api.close()
    assert [item["metadata"]["name"] for item in listed[0]] == ["before"]
    assert "value" not in repr(seen) + repr(listed)  # no data: metadata only


@pytest.mark.parametrize("pattern", ["myapp-*, !*-pr-*, *pr-123", "!*-pr-*, *pr-123", "team-*,!team-old",
                                     "!kube-system", "default", "team-?", "*"])
def test_namespace_patterns_are_read_as_kopf_reads_them(pattern: str) -> None:
    names = ["myapp-test", "myapp-pr-123", "myapp-pr-456", "otherapp-pr-123", "kube-system", "team-a", "team-old",
             "default"]
    assert [namespace_matches(n, pattern) for n in names] == [match_namespace(n, pattern) for n in names]


def test_named_namespaces_are_watched_each_and_patterns_cluster_wide() -> None:
    assert scopes([]) == [None]
    assert scopes(["staging", "prod"]) == ["staging", "prod"]
    assert scopes(["team-*"]) == scopes(["!kube-system"]) == scopes(["a,b"]) == [None]
