"""The OpenAPI document as the contract: what FastAPI derives from the routes, plus what it cannot see.

FastAPI documents parameters and bodies it parses itself. Everything the edge, authentication, the rate
limit and the routes that read raw bodies do is added here, in one place: the bearer security scheme,
the raw request bodies (progress, the webhook) and headers (Idempotency-Key, Payment-Signature,
If-None-Match), and every status an operation can answer, each error as application/problem+json.
tests/api/test_contract.py holds the running app to this document with schemathesis.

Not per operation (they are answered below the app, before a route is known): 408, 431, and the 503 of
the connection cap; the API's description lists them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from learner_api.routes.content import Course, CoursePage, Lesson
from learner_api.routes.payments import PaymentEvent
from learner_api.routes.progress import ProgressBatch

PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details; some problems add members (errors, unavailable, conflicting_ids...)",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "instance": {"type": "string"},
    },
    "additionalProperties": True,
}
DESCRIPTIONS = {
    304: "not modified (If-None-Match matched the ETag)",
    400: "a malformed request, e.g. a body that is not JSON (the detail says what)",
    401: "no bearer token, or one that is not valid",
    403: "the token's tenant claim is missing or invalid, or the resource needs an entitlement",
    404: "no such resource",
    409: "a conflict with an earlier request (the detail says which)",
    413: "the body is larger than this operation accepts",
    422: "the request is well-formed but not valid (the detail and errors say what)",
    429: "the learner's or tenant's rate limit is used up; retry after Retry-After seconds",
    503: "a dependency is unavailable, or the request did not finish within its deadline; retry after Retry-After",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}
ETAG_HEADERS = {"ETag": {"description": "strong validator; send it back in If-None-Match", "required": True,
                         "schema": {"type": "string"}},
                "Cache-Control": {"schema": {"type": "string"}}}
BEARER_ROUTES = "/v1/"
UNAUTHENTICATED = {"/v1/webhooks/payments"}
#: Operations counted against the rate limit (writes, and reads that may reach PostgreSQL).
COSTLY = {("post", "/v1/progress"), ("post", "/v1/enrollments"), ("post", "/v1/checkout"),
          ("get", "/v1/enrollments"), ("get", "/v1/products"), ("get", "/v1/entitlements"),
          ("get", "/v1/courses"), ("get", "/v1/courses/{course_id}"), ("get", "/v1/lessons/{lesson_id}")}
CONTENT = {"/v1/courses": CoursePage, "/v1/courses/{course_id}": Course, "/v1/lessons/{lesson_id}": Lesson}
#: Statuses each operation answers besides the cross-cutting ones (auth, rate limit, deadline, validation).
STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    ("get", "/v1/courses"): (304, 400),
    ("get", "/v1/courses/{course_id}"): (304, 404),
    ("get", "/v1/lessons/{lesson_id}"): (304, 404),
    ("post", "/v1/progress"): (409, 413, 422),
    ("post", "/v1/enrollments"): (400, 404, 413, 422),
    ("post", "/v1/checkout"): (400, 404, 409, 413, 422),
    ("post", "/v1/webhooks/payments"): (400, 413, 422, 503),
}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _header(name: str, required: bool, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": schema, "description": description}


#: What the routes read themselves (raw bodies, headers), so FastAPI cannot document it.
REQUEST_EXTRAS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/progress"): {"requestBody": _body("ProgressBatch")},
    ("post", "/v1/webhooks/payments"): {"requestBody": _body("PaymentEvent"), "parameters": [_header(
        "Payment-Signature", True, {"type": "string", "maxLength": 1000},
        "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>'>; at most 300 s old")]},
}
IF_NONE_MATCH = _header("If-None-Match", False, {"type": "string", "maxLength": 1000},
                        "an ETag from an earlier answer: 304 if the document did not change")
IDEMPOTENCY_KEY = _header("Idempotency-Key", True, {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
                          "a key you make per purchase (a UUID); a retry with the same key cannot buy twice")


def _schema_of(model: type[BaseModel], schemas: dict[str, Any]) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema


def contract(document: dict[str, Any]) -> dict[str, Any]:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Problem"] = PROBLEM
    for model in (ProgressBatch, PaymentEvent, CoursePage, Course, Lesson):
        _schema_of(model, schemas)
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                                 "description": "a JWT with sub (the learner) and tenant claims"}}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            _complete(path, method, operation)
    return document


def _complete(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    statuses = set(STATUSES.get((method, path), ()))
    if any(status == "422" for status in responses):  # FastAPI's, for operations with parameters
        statuses.add(422)
    extras = REQUEST_EXTRAS.get((method, path), {})
    if "requestBody" in extras:
        operation["requestBody"] = extras["requestBody"]
    parameters = operation.setdefault("parameters", [])
    parameters += extras.get("parameters", [])
    if path.startswith(BEARER_ROUTES) and path not in UNAUTHENTICATED:
        operation["security"] = [{"bearer": []}]
        statuses |= {401, 403, 503}
    if (method, path) in COSTLY:
        statuses.add(429)
    if path in CONTENT:
        parameters.append(IF_NONE_MATCH)
        responses["200"] = {"description": "the document", "headers": ETAG_HEADERS, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{CONTENT[path].__name__}"}}}}
    if (method, path) == ("post", "/v1/checkout"):
        operation["parameters"] = [p for p in parameters if p["name"].lower() != "idempotency-key"]
        operation["parameters"].append(IDEMPOTENCY_KEY)
    if not operation["parameters"]:
        del operation["parameters"]
    for status in sorted(statuses):
        response = responses.setdefault(str(status), {})
        response.setdefault("description", DESCRIPTIONS[status])
        if status == 304:
            response["headers"] = ETAG_HEADERS
            continue
        response["content"] = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        if status in (429, 503) or (status == 409 and path == "/v1/checkout"):
            response["headers"] = RETRY_AFTER
    for code, response in responses.items():
        if code.startswith(("4", "5")):
            response["content"] = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    if "201" in responses and "200" in responses and not responses["200"].get("content"):
        responses["200"]["content"] = responses["201"].get("content", {})


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = contract(get_openapi(title=app.title, version=app.version,
                                                      description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
