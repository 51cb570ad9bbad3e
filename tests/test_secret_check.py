"""SecretReady: the keys the enabled components need, named when missing, never their values."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from learner_operator.kube import ResourceRef
from learner_operator.models import parse_spec
from learner_operator.reconcile import check_secret


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
