"""learner-api benchmark with wrk (Debian): each goal against its baseline, measured in the same run.

- cached lesson GET vs a constant-bytes route in the same app (goal >= 0.7x)
- progress POST (one Lua script in Redis per batch) vs the same route with the Redis write stubbed
  (goal >= 0.6x)
- p50/p99 at fixed offered loads, open loop (bench/openloop.py; wrk2/oha are not packaged here)

One uvicorn worker (uvloop, httptools) on 127.0.0.1, wrk -t1 on the same machine; the server and wrk
share the 2 cores, as in DESIGN.md's table. Usage: .venv/bin/python -m bench.api_bench [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime

from bench import openloop
from learner_api.auth import mint
from learner_api.settings import Settings
from scripts.api_dev import REDIS_URL, prepare

SECRET = "bench-secret-0123456789abcdef0123456789"
PROGRESS_LUA = r"""
local function uuid()
  return string.format("%08x-%04x-4%03x-%04x-%012x", math.random(0, 0xffffffff), math.random(0, 0xffff),
                       math.random(0, 0xfff), math.random(0x8000, 0xbfff), math.random(0, 0xffffffffffff))
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local body = '{"events":[{"id":"' .. uuid() .. '","verb":"lesson_viewed","lesson_id":"python-101-hello",'
    .. '"occurred_at":"' .. os.date("!%Y-%m-%dT%H:%M:%SZ") .. '"}]}'
  return wrk.format(nil, nil, nil, body)
end
"""


def get_request(path: str, token: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n").encode()


def progress_request(token: str) -> bytes:
    event = {"id": str(uuid.uuid4()), "verb": "lesson_viewed", "lesson_id": "python-101-hello",
             "occurred_at": datetime.now(UTC).isoformat()}
    body = json.dumps({"events": [event]}).encode()
    return (f"POST /v1/progress HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def wrk(url: str, token: str, seconds: int, connections: int = 64, script: str = "") -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        # a fresh seed per run: runs started in the same second must not send the same event ids (with
        # other event times, a repeated id is a 409, not a duplicate)
        lua.write(f"math.randomseed({secrets.randbits(31)})\n" + script)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua.name,
               "-H", f"Authorization: Bearer {token}", url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    os.unlink(lua.name)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "99")}  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rate": rate, "p50": latency["50"], "p99": latency["99"], "non2xx": float(errors.group(1)) if errors else 0}


def _ms(text: str) -> float:
    value, unit = float(re.match(r"[\d.]+", text).group()), re.sub(r"[\d.]+", "", text)  # type: ignore[union-attr]
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


class Server:
    def __init__(self, env: dict[str, str], port: int, stub: bool) -> None:
        args = [sys.executable, "-m", "bench.api_app", "--port", str(port), *(["--stub-redis"] if stub else [])]
        self.process = subprocess.Popen(args, env=env)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(self.base + "/livez", timeout=1).read()  # noqa: S310
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loads", default="500,1500", help="offered loads (req/s) for the latency runs")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    database_url = asyncio.run(prepare("learner_bench"))
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "NODE_ENV": "development",
           "JWT_SECRET": SECRET, "PROGRESS_STREAM": "bench:progress", "DATABASE_POOL_MAX": "10",
           # one learner sends everything: the limits count every request but must never refuse one here
           "RATE_LIMIT_PER_LEARNER": "1000000000", "RATE_LIMIT_PER_TENANT": "1000000000"}
    settings = Settings(database_url=database_url, redis_url=REDIS_URL, node_env="development",  # type: ignore[arg-type]
                        jwt_secret=SECRET)  # type: ignore[arg-type]
    token = mint(settings, "bench-learner", "default", ttl=3600)
    lesson, progress_lua = "/v1/lessons/python-101-hello", PROGRESS_LUA
    results: dict[str, dict[str, float]] = {}
    latency: dict[str, openloop.Result] = {}
    loads = [int(x) for x in args.loads.split(",")]

    server, stub = Server(env, 18000, stub=False), Server(env, 18001, stub=True)
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        wrk(server.base + lesson, token, 2)  # warm the caches and the interpreters
        wrk(stub.base + "/v1/progress", token, 2, script=progress_lua)
        for _ in range(args.rounds):  # interleaved, so that a noisy moment hurts both sides of a ratio
            for name, url, script in [("constant", server.base + "/bench/constant", ""),
                                      ("cached lesson GET", server.base + lesson, ""),
                                      ("progress POST", server.base + "/v1/progress", progress_lua),
                                      ("progress POST, Redis stubbed", stub.base + "/v1/progress", progress_lua)]:
                runs.setdefault(name, []).append(wrk(url, token, args.seconds, script=script))
        for name, measured in runs.items():
            results[name] = sorted(measured, key=lambda r: r["rate"])[len(measured) // 2]  # the median round
        for load in loads:
            latency[f"cached lesson GET @{load}/s"] = asyncio.run(
                openloop.run("127.0.0.1", 18000, lambda: get_request(lesson, token), load, args.seconds))
            latency[f"progress POST @{load}/s"] = asyncio.run(
                openloop.run("127.0.0.1", 18000, lambda: progress_request(token), load, args.seconds))
            latency[f"progress POST, Redis stubbed @{load}/s"] = asyncio.run(
                openloop.run("127.0.0.1", 18001, lambda: progress_request(token), load, args.seconds))
    finally:
        server.stop()
        stub.stop()

    print(f"\nwrk -t1 -c64 -d{args.seconds}s, one uvicorn worker (uvloop, httptools), 127.0.0.1; "
          f"median of {args.rounds} interleaved rounds\n")
    print(f"{'run':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, r in results.items():
        print(f"{name:34} {r['rate']:9.0f} {r['p50']:8.2f} {r['p99']:8.2f} {r['non2xx']:8.0f}")
    print("\nopen loop (bench/openloop.py: constant arrival rate, latency from when each request was due)\n")
    print(f"{'run':40} {'offered':>8} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for name, r in latency.items():
        late = f"  (generator up to {r.max_start_delay_ms:.0f} ms late)" if r.max_start_delay_ms > 5 else ""
        print(f"{name:40} {r.offered:8.0f} {r.achieved:9.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f}  {r.statuses}{late}")
    get_ratio = results["cached lesson GET"]["rate"] / results["constant"]["rate"]
    post_ratio = results["progress POST"]["rate"] / results["progress POST, Redis stubbed"]["rate"]
    print(f"\ncached lesson GET / constant route:     {get_ratio:.2f}x (goal >= 0.7x: "
          f"{'met' if get_ratio >= 0.7 else 'MISSED'})")
    print(f"progress POST / same with Redis stubbed: {post_ratio:.2f}x (goal >= 0.6x: "
          f"{'met' if post_ratio >= 0.6 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
