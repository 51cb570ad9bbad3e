"""The spec property check of tests/test_spec_property.py, for longer: many generated LearnerPlatforms, each
judged by admission (the emulator's) and by render, and an admitted one's children by kubernetes-validate.

    .venv/bin/python -m bench.spec_property [--examples 5000] [--seed 1818]

Prints the verdicts, the failures (tracebacks, disagreements, children a server would refuse; the first
few in full) and the time spent, wall and CPU, per spec. Exit 1 when anything failed.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.conftest import CRD_FILE, load
from tests.spec_strategies import platforms
from tests.spec_verdicts import Verdict, emulator_judge, judge_one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spec_property", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1818)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="The recursion limit")
    crd = load(CRD_FILE)
    judge = emulator_judge(crd)
    verdicts: list[Verdict] = []

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(platforms(crd))
    def check(doc: dict[str, Any]) -> None:
        verdicts.append(judge_one(doc, judge))

    wall, cpu = time.perf_counter(), time.process_time()
    check()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    kinds = collections.Counter(v.kind for v in verdicts)
    failures = [v for v in verdicts if v.failed]
    print(f"{len(verdicts)} specs (seed {args.seed}): " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print(f"{wall:.1f} s wall, {cpu:.1f} s CPU: {1000 * wall / max(len(verdicts), 1):.1f} ms per spec")
    for failure in failures[:5]:
        print(f"--- {failure.kind}\n{failure.detail}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
