"""The stress test against every backend in ``tests/servers.py`` ``BACKENDS`` (see run.py).

Short tier (default, CI): each seed of ``SHORT_SEEDS`` (one of each scenario: see run.py) for
``SHORT_DURATION`` s of workload per backend. Replay a failure with the command its message prints
(``--stress-seed N``: the same fault schedule and operation sequences; thread timing is the
machine's, so a race may need a few tries).

Long tier: ``pytest tests/stress --stress-long --stress-minutes 30`` runs seed after seed on every
backend until its share of the time is up, then prints what ran and every violation's seed.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from servers import BACKENDS

from .run import RunResult, Settings, run_stress

pytestmark = [pytest.mark.slow, pytest.mark.stress]

SHORT_DURATION = (13.0, 8.0)
"""Seconds of workload per short run: even seeds (a crowd of dead waiters, then no other fault
for 13 s), odd seeds (storms of every fault)."""
LONG_DURATION = 30.0


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """Print past pytest's output capture: what a long run ran is its result, passed or not."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None:
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            reporter.write_line(line)


def _replay(backend: str, seed: int) -> str:
    return f".venv/bin/python -m pytest tests/stress/test_stress.py::test_stress --stress-seed {seed} -k '{backend}' -q"


def failure_report(results: list[RunResult], limit: int = 25) -> str:
    lines: list[str] = []
    for res in results:
        if not res.violations:
            continue
        rules = Counter(v.rule for v in res.violations)
        lines.append(f"{res.backend} seed {res.seed}: {len(res.violations)} violations {dict(rules)}; history in "
                     f"{res.directory}")
        lines.append(f"  replay: {_replay(res.backend, res.seed)}")
        shown: Counter[str] = Counter()
        for v in res.violations:
            key = v.rule + str(v.detail.get("signal", "")) + str(v.detail.get("sub", ""))
            shown[key] += 1
            if shown[key] <= 3 and sum(shown.values()) <= limit:
                lines.append(f"  {v}")
    return "\n".join(lines)


def test_stress(lock_server: Any, backend_name: str, stress_seed: int, tmp_path: Path,
                request: pytest.FixtureRequest) -> None:
    # even seeds run the quiet-crowd scenario, which needs ~13 s to play out; odd seeds storms
    duration = request.config.getoption("--stress-duration") or SHORT_DURATION[stress_seed % 2]
    res = run_stress(backend_name, lock_server, Settings(seed=stress_seed, duration=duration), tmp_path)
    _say(request, "\n" + res.summary())
    assert res.leases > 0, f"the run granted no lease at all: {res.summary()}"
    if res.violations:
        pytest.fail(failure_report([res]), pytrace=False)


@pytest.mark.timeout(6 * 3600)  # bounded by its own time budget (--stress-minutes), not by the suite's 300 s
def test_stress_long(lock_server: Any, backend_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    budget = request.config.getoption("--stress-minutes") * 60.0 / len(BACKENDS)
    duration = request.config.getoption("--stress-duration") or LONG_DURATION
    base = request.config.getoption("--stress-seed") or random.SystemRandom().randrange(1, 10**6)
    end = time.monotonic() + budget
    results: list[RunResult] = []
    for i in range(10_000):
        left = end - time.monotonic()
        if left < 15:
            break
        seed = base + i
        settings = Settings(seed=seed, duration=min(duration, max(8.0, left - 30)), workers=4)
        res = run_stress(backend_name, lock_server, settings, tmp_path / f"seed{seed}")
        results.append(res)
        _say(request, res.summary())
    totals: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    ops: Counter[str] = Counter()
    prims: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    overrun: dict[str, float] = {}
    for res in results:
        totals.update(v.rule for v in res.violations)
        faults.update(res.faults)
        ops.update(res.ops)
        prims.update(res.prims)
        calls.update(res.calls)
        for op, over in res.overrun.items():
            overrun[op] = max(overrun.get(op, 0.0), over)
    _say(
        request,
        f"\n{backend_name}: {len(results)} runs (seeds {base}..{base + len(results) - 1}), "
        f"{sum(ops.values())} operations {dict(ops)}, {sum(r.leases for r in results)} leases {dict(prims)}, "
        f"calls per primitive {dict(calls)}, {sum(faults.values())} faults {dict(faults)}, "
        f"longest past timeout {overrun}, violations {dict(totals) or 0} in seeds "
        f"{[r.seed for r in results if r.violations]}",
    )
    assert results, "the time budget allowed no run"
    if totals:
        pytest.fail(failure_report(results), pytrace=False)
