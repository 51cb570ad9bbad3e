"""The API as the benchmark serves it: the real app plus a constant-bytes route (the baseline), and in
``--stub-redis`` mode the progress route with its Redis write replaced by an immediate answer."""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import Response

from learner_api.app import create_app
from learner_api.http_server import protocol
from learner_api.progress_intake import Outcome, ProgressIntake
from learner_api.settings import load_settings

CONSTANT = b'{"id":"constant","title":"The same bytes every time","body":"' + b"x" * 200 + b'"}'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stub-redis", action="store_true")
    args = parser.parse_args()
    if args.stub_redis:
        async def accepted(self: ProgressIntake, tenant: str, events: list[tuple[str, bytes, bytes]]) -> Outcome:
            return Outcome(len(events), 0, [])

        ProgressIntake.accept = accepted  # type: ignore[method-assign]
    settings = load_settings()
    app = create_app(settings)

    @app.get("/bench/constant")
    async def constant() -> Response:
        return Response(CONSTANT, media_type="application/json")

    # the protocol learner-api serves with (header limits, read timeouts, connection cap), on httptools
    uvicorn.run(app, host="127.0.0.1", port=args.port, workers=1, loop="uvloop", http=protocol(settings),
                access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
