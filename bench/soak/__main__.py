"""``python -m bench.soak``: the soak's command line (see the package's docstring)."""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from bench import soak
from bench.soak.kube import real_binaries
from bench.soak.run import Soak


async def _run(args: argparse.Namespace, folder: Path) -> int:
    # SIGTERM (a CI job's timeout, `kill`) and SIGINT (also when started in the background, where it arrives
    # ignored) stop the soak as its end does: every process it started stopped (thawed first), PostgreSQL too.
    # A cancellation can be lost in a wait that ends at the same moment: asked again each second until it ends.
    main_task, loop = asyncio.current_task(), asyncio.get_running_loop()
    assert main_task is not None

    def interrupt() -> None:
        if not main_task.done():
            main_task.cancel()
            loop.call_later(1.0, interrupt)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, interrupt)
    return await Soak(args, folder).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=soak.__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="load and faults this long (then the checks)")
    parser.add_argument("--seed", type=int, default=None, help="the faults' and the load's seed (default: random)")
    parser.add_argument("--quiet-seconds", type=float, default=60.0, help="at rest, this long with no operator write")
    parser.add_argument("--replicas", type=int, default=3, help="operator replicas")
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="the operator's full resync period")
    parser.add_argument("--progress-workers", type=int, default=4)
    parser.add_argument("--platforms-per-namespace", type=int, default=3)
    parser.add_argument("--churn-seconds", type=float, default=3.0, help="mean time between platform changes")
    parser.add_argument("--fault-seconds", type=float, default=8.0, help="mean time between faults")
    parser.add_argument("--max-faults", type=int, default=3, help="faults under way at once")
    parser.add_argument("--longest-fault", type=float, default=60.0,
                        help="cap on a freeze's or an API server outage's seconds (the smoke run's: 15)")
    parser.add_argument("--kube", choices=("emulator", "emulator-rest", "real"),
                        help="the Kubernetes API: the tests' emulator; the emulator called through the real "
                             "control plane's REST client; a real control plane from envtest's binaries "
                             "(default: real when KUBEBUILDER_ASSETS is set, else emulator)")
    parser.add_argument("--redis", choices=("server", "cluster"), default="server",
                        help="one redis-server, or a Redis Cluster of 3 masters with a replica each")
    parser.add_argument("--history", help="the JSONL history (default: in the soak's folder)")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, data) even when all held")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1_000_000)
    if args.minutes <= 0 or args.quiet_seconds < 0 or args.replicas < 1:
        parser.error("--minutes must be > 0, --quiet-seconds >= 0, --replicas >= 1")
    try:
        real_binaries(args.kube)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix=f"soak-{args.seed}-"))
    folder.chmod(0o755)  # PostgreSQL runs as its own user under it
    code = 2
    try:
        code = asyncio.run(_run(args, folder))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: every process the soak started is stopped", file=sys.stderr)
        code = 130
    finally:
        if code == 0 and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"logs, data and history kept in {folder}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
