"""The JSONL history every step is written to, the tallies beside it, and the final report."""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Stats:
    faults: Counter[str] = field(default_factory=Counter)
    broken: list[str] = field(default_factory=list)
    convergence: list[float] = field(default_factory=list)
    final_convergence: dict[str, float] = field(default_factory=dict)
    writes_at_rest: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    orphans_collected: int = 0  # children of deleted platforms that landed late and the GC removed


class History:
    """Appends one JSON line per step, timed from the soak's start; ``broke`` also says so on stdout."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a")
        self.stats = Stats()
        self.started = time.monotonic()

    def record(self, op: str, **fields: Any) -> None:
        self.file.write(json.dumps({"t": round(time.monotonic() - self.started, 3), "op": op, **fields}) + "\n")

    def broke(self, what: str) -> None:
        self.stats.broken.append(what)
        self.record("invariant_broken", what=what)
        print(f"  BROKEN: {what}", flush=True)

    def close(self) -> None:
        self.file.close()


def summary(stats: Stats, *, seed: int, minutes: float, quiet_seconds: float, events: tuple[int, int, int],
            purchases: tuple[int, int, int], peak_rss_mib: dict[str, float], redis_keys: tuple[int, int],
            ) -> dict[str, Any]:
    """The report: ``events`` are (sent, acked, stored), ``purchases`` (made, ordered, paid), ``redis_keys``
    (all, never expiring)."""
    conv = sorted(stats.convergence)

    def pct(q: float) -> str:
        return f"{conv[min(len(conv) - 1, int(q * len(conv)))]:.1f}" if conv else "-"

    final = sorted(stats.final_convergence.values())
    return {
        "seed": seed, "minutes": minutes,
        "faults": dict(sorted(stats.faults.items())), "faults_total": sum(stats.faults.values()),
        "events_sent": events[0], "events_acked": events[1], "events_stored": events[2],
        "purchases": purchases[0], "orders": purchases[1], "paid": purchases[2],
        "convergence_s": {"n": len(conv), "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "final_convergence_s": {"platforms": len(final), "max": round(final[-1], 1) if final else None,
                                "median": round(statistics.median(final), 1) if final else None},
        "writes_at_rest": len(stats.writes_at_rest), "quiet_seconds": quiet_seconds,
        "orphans_collected": stats.orphans_collected,
        "peak_rss_mib": {k: round(v) for k, v in sorted(peak_rss_mib.items())},
        "redis_keys": redis_keys[0], "redis_keys_without_ttl": redis_keys[1],
        "crashes": stats.crashes, "requests": dict(sorted(stats.requests.items())),
        "broken": stats.broken,
    }


def report(history: History, summary: dict[str, Any]) -> int:
    """Record and print the summary; 1 when an invariant broke (with the command that replays it), else 0."""
    history.record("report", **summary)
    history.close()
    print("\n== soak report")
    print(json.dumps(summary, indent=1))
    if summary["broken"]:
        cluster = " --redis cluster" if summary.get("fault_plan", {}).get("redis") == "cluster" else ""
        print(f"\n{len(summary['broken'])} invariant(s) broke; replay with: python -m bench.soak "
              f"--seed {summary['seed']} --minutes {summary['minutes']}{cluster}")
        return 1
    print("\nall invariants held")
    return 0
