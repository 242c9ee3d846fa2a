"""How the contended benchmarks score a run, defined once so their tables compare.

Each worker reports events ``(asked, got, released)`` on the shared ``time.monotonic()`` clock
(CLOCK_MONOTONIC is system-wide on Linux, so events of different processes order correctly).
"""

from __future__ import annotations

import itertools

Events = list[tuple[float, float, float]]


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def summarize(per_worker: dict[int, Events], workers: list[int], seconds: float, final_count: int) -> dict[str, float]:
    """Acquisitions/s; wait (asked -> got) p50/p99; handoff (one worker's release -> a *different*
    worker's acquire) p50/p99 and share; fairness = fewest / most acquisitions of one worker (a
    worker that never got the lock counts as 0); lost updates of the counter bumped inside."""
    total = sum(len(e) for e in per_worker.values())
    waits = [(got - asked) * 1000 for e in per_worker.values() for asked, got, _ in e]
    timeline = sorted((got, released, pid) for pid, e in per_worker.items() for _, got, released in e)
    handoffs = [(nxt[0] - cur[1]) * 1000 for cur, nxt in itertools.pairwise(timeline) if nxt[2] != cur[2]]
    counts = [len(per_worker.get(pid, [])) for pid in workers]
    return {
        "ops/s": total / seconds,
        "wait p50 ms": pct(waits, 50),
        "wait p99 ms": pct(waits, 99),
        "handoff p50 ms": pct(handoffs, 50),
        "handoff p99 ms": pct(handoffs, 99),
        "handoffs %": 100 * len(handoffs) / max(1, total - 1),
        "fairness": min(counts) / max(counts) if counts and max(counts) else 0.0,
        "lost updates": total - final_count,
    }
