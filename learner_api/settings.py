"""Configuration from the environment, read when the app starts (never at import time).

The pod gets NODE_ENV, TENANT_MODE, PORT... from the operator's ConfigMap and DATABASE_URL, REDIS_URL,
JWT_*, PAYMENT_WEBHOOK_SECRET from the Secret. Outside development, placeholder secrets and plaintext
connections to the (external, managed) databases are refused with a message naming the variable;
values never appear in messages or logs.
"""

from __future__ import annotations

from typing import Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "password", "example", "todo", "xxx", "placeholder"}


class ConfigError(ValueError):
    """The service cannot start with this configuration; the message says which variable and why."""


def _is_placeholder(value: str) -> bool:
    return value.strip().lower() in _PLACEHOLDERS or value.strip().lower().startswith(("changeme", "your-"))


def _require_tls(name: str, url: str) -> None:
    modes = parse_qs(urlsplit(url).query).get("sslmode", [""])
    if modes[-1] not in ("require", "verify-ca", "verify-full"):
        raise ConfigError(f"{name} must use TLS outside development: add ?sslmode=require "
                          "(or set ALLOW_INSECURE_CONNECTIONS=true for a private network)")


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    """A URL the client library would choke on (with a traceback, or the URL in its message) is refused
    here, naming the variable and never repeating the value."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL (check the host and port)") from None
    if parts.scheme not in schemes:
        raise ConfigError(f"{name} must start with {' or '.join(s + '://' for s in schemes)}")


#: An empty variable is not set: `.env.example` filled in with its optional keys left blank makes a
#: Secret with empty values, and those must mean "not configured", never "a placeholder".
_ENV = SettingsConfigDict(extra="ignore", frozen=True, env_ignore_empty=True)


class Settings(BaseSettings):
    model_config = _ENV

    database_url: SecretStr = Field(description="postgresql://... of the managed PostgreSQL")
    redis_url: SecretStr = Field(description="redis:// or rediss://... of the managed Redis")
    #: The tables' owner, for `learner-api migrate` only; unset: DATABASE_URL migrates too.
    database_migration_url: SecretStr | None = None
    node_env: Literal["production", "staging", "development"] = "production"
    tenant_mode: Literal["enabled", "disabled"] = "enabled"
    port: int = 8000
    metrics_port: int = 9102
    log_format: Literal["json", "text"] = "json"
    jwt_secret: SecretStr | None = None
    jwt_public_key: SecretStr | None = None
    payment_webhook_secret: SecretStr | None = None
    #: asyncpg's prepared-statement cache; 0 for PgBouncer in transaction mode (Neon's pooled endpoints).
    database_statement_cache_size: int = Field(default=0, ge=0)
    database_pool_max: int = Field(default=10, ge=1, le=100)
    #: Seconds /readyz waits for each dependency.
    readiness_timeout: float = Field(default=1.0, gt=0, le=10)
    #: Allow plaintext database connections outside development (a private network, say).
    allow_insecure_connections: bool = False
    #: The Redis Stream progress goes through (its dead letters go to "<name>:dead").
    progress_stream: str = Field(default="lp:progress", pattern=r"^[A-Za-z0-9:_.-]{1,100}$")
    #: REDIS_URL is a Redis Cluster (ElastiCache cluster mode, say): keys carry hash tags (streams.py).
    redis_cluster: bool = False
    #: Cluster mode: progress streams, each with its tenants' dedupe keys in one hash slot (unset: 12 on a
    #: cluster, 1 on one server); only ever increase it.
    progress_stream_shards: int | None = Field(default=None, ge=1, le=1024)
    #: Evaluator: entries per batch, how long an entry may sit with a dead consumer before another
    #: claims it, and how many deliveries before an entry goes to the dead-letter stream.
    evaluator_batch_size: int = Field(default=2000, ge=1, le=10000)
    evaluator_claim_idle_seconds: float = Field(default=60.0, gt=0)
    evaluator_max_deliveries: int = Field(default=5, ge=1)
    #: Batches written at once by one evaluator process (reading overlaps writing). Three: PostgreSQL
    #: spends about three times the evaluator's own CPU on a batch, so three backends keep one process busy
    #: (bench.evaluator_bench); each is a connection of the pool (DATABASE_POOL_MAX must be larger).
    evaluator_concurrency: int = Field(default=3, ge=1, le=16)
    #: Evaluator /livez fails when entries wait and none was stored for this long.
    evaluator_stall_seconds: float = Field(default=300.0, gt=0)
    #: Evaluator: alert rules (YAML; the operator mounts them from a ConfigMap); unset: built-in defaults.
    alert_rules_file: str | None = None
    #: Alertmanager base URL (from the Secret: it may carry credentials); unset: alerts are only metrics.
    alertmanager_url: SecretStr | None = None
    #: Evaluator housekeeping: how long Idempotency-Keys and payment event ids are kept.
    idempotency_key_retention_days: int = Field(default=1, ge=1)
    payment_event_retention_days: int = Field(default=30, ge=1)
    #: Pushgateway base URL, for where scraping cannot reach; unset: scrape only.
    pushgateway_url: str | None = None
    push_interval_seconds: float = Field(default=15.0, gt=0)
    #: The pod's name (downward API): the consumer name and the Pushgateway instance.
    pod_name: str | None = None
    #: How long a progress event id is remembered in Redis (409 on reuse with another body within it).
    progress_dedupe_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    #: How long a content document stays in Redis (a new content version replaces it anyway).
    content_cache_seconds: int = Field(default=3600, ge=1)
    #: How often a replica asks Redis for the tenant's content version (how stale content can be).
    content_version_seconds: float = Field(default=1.0, ge=0)
    #: learner-api under load and faults (docs/api-limits.md): every wait has an end.
    request_deadline_seconds: float = Field(default=10.0, gt=0, le=120)
    database_statement_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    redis_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    http_keepalive_seconds: float = Field(default=5.0, gt=0, le=300)
    http_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    http_body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    http_max_connections: int = Field(default=500, ge=1)
    #: Costly requests (writes, reads that reach PostgreSQL) per learner / per tenant per window.
    rate_limit_per_learner: int = Field(default=100, ge=1)
    rate_limit_per_tenant: int = Field(default=10_000, ge=1)
    rate_limit_window_seconds: float = Field(default=10.0, gt=0, le=3600)
    #: A checkout's Idempotency-Key claim older than this may be taken over by a retry (fenced).
    idempotency_claim_seconds: float = Field(default=60.0, gt=0)
    #: Test-only faults (learner_api.faults): a share of requests answered 500, a delay on every request.
    #: Refused outside NODE_ENV=development.
    test_fault_5xx_ratio: float = Field(default=0.0, ge=0, le=1)
    test_fault_latency_ms: int = Field(default=0, ge=0, le=60_000)

    @property
    def development(self) -> bool:
        return self.node_env == "development"

    @model_validator(mode="after")
    def _shards_need_a_cluster(self) -> Settings:
        if (self.progress_stream_shards or 1) > 1 and not self.redis_cluster:
            raise ConfigError("PROGRESS_STREAM_SHARDS above 1 needs REDIS_CLUSTER=true (one server gains nothing)")
        return self

    @model_validator(mode="after")
    def _faults_only_in_development(self) -> Settings:
        if (self.test_fault_5xx_ratio or self.test_fault_latency_ms) and not self.development:
            raise ConfigError("TEST_FAULT_5XX_RATIO and TEST_FAULT_LATENCY_MS are for tests only: they are refused "
                              f"unless NODE_ENV=development (it is {self.node_env}); unset them")
        return self

    @model_validator(mode="after")
    def _safe_outside_development(self) -> Settings:
        for name in ("database_url", "database_migration_url", "redis_url", "jwt_secret", "payment_webhook_secret"):
            value = getattr(self, name)
            if not self.development and value is not None and _is_placeholder(value.get_secret_value()):
                raise ConfigError(f"{name.upper()} is a placeholder; set the real value (NODE_ENV={self.node_env})")
        _check_url("DATABASE_URL", self.database_url.get_secret_value(), ("postgresql", "postgres"))
        _check_url("REDIS_URL", self.redis_url.get_secret_value(), ("redis", "rediss", "unix"))
        if self.development:
            return self
        if not self.allow_insecure_connections:
            _require_tls("DATABASE_URL", self.database_url.get_secret_value())
            if urlsplit(self.redis_url.get_secret_value()).scheme != "rediss":
                raise ConfigError("REDIS_URL must use TLS outside development: use rediss:// "
                                  "(or set ALLOW_INSECURE_CONNECTIONS=true for a private network)")
        return self


_S = TypeVar("_S", bound=BaseSettings)


class MigrationSettings(BaseSettings):
    """What `learner-api migrate` (the operator's migration Job) needs, and no more: it is given only the
    owner's DATABASE_MIGRATION_URL (or, without one, DATABASE_URL), never REDIS_URL or the JWT keys."""

    model_config = _ENV

    database_migration_url: SecretStr | None = None
    database_url: SecretStr | None = None
    node_env: Literal["production", "staging", "development"] = "production"
    allow_insecure_connections: bool = False

    @property
    def url(self) -> SecretStr:
        url = self.database_migration_url or self.database_url
        assert url is not None  # the validator below makes sure
        return url

    @model_validator(mode="after")
    def _one_url_safe_outside_development(self) -> MigrationSettings:
        if self.database_migration_url is None and self.database_url is None:
            raise ConfigError("DATABASE_MIGRATION_URL (the tables' owner) or DATABASE_URL: required but not set")
        name = "DATABASE_MIGRATION_URL" if self.database_migration_url is not None else "DATABASE_URL"
        _check_url(name, self.url.get_secret_value(), ("postgresql", "postgres"))
        if self.node_env != "development":
            if _is_placeholder(self.url.get_secret_value()):
                raise ConfigError(f"{name} is a placeholder; set the real value (NODE_ENV={self.node_env})")
            if not self.allow_insecure_connections:
                _require_tls(name, self.url.get_secret_value())
        return self


def _load(kind: type[_S]) -> _S:
    from pydantic import ValidationError

    try:
        return kind()  # the environment supplies the required fields
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]).upper()
            message = "required but not set" if error["type"] == "missing" else \
                str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}: {message}" if name else message)  # whole-settings rules name their variable
        raise ConfigError("; ".join(problems)) from None


def load_settings() -> Settings:
    """Read the environment now; a missing or unsafe value is a ConfigError naming the variable."""
    return _load(Settings)


def load_migration_settings() -> MigrationSettings:
    """The environment of `learner-api migrate`; a ConfigError names what is missing or unsafe."""
    return _load(MigrationSettings)
