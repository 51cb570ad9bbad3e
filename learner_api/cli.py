"""`learner-api`: serve the API, run the evaluator, migrate the database, seed demo content, mint dev tokens,
send a signed test payment webhook."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import asyncpg
from redis.exceptions import RedisError

from learner_api import __version__, startup_checks
from learner_api.settings import ConfigError, Settings, load_migration_settings, load_settings
from learner_api.termination import record, refuse

logger = logging.getLogger("learner_api")


def _start(prog: str) -> Settings | None:
    """Settings for a long-running command, with logging set up; None (after saying why) if refused."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        refuse(prog, str(exc))
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return settings


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def serve(host: str, drain: float) -> int:
    settings = _start("learner-api")
    if settings is None:
        return 2
    try:
        startup_checks.require_jwt_key(settings)
        if _port_taken(host, settings.port):
            raise ConfigError(f"port {settings.port} on {host} is in use by another process: stop it or set PORT")
        asyncio.run(startup_checks.check_database(settings, startup_checks.SERVE))
    except ConfigError as exc:
        return refuse("learner-api", str(exc))
    # the web stack is imported by `serve` alone: the other commands (migrate, seed, token: a pod's init
    # container, a terminal) start without it
    from learner_api import http_server
    from learner_api.app import create_app
    from learner_api.metrics import metrics_app

    app = create_app(settings)
    metrics = http_server.MetricsServer(http_server.metrics_config(metrics_app(app.state.metrics_registry),
                                                                   settings, host))
    server = http_server.DrainingServer(http_server.config(app, settings, host), app, drain)
    # Ctrl-C: uvicorn shuts down, then re-raises SIGINT, which main() turns into exit code 130. Where SIGINT
    # was inherited as ignored (a shell script's background job), uvicorn still stops on it but its re-raise
    # does nothing: the exit code is said here, so that it does not depend on how the process was started.
    asyncio.run(http_server.serve_both(server, metrics))
    return 130 if server.interrupted else 0


def evaluator_command() -> int:
    from learner_api.evaluator import process, rules, service
    from learner_api.evaluator.rules import RuleFileError

    settings = _start("learner-api evaluator")
    if settings is None:
        return 2

    async def main() -> None:
        rules.load(Path(settings.alert_rules_file) if settings.alert_rules_file else None)  # before connecting
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        process.quiet_gc()  # the modules are loaded: they live as long as the process
        await service.run(settings, stop)  # waits for PostgreSQL and Redis, then checks the role and schema

    try:
        process.run(main())
    except (RuleFileError, ConfigError) as exc:
        return refuse("learner-api evaluator", str(exc))
    return 0


def migrate_command() -> int:
    """On success the last line, also the container's termination message, names the schema version: the
    operator's migration Job reports it as the LearnerPlatform's status.schemaVersion."""
    from learner_api.migrate import MigrationError, upgrade

    try:
        settings = load_migration_settings()
        outcome = asyncio.run(upgrade(settings.url.get_secret_value()))
    except (ConfigError, MigrationError) as exc:
        return refuse("learner-api migrate", str(exc))
    done = f"applied {', '.join(outcome.applied)}" if outcome.applied else "the database was up to date"
    line = f"learner-api migrate: schema version {outcome.schema_version} ({done})"
    print(line)
    record(line)
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


def _unreachable(exc: BaseException) -> str:
    """One line for a database or Redis that refused or could not be reached (never the URL itself)."""
    if isinstance(exc, asyncpg.PostgresError):
        return f"PostgreSQL refused: {exc}"
    if isinstance(exc, RedisError):
        return f"Redis: {exc}"
    if isinstance(exc, OSError):  # Redis wraps its own in RedisError: this one is PostgreSQL's
        return f"cannot reach PostgreSQL ({exc.strerror or exc}): is it up, and are the URL's host and port right?"
    return f"PostgreSQL: {exc}"


def _tenant(text: str) -> str:
    """A tenant id as the tenants table takes it, checked before anything connects."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a tenant id (lowercase letters, digits and '-')")
    return text


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors in one line; the full usage is one ``--help`` away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="learner-api", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve the HTTP API on $PORT")
    run.add_argument("--host", default="0.0.0.0")  # noqa: S104  # inside a pod, behind a Service
    run.add_argument("--drain-seconds", type=float, default=5.0, help="serve this long after SIGTERM, not ready")
    sub.add_parser("evaluator", help="run the progress worker and alert rules (metrics on $METRICS_PORT)")
    sub.add_parser("migrate", help="apply the SQL migrations that are missing (safe to run from every replica)")
    seeder = sub.add_parser("seed", help="load demo content (courses, lessons, products); safe to repeat")
    seeder.add_argument("--tenant", action="append", type=_tenant,
                        help="tenant to load it into (repeatable; default: default)")
    token = sub.add_parser("token", help="mint a bearer token for local use (NODE_ENV=development only)")
    token.add_argument("learner", help="the token's subject (learner id)")
    token.add_argument("--tenant", default="default", type=_tenant)
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    hook = sub.add_parser("dev-webhook", help="development: sign and send a payment webhook for an order "
                          "(checkout's JSON on stdin), completing a purchase without a payment provider")
    hook.add_argument("--url", default="http://127.0.0.1:8000", help="the learner-api to send it to")
    hook.add_argument("--tenant", default="default", type=_tenant, help="the tenant of the order")
    hook.add_argument("--order", help="the order id (instead of checkout's answer on stdin)")
    hook.add_argument("--amount-cents", type=int)
    hook.add_argument("--currency")
    hook.add_argument("--failed", action="store_true", help="send payment.failed instead of payment.succeeded")
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130  # Ctrl-C: the command stopped as asked, no traceback
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RedisError) as exc:
        # a database or Redis that is down, refuses the role, or a URL it cannot parse: the user's to fix
        print(f"learner-api {args.command}: {' '.join(_unreachable(exc).split())}", file=sys.stderr)
        return 2


def dev_webhook_command(args: argparse.Namespace) -> int:
    from learner_api import dev_webhook

    try:
        return dev_webhook.run(args.url, args.tenant, order_id=args.order, amount_cents=args.amount_cents,
                               currency=args.currency, failed=args.failed)
    except dev_webhook.WebhookError as exc:
        print(f"learner-api dev-webhook: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "dev-webhook":
        return dev_webhook_command(args)
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
