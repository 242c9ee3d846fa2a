"""The short tier of ``fencelock chaos`` (what CI runs): every fault scenario, injected for
real, twice. With the storage-side fence check on, the checker must find nothing; with it off, it
must find the violation the scenario provokes (or nothing, where fencing is not what protects)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fencelock_chaos.checker import Storage
from fencelock_chaos.runner import RunResult, Settings, Verdict, postgres, run_scenario
from fencelock_chaos.scenarios import SCENARIOS, Scenario
from fencelock_chaos.servers import Postgres

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgres() as server:
        yield server


def _explain(res: RunResult | None) -> str:
    if res is None:
        return "not run"
    lines = [f"error: {res.error}"] if res.error else []
    lines += [str(v) for v in res.violations]
    lines += res.notes
    return f"{res.directory}: " + "; ".join(lines or ["no violation"])


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[f"{s.number}-{s.name}" for s in SCENARIOS])
def test_scenario_verdicts(scenario: Scenario, pg: Postgres, tmp_path: Path) -> None:
    v = run_scenario(scenario, Settings(), pg, tmp_path, SCENARIOS.index(scenario))
    assert v.blocked is None, f"{scenario.name} is blocked: {v.blocked}"
    assert v.on is not None and v.off is not None
    # every fault the scenario injects is in the fault log, and the history is not empty
    assert v.on.faults and v.off.faults, "no fault was logged"
    assert {e.proc for e in v.on.events}, "no history was recorded"
    # fencing on: no violation at all
    assert v.on.error is None and v.on.violations == [], _explain(v.on)
    # fencing off: exactly what the scenario provokes
    assert v.off.error is None, _explain(v.off)
    if scenario.expect_off:
        assert v.off.invariants() & scenario.expect_off, _explain(v.off)
        assert v.off.invariants() <= scenario.expect_off, _explain(v.off)
    else:
        assert v.off.violations == [], _explain(v.off)
    assert v.passed


def test_verdict_fails_a_fencing_off_run_that_shows_nothing() -> None:
    empty = RunResult("x", False, [], [], [], Storage(), {}, 0, 1, 0.0)
    v = Verdict("x", "1", "t", frozenset({"fence-order"}), on=empty, off=empty)
    assert v.ok_on and not v.ok_off and not v.passed
    assert Verdict("x", "1", "t", frozenset(), on=empty, off=empty).passed


def test_cli_runs_a_scenario_writes_the_timeline_and_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fencelock.cli", "chaos", "--scenario", "storage-race", "--out", str(out)],
        capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "storage-race" in proc.stdout and "PASS" in proc.stdout
    page = (out / "timeline.html").read_text()
    assert page.count("<svg") == 2 and "STALE" in page and "rejected" in page


def test_cli_refuses_an_unknown_scenario(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fencelock.cli", "chaos", "--scenario", "nope", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64 and "no scenario" in proc.stderr  # EX_USAGE, as every subcommand
