"""`scripts/run api`: learner-api and its evaluator on this machine, with demo content, in under a minute.

Uses the PostgreSQL and Redis on 127.0.0.1 (scripts/lib.sh starts throwaway ones when none answer):
makes the database `learner_dev` (superuser, as a DBA would), migrates it, makes the login role
`learner_dev_app` (a member of learner_app: what the API really runs as, under row-level security),
loads the demo content, serves the API on :8000 and runs the evaluator (metrics on :9102), and once
the API answers prints a development token and commands to try, a purchase included (checkout, then
`learner-api dev-webhook` playing the payment provider). Ctrl-C stops both. Development mode only:
secrets are made up per run.

LEARNER_DEV_DATABASE, PORT and METRICS_PORT change the database and ports (the tests use their own).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg

from learner_api.auth import mint
from learner_api.migrate import migrate
from learner_api.seed import seed
from learner_api.settings import Settings

ADMIN_URL = os.environ.get("LEARNER_DEV_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LEARNER_DEV_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE = os.environ.get("LEARNER_DEV_DATABASE", "learner_dev")
APP_ROLE = "learner_dev_app"
#: The console script next to this Python: printed commands work from any directory.
LEARNER_API = str(Path(sys.executable).parent / "learner-api")


async def prepare(database: str = DATABASE) -> str:
    """Database, migrations, app role and demo content; returns the app role's DATABASE_URL."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    admin_db = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    applied = await migrate(admin_db)
    print(f"database {database}: " + (f"applied {', '.join(applied)}" if applied else "up to date"))
    connection = await asyncpg.connect(admin_db)
    try:
        await connection.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN "
            f"CREATE ROLE {APP_ROLE} LOGIN; END IF; END $$; GRANT learner_app TO {APP_ROLE}")
    finally:
        await connection.close()
    app_url = admin_db.replace("://postgres@", f"://{APP_ROLE}@", 1)
    version = await seed(app_url, REDIS_URL, "default")
    print(f"demo content loaded into tenant 'default' (content version {version})")
    return app_url


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def try_it(base: str, token: str, webhook_secret: str) -> str:
    """Commands to paste, one per line (no line continuations: a `\\` inside quoted JSON broke them)."""
    auth = '-H "Authorization: Bearer $TOKEN"'
    event = ('{"events":[{"id":"\'"$(python3 -c \'import uuid; print(uuid.uuid4())\')"\'",'
             '"verb":"lesson_viewed","lesson_id":"python-101-hello","occurred_at":"\'"$(date -u +%FT%TZ)"\'"}]}')
    return "\n".join(f"  {line}" for line in [
        f"TOKEN={token}",
        f"curl -s {base}/v1/courses {auth}; echo",
        f"curl -s {base}/v1/lessons/python-101-hello {auth}; echo",
        f"curl -s -X POST {base}/v1/progress {auth} -H 'Content-Type: application/json' -d '{event}'; echo",
        f"curl -s {base}/v1/lessons/python-101-files {auth}; echo     # paid: 403 until bought",
        "# buy it: checkout makes a pending order; dev-webhook plays the payment provider and confirms it",
        f"curl -s -X POST {base}/v1/checkout {auth} -H \"Idempotency-Key: $(python3 -c 'import uuid; "
        f"print(uuid.uuid4())')\" -H 'Content-Type: application/json' -d '{{\"product_id\":\"python-101-full\"}}'"
        f" | PAYMENT_WEBHOOK_SECRET={webhook_secret} {LEARNER_API} dev-webhook --url {base}",
        f"curl -s {base}/v1/lessons/python-101-files {auth}; echo     # now 200",
    ])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """True once /readyz answers 200; False if the server exited (it said why on stderr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:  # noqa: S310  # our own
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def main() -> int:
    port, metrics_port = int(os.environ.get("PORT", "8000")), int(os.environ.get("METRICS_PORT", "9102"))
    api_metrics = metrics_port + 1  # both processes read METRICS_PORT; on one machine they need two
    for name, number in (("PORT", port), ("METRICS_PORT", metrics_port), ("METRICS_PORT", api_metrics)):
        if port_in_use(number):
            print(f"scripts/run api: port {number} is in use (another learner-api?): stop it, or choose "
                  f"another with {name}={number + 1} scripts/run api", file=sys.stderr)
            return 2
    database_url = asyncio.run(prepare())
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "NODE_ENV": "development",
           "TENANT_MODE": "enabled", "JWT_SECRET": secrets.token_urlsafe(32),
           "PAYMENT_WEBHOOK_SECRET": secrets.token_urlsafe(32), "PORT": str(port), "METRICS_PORT": str(metrics_port)}
    settings = Settings(database_url=env["DATABASE_URL"], redis_url=env["REDIS_URL"],  # type: ignore[arg-type]
                        node_env="development", jwt_secret=env["JWT_SECRET"])  # type: ignore[arg-type]
    token = mint(settings, "ada", "default", ttl=8 * 3600)
    base = f"http://127.0.0.1:{port}"
    processes = [subprocess.Popen([LEARNER_API, "evaluator"], env=env),  # noqa: S603  # our own console script
                 subprocess.Popen([LEARNER_API, "serve", "--host", "127.0.0.1", "--drain-seconds", "0"],  # noqa: S603
                                  env={**env, "METRICS_PORT": str(api_metrics)})]
    api = processes[1]
    try:
        if not wait_ready(base, api):
            print("scripts/run api: learner-api did not start (see above)", file=sys.stderr)
            return api.poll() or 1
        print(f"""
learner-api on {base} (API docs: {base}/docs, metrics on :{api_metrics}/metrics), evaluator metrics on \
:{metrics_port}/metrics
Try it (in another terminal):

{try_it(base, token, env["PAYMENT_WEBHOOK_SECRET"])}

Ctrl-C stops both.
""", flush=True)
        code = api.wait()
        # Ctrl-C (SIGINT to the process group) stopped it: when SIGINT reached this process, the handler below
        # says 0; where it did not (inherited as ignored), the API's 130 says the same thing
        return 0 if code == 130 else code
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C reaches the servers too; they stop on their own, without a traceback
        sys.exit(0)
