"""`learner-api`: serve the API, run the evaluator, migrate the database, seed demo content, mint dev tokens."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn
from fastapi import FastAPI

from learner_api import __version__, http_server
from learner_api.app import create_app
from learner_api.metrics import metrics_app
from learner_api.settings import ConfigError, Settings, load_settings

logger = logging.getLogger("learner_api")


class DrainingServer(uvicorn.Server):
    """On SIGTERM: answer /readyz with 503 at once, keep serving for ``drain`` seconds so that the
    endpoints controller takes the pod out of the Service, then finish in-flight requests and exit."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain = drain
        self._terminating = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._terminating or sig != signal.SIGTERM or self.drain <= 0:
            super().handle_exit(sig, frame)
            return
        self._terminating = True
        self.app.state.draining = True
        logger.info("SIGTERM: not ready any more; draining for %.0fs", self.drain)
        asyncio.get_event_loop().call_later(self.drain, super().handle_exit, sig, frame)


def _start(prog: str) -> Settings | None:
    """Settings for a long-running command, with logging set up; None (after saying why) if refused."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"{prog}: refusing to start: {exc}", file=sys.stderr)
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return settings


def serve(host: str, drain: float) -> int:
    settings = _start("learner-api")
    if settings is None:
        return 2
    app = create_app(settings)
    metrics = http_server.MetricsServer(http_server.metrics_config(metrics_app(app.state.metrics_registry),
                                                                   settings, host))
    asyncio.run(http_server.serve_both(DrainingServer(http_server.config(app, settings, host), app, drain), metrics))
    return 0


def evaluator_command() -> int:
    from learner_api.evaluator import service
    from learner_api.evaluator.rules import RuleFileError

    settings = _start("learner-api evaluator")
    if settings is None:
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.run(settings, stop)

    try:
        asyncio.run(main())
    except RuleFileError as exc:
        print(f"learner-api evaluator: refusing to start: {exc}", file=sys.stderr)
        return 2
    return 0


def migrate_command() -> int:
    from learner_api.migrate import MigrationError, migrate

    try:
        settings = load_settings()
        url = settings.database_migration_url or settings.database_url
        applied = asyncio.run(migrate(url.get_secret_value()))
    except (ConfigError, MigrationError) as exc:
        print(f"learner-api migrate: {exc}", file=sys.stderr)
        return 2
    print(f"applied: {', '.join(applied)}" if applied else "the database is up to date")
    return 0


def seed_command(tenants: list[str]) -> int:
    from learner_api.seed import seed

    try:
        settings = load_settings()
        for tenant in tenants:
            version = asyncio.run(seed(settings.database_url.get_secret_value(),
                                       settings.redis_url.get_secret_value(), tenant,
                                       statement_cache_size=settings.database_statement_cache_size))
            print(f"tenant {tenant}: demo content loaded (content version {version})")
    except ConfigError as exc:
        print(f"learner-api seed: {exc}", file=sys.stderr)
        return 2
    return 0


def token_command(learner: str, tenant: str, ttl: int) -> int:
    from learner_api.auth import mint

    try:
        print(mint(load_settings(), learner, tenant, ttl))
    except (ConfigError, PermissionError) as exc:
        print(f"learner-api token: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="learner-api", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve the HTTP API on $PORT")
    run.add_argument("--host", default="0.0.0.0")  # noqa: S104  # inside a pod, behind a Service
    run.add_argument("--drain-seconds", type=float, default=5.0, help="serve this long after SIGTERM, not ready")
    sub.add_parser("evaluator", help="run the progress worker and alert rules (metrics on $METRICS_PORT)")
    sub.add_parser("migrate", help="apply the SQL migrations that are missing (safe to run from every replica)")
    seeder = sub.add_parser("seed", help="load demo content (courses, lessons, products); safe to repeat")
    seeder.add_argument("--tenant", action="append", help="tenant to load it into (repeatable; default: default)")
    token = sub.add_parser("token", help="mint a bearer token for local use (NODE_ENV=development only)")
    token.add_argument("learner", help="the token's subject (learner id)")
    token.add_argument("--tenant", default="default")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    args = parser.parse_args(argv)
    if args.command == "token":
        return token_command(args.learner, args.tenant, args.ttl)
    if args.command == "seed":
        return seed_command(args.tenant or ["default"])
    if args.command == "evaluator":
        return evaluator_command()
    if args.command == "migrate":
        return migrate_command()
    return serve(args.host, args.drain_seconds)


if __name__ == "__main__":
    sys.exit(main())
