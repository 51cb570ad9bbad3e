"""Write-only progress into a real Redis Stream: 202, idempotent per id, 409 on conflict, capped."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis.asyncio as aioredis

from learner_api.routes.progress import MAX_BODY_BYTES, MAX_EVENTS
from tests.api.conftest import REDIS_URL, bearer


def event(verb: str = "lesson_viewed", lesson: str = "python-101-hello", **extra: object) -> dict[str, object]:
    return {"id": str(uuid.uuid4()), "verb": verb, "lesson_id": lesson,
            "occurred_at": datetime.now(UTC).isoformat(), **extra}


async def queued(stream: str) -> list[dict[str, object]]:
    client = aioredis.from_url(REDIS_URL)
    try:
        return [json.loads(fields[b"e"]) for _, fields in await client.xrange(stream)]
    finally:
        await client.aclose()


async def test_a_batch_is_queued_once_however_often_it_is_sent(client: httpx.AsyncClient, stream: str) -> None:
    batch = {"events": [event(), event("lesson_completed")]}
    first = await client.post("/v1/progress", json=batch, headers=bearer("ada", "acme"))
    assert (first.status_code, first.json()) == (202, {"accepted": 2, "duplicates": 0})
    retry = await client.post("/v1/progress", json=batch, headers=bearer("ada", "acme"))
    assert (retry.status_code, retry.json()) == (202, {"accepted": 0, "duplicates": 2})
    entries = await queued(stream)
    assert [(e["id"], e["tenant"], e["learner"], e["verb"]) for e in entries] == [
        (batch["events"][0]["id"], "acme", "ada", "lesson_viewed"),  # type: ignore[index]
        (batch["events"][1]["id"], "acme", "ada", "lesson_completed")]  # type: ignore[index]


async def test_reusing_an_id_for_another_event_is_409_and_takes_nothing(client: httpx.AsyncClient,
                                                                        stream: str) -> None:
    first = event()
    assert (await client.post("/v1/progress", json={"events": [first]}, headers=bearer("ada", "acme"))
            ).status_code == 202
    changed = {**first, "verb": "lesson_completed"}
    fresh = event()
    response = await client.post("/v1/progress", json={"events": [fresh, changed]}, headers=bearer("ada", "acme"))
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["conflicting_ids"] == [first["id"]]
    assert [e["id"] for e in await queued(stream)] == [first["id"]]  # the fresh event was not taken either
    # the same id from another learner is another event too
    other = await client.post("/v1/progress", json={"events": [first]}, headers=bearer("grace", "acme"))
    assert other.status_code == 409
    twice = await client.post("/v1/progress", json={"events": [fresh, {**fresh, "lesson_id": "sql-basics-join"}]},
                              headers=bearer("ada", "acme"))
    assert twice.status_code == 409


async def test_tenants_do_not_share_event_ids(client: httpx.AsyncClient, stream: str) -> None:
    same = event()
    for tenant in ("acme", "globex"):
        response = await client.post("/v1/progress", json={"events": [same]}, headers=bearer("ada", tenant))
        assert response.json() == {"accepted": 1, "duplicates": 0}


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({"events": [event() for _ in range(MAX_EVENTS + 1)]}, 413, f"at most {MAX_EVENTS}"),
    ({"events": []}, 422, "events"),
    ({"events": [event(verb="lesson_liked")]}, 422, "verb"),
    ({"events": [{**event(), "id": "not-a-uuid"}]}, 422, "id"),
    ({"events": [event(occurred_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())]}, 422, "future"),
    ({"events": [event(occurred_at="2026-01-01T10:00:00")]}, 422, "timezone"),
])
async def test_bad_batches_are_refused_with_a_reason(client: httpx.AsyncClient, stream: str,
                                                     body: dict[str, object], status: int, detail: str) -> None:
    response = await client.post("/v1/progress", json=body, headers=bearer("ada", "acme"))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    assert await queued(stream) == []


async def test_an_oversized_body_is_413_before_it_is_parsed(client: httpx.AsyncClient, stream: str) -> None:
    huge = b'{"events": [' + b" " * MAX_BODY_BYTES + b"]}"
    response = await client.post("/v1/progress", content=huge, headers={**bearer("ada", "acme"),
                                                                       "Content-Type": "application/json"})
    assert response.status_code == 413
    assert str(MAX_BODY_BYTES) in response.json()["detail"]


async def test_concurrent_batches_share_round_trips_but_keep_their_own_answers(client: httpx.AsyncClient,
                                                                               stream: str) -> None:
    taken = event()
    assert (await client.post("/v1/progress", json={"events": [taken]}, headers=bearer("ada", "acme"))
            ).status_code == 202
    batches = [{"events": [event(), event()]} for _ in range(30)]
    batches[7] = {"events": [event(), {**taken, "verb": "lesson_completed"}]}  # one conflicting batch
    batches[12] = {"events": [taken]}  # one pure retry
    responses = await asyncio.gather(*(client.post("/v1/progress", json=b, headers=bearer("ada", "acme"))
                                       for b in batches))
    assert [r.status_code for r in responses] == [409 if i == 7 else 202 for i in range(30)]
    assert responses[12].json() == {"accepted": 0, "duplicates": 1}
    assert all(r.json() == {"accepted": 2, "duplicates": 0} for i, r in enumerate(responses) if i not in (7, 12))
    assert len(await queued(stream)) == 1 + 28 * 2


async def test_a_redis_that_forgot_the_script_is_taught_again(client: httpx.AsyncClient, stream: str) -> None:
    redis_client = aioredis.from_url(REDIS_URL)
    try:
        await redis_client.script_flush()  # as after a restart or a failover
    finally:
        await redis_client.aclose()
    response = await client.post("/v1/progress", json={"events": [event()]}, headers=bearer("ada", "acme"))
    assert (response.status_code, response.json()) == (202, {"accepted": 1, "duplicates": 0})
