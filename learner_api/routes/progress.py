"""Progress, write-only: a batch of events, each with the client's own UUID, answered 202 once in Redis.

The evaluator moves accepted events into PostgreSQL. Sending the same batch again (a retry after a
timeout, say) changes nothing; reusing an id for a different event is a 409 and nothing of that batch
is taken. With Redis down the batch is refused with 503 and Retry-After, never dropped silently;
PostgreSQL being down does not matter here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse

from learner_api.auth import IdentityDep
from learner_api.dependencies import REDIS_DOWN, RedisDep, unavailable
from learner_api.edge import BODY_LIMITS
from learner_api.problems import Problem
from learner_api.progress_intake import ProgressIntake, body_hash, stream_entry

router = APIRouter(prefix="/v1", tags=["progress"])

MAX_EVENTS = 500
MAX_BODY_BYTES = BODY_LIMITS["/v1/progress"].limit
#: Clocks on phones drift; an event from further in the future than this is refused.
FUTURE_SKEW = timedelta(minutes=5)
#: An app may sync after months offline, but not after more than a year: older events are refused here
#: (422) rather than accepted and then found unstorable (a year-1 time with +14:00 is not even a UTC time).
MAX_AGE = timedelta(days=365)


class ProgressEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: UUID = Field(description="made by the client; sending it again is safe")
    verb: Literal["lesson_viewed", "lesson_completed"]
    lesson_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
    occurred_at: AwareDatetime


class ProgressBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[ProgressEvent] = Field(min_length=1)


class Accepted(BaseModel):
    accepted: int = Field(description="events new to the platform, now queued")
    duplicates: int = Field(description="events sent before with the same id and content (ignored)")


def _parse(raw: bytes) -> list[ProgressEvent]:
    try:
        batch = ProgressBatch.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{"location": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise Problem(422, "; ".join(f"{e['location']}: {e['message']}" for e in errors[:10]),
                      errors=errors[:50]) from None
    if len(batch.events) > MAX_EVENTS:
        raise Problem(413, f"{len(batch.events)} events in one batch; send at most {MAX_EVENTS}")
    now = datetime.now(UTC)
    latest, earliest = now + FUTURE_SKEW, now - MAX_AGE
    late = [i for i, event in enumerate(batch.events) if event.occurred_at > latest]
    if late:
        raise Problem(422, f"events {late[:10]} have occurred_at in the future; send the device's time in UTC")
    old = [i for i, event in enumerate(batch.events) if event.occurred_at < earliest]
    if old:
        raise Problem(422, f"events {old[:10]} have occurred_at more than {MAX_AGE.days} days ago; "
                           "they are too old to record")
    return batch.events


@router.post("/progress", status_code=202, response_model=Accepted,
             summary="Record progress events (idempotent per event id)",
             responses={409: {"description": "an id was already used for a different event"},
                        413: {"description": f"more than {MAX_EVENTS} events or {MAX_BODY_BYTES} bytes"},
                        503: {"description": "the queue (Redis) is unavailable; retry after Retry-After"}})
async def post_progress(request: Request, identity: IdentityDep, redis: RedisDep) -> JSONResponse:
    events = _parse(await request.body())  # bounded (MAX_BODY_BYTES) and authenticated first by the edge
    unique: dict[str, tuple[str, bytes, bytes]] = {}
    for index, event in enumerate(events):
        entry = stream_entry(tenant=identity.tenant, learner=identity.learner, event_id=str(event.id),
                             verb=event.verb, lesson_id=event.lesson_id, occurred_at=event.occurred_at.isoformat())
        digest = body_hash(entry)
        seen = unique.get(str(event.id))
        if seen is not None and seen[1] != digest:
            raise Problem(409, f"event {event.id} appears twice in the batch with different content",
                          conflicting_ids=[str(event.id)], index=index)
        unique[str(event.id)] = (str(event.id), digest, entry)
    if not redis.available:
        raise unavailable("redis", retry_after=2)
    intake: ProgressIntake = request.app.state.progress_intake
    batch = list(unique.values())
    try:
        outcome = await intake.accept(identity.tenant, batch)
    except REDIS_DOWN:
        redis.failed()
        raise unavailable("redis", retry_after=2) from None
    if outcome.conflicts:
        ids = [batch[i][0] for i in outcome.conflicts]
        raise Problem(409, f"{len(ids)} event id(s) were already used for different events; nothing in this "
                           "batch was recorded. Make a new id for a new event.", conflicting_ids=ids[:50])
    return JSONResponse({"accepted": outcome.accepted, "duplicates": outcome.duplicates + len(events) - len(batch)},
                        status_code=202)
