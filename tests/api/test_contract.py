"""The running API against its own OpenAPI document, with schemathesis (property-based): every operation,
valid and invalid inputs, only statuses the document declares, no 5xx, every response conforming to
its declared schema, content type and headers. The server is the real `learner-api serve` process."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import APIOperation

from learner_api.app import create_app
from learner_api.seed import seed
from learner_api.settings import Settings
from tests.api.conftest import JWT_SECRET, REDIS_URL, WEBHOOK_SECRET, bearer
from tests.net import free_port, wait_http

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
#: Examples per operation and generation mode: enough to walk every declared status of 13 operations
#: in a few seconds each, not an exhaustive search (the suite's time matters).
EXAMPLES = 30


@pytest.fixture(scope="module")
def contract_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tenant = f"t-{secrets.token_hex(4)}"
    asyncio.run(seed(database_url, REDIS_URL, tenant))
    port = free_port()
    stream = f"test:{uuid.uuid4().hex[:8]}:progress"
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "NODE_ENV": "development",
           "JWT_SECRET": JWT_SECRET, "PAYMENT_WEBHOOK_SECRET": WEBHOOK_SECRET, "PORT": str(port),
           "METRICS_PORT": str(free_port()), "PROGRESS_STREAM": stream, "RATE_LIMIT_PER_LEARNER": "1000000",
           "RATE_LIMIT_PER_TENANT": "1000000"}
    log = tmp_path_factory.mktemp("contract") / "stderr.log"
    with log.open("wb") as err:
        process = subprocess.Popen([str(Path(sys.executable).parent / "learner-api"), "serve", "--host",
                                    "127.0.0.1", "--drain-seconds", "0"], env=env, stdout=err, stderr=err)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        yield f"http://127.0.0.1:{port}", tenant
    finally:
        process.terminate()
        process.wait(20)
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(stream, f"{stream}:dead")
        client.close()
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def document() -> dict[str, object]:
    """The document the app serves at /openapi.json (it does not depend on the databases)."""
    app = create_app(Settings(database_url="postgresql://contract@127.0.0.1/contract",  # type: ignore[arg-type]
                              redis_url="redis://127.0.0.1:6379/0", node_env="development"))  # type: ignore[arg-type]
    return app.openapi()


SCHEMA = schemathesis.openapi.from_dict(document())
SCHEMA.config.generation.update(with_security_parameters=False, deterministic=True)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
#: Invalid inputs only where an operation takes any (no parameters and no body: nothing to make invalid).
CASES = [(operation, mode) for operation in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode is GenerationMode.POSITIVE or operation.definition.raw.get("parameters")
         or operation.definition.raw.get("requestBody")]


# schemathesis' own pytest plugin (schema.parametrize) does not work with pytest 9 yet (it reads a private
# attribute pytest removed), so each operation and mode is a parametrized test driving hypothesis itself.
@pytest.mark.parametrize(("operation", "mode"), CASES, ids=[f"{o.label} {m.value}" for o, m in CASES])
def test_the_api_keeps_its_contract(operation: APIOperation, mode: GenerationMode,
                                    contract_server: tuple[str, str]) -> None:
    base_url, tenant = contract_server
    headers = {} if operation.path.startswith("/v1/webhooks") else bearer("contract-learner", tenant)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=15)

    run()
