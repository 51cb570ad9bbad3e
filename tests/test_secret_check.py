"""SecretReady: the keys the enabled components need, named when missing, never their values."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from learner_operator.kube import ResourceRef
from learner_operator.models import parse_spec
from learner_operator.platforms import Platforms
from learner_operator.reconcile import check_secret
from learner_operator.secretcache import SecretCache


class OneSecret:
    """The one read check_secret makes, answered from a dict (a fake at the project's own API layer)."""

    def __init__(self, data: dict[str, str] | None) -> None:
        self.secret = None if data is None else {
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}

    async def get(self, ref: ResourceRef) -> dict[str, Any] | None:
        assert (ref.plural, ref.namespace, ref.name) == ("secrets", "learning", "ai-platform-secrets")
        return self.secret


async def verdict(data: dict[str, str] | None, **spec: Any) -> tuple[str, str, str]:
    result, _ = await check_secret(OneSecret(data), "learning",  # type: ignore[arg-type]
                                   parse_spec({"image": {"tag": "abc"}, **spec}), "uid")
    return result.status, result.reason, result.message


URLS = {"DATABASE_URL": "postgresql://app:hunter2@db/learn", "REDIS_URL": "rediss://:hunter2@cache:6380"}


@pytest.mark.parametrize(("data", "spec", "expected"), [
    ({**URLS, "JWT_SECRET": "k"}, {}, ("True", "SecretFound")),
    (URLS, {"environment": "development"}, ("True", "SecretFound")),
    (None, {}, ("False", "SecretNotFound")),
])
async def test_the_verdict(data: dict[str, str] | None, spec: dict[str, Any], expected: tuple[str, str]) -> None:
    assert (await verdict(data, **spec))[:2] == expected


async def test_a_blank_jwt_key_outside_development_is_named_as_missing() -> None:
    # what `kubectl create secret --from-env-file` makes of `.env.example` filled in with JWT_SECRET= blank
    status, reason, message = await verdict({**URLS, "JWT_SECRET": "", "PAYMENT_WEBHOOK_SECRET": ""})
    assert (status, reason) == ("False", "SecretKeysMissing")
    assert "JWT_SECRET or JWT_PUBLIC_KEY (for learner-api)" in message
    assert "DATABASE_URL" not in message
    assert "PAYMENT_WEBHOOK_SECRET" not in message  # optional: blank is "not set", never a problem
    assert "hunter2" not in message


async def test_only_the_enabled_components_are_named() -> None:
    _, _, message = await verdict({"JWT_SECRET": "k"}, evaluator={"enabled": False})
    assert "DATABASE_URL (for learner-api)" in message
    assert "evaluator" not in message
    _, _, message = await verdict({"JWT_SECRET": "k", "DATABASE_URL": "x"})
    assert "REDIS_URL (for learner-api, evaluator)" in message


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountedSecret(OneSecret):
    def __init__(self, data: dict[str, str]) -> None:
        super().__init__(data)
        self.reads = 0

    async def get(self, ref: ResourceRef) -> dict[str, Any] | None:
        self.reads += 1
        answer = await super().get(ref)
        return {**(answer or {}), "metadata": {"resourceVersion": "7"}}


async def test_platforms_new_to_a_secret_read_seconds_ago_get_their_digest_without_a_read() -> None:
    """A burst of new platforms on one Secret: one read, each its own salted digest, values dropped soon after."""
    clock = Clock()
    cache = SecretCache(hold=10.0, clock=clock)
    cache.changed(("learning", "ai-platform-secrets"), "7")  # the informer's word
    api = CountedSecret({"DATABASE_URL": "postgres://x", "REDIS_URL": "redis://y", "JWT_SECRET": "k"})
    spec = parse_spec({"image": {"tag": "abc"}})
    first = await check_secret(api, "learning", spec, "uid-1", cache)  # type: ignore[arg-type]
    second = await check_secret(api, "learning", spec, "uid-2", cache)  # type: ignore[arg-type]
    assert api.reads == 1
    assert first[0].status == second[0].status == "True"
    assert first[1] != second[1]  # salted per platform, as if each had read the Secret
    fresh = await check_secret(api, "learning", spec, "uid-2", SecretCache())  # type: ignore[arg-type]
    assert fresh[1] == second[1]

    clock.now += 10.5
    assert cache.holding_values() == 0
    await check_secret(api, "learning", spec, "uid-3", cache)  # type: ignore[arg-type]
    assert api.reads == 3  # the values were gone: read again
    cache.changed(("learning", "ai-platform-secrets"), "8")  # rotated: what was held is not used
    assert cache.holding_values() == 0


def test_a_platform_counts_as_just_seen_once_and_only_within_seconds() -> None:
    clock = Clock()
    platforms = Platforms(fresh_seconds=10.0, clock=clock)
    body = {"metadata": {"namespace": "learning", "name": "a", "uid": "u1", "resourceVersion": "1"}, "spec": {}}
    platforms.observe(body)
    platforms.observe({**body, "metadata": {**body["metadata"], "resourceVersion": "2"}})  # not new: same uid
    assert platforms.first_sight("u1")
    assert not platforms.first_sight("u1")  # its first reconcile took it
    platforms.observe({**body, "metadata": {**body["metadata"], "name": "b", "uid": "u2"}})
    clock.now += 11
    assert not platforms.first_sight("u2")  # seen too long ago: the reconcile reads it before writing
