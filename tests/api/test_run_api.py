"""`scripts/run api` as a newcomer meets it: the commands it prints work as printed, a purchase included,
and Ctrl-C stops everything without a traceback."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.api.conftest import admin_execute
from tests.conftest import ROOT
from tests.net import free_port, free_port_pair


@pytest.fixture
def dev_database() -> Iterator[str]:
    name = f"learner_rundev_{secrets.token_hex(4)}"
    yield name
    asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def read_until(process: subprocess.Popen[str], marker: str, timeout: float = 120) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError("scripts/run api stopped:\n" + "".join(lines[-40:]))
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError("no " + marker)


def test_the_printed_commands_work_and_ctrl_c_is_clean(dev_database: str) -> None:
    port, metrics = free_port(), free_port_pair()
    env = {**os.environ, "LEARNER_DEV_DATABASE": dev_database, "PORT": str(port), "METRICS_PORT": str(metrics),
           "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "scripts.api_dev"], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        lines = read_until(process, "Ctrl-C stops both.")
        start = next(i for i, line in enumerate(lines) if line.startswith("  TOKEN="))
        commands = [line[2:] for line in lines[start:] if line.startswith("  ")]
        script = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "".join(commands)], capture_output=True,
                                text=True, timeout=60)
        assert script.returncode == 0, script.stderr
        out = script.stdout
        assert '"id":"python-101"' in out                                   # courses
        assert '"title":"Hello, Python"' in out                             # a free lesson
        assert '{"accepted":1,"duplicates":0}' in out                      # progress: 202
        assert '"status":403' in out                                       # the paid lesson, before buying
        assert '200 {"status":"processed"' in out                          # the signed webhook...
        assert '"granted":true' in out                                     # ... completed the purchase
        assert out.rstrip().endswith('"paid":true}')                        # the paid lesson, bought
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends: the whole process group
        rest, _ = process.communicate(timeout=60)
    assert "Traceback" not in rest
    assert "KeyboardInterrupt" not in rest
    assert process.returncode == 0


def test_a_busy_port_is_reported_before_anything_is_printed(dev_database: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "LEARNER_DEV_DATABASE": dev_database, "PORT": str(port),
               "METRICS_PORT": str(free_port_pair())}
        result = subprocess.run([sys.executable, "-m", "scripts.api_dev"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""  # no token, no curl commands for a server that cannot start
    assert result.stderr.strip() == (f"scripts/run api: port {port} is in use (another learner-api?): stop it, "
                                     f"or choose another with PORT={port + 1} scripts/run api")
