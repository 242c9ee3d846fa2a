"""The chaos checker on hand-made histories: each invariant has a history that breaks it and one
that keeps it (the proof that the checker sees what it claims to see)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fencelock_chaos.checker import (
    Commit,
    RunFacts,
    Storage,
    Violation,
    check,
    check_exactly_once,
    check_fence_order,
    check_fence_unique,
    check_lease_overlap,
    check_lost_late,
    check_outcomes,
    check_progress,
    leases,
)
from fencelock_chaos.history import Event, Fault, FaultLog, HistoryWriter, fault_windows, read_events, read_faults

MS = 1_000_000
TTL = 1000 * MS


def ev(t_ms: float, proc: str, op: str, type_: str, file: str = "a", fence: int | None = None,
       error: str = "") -> Event:
    return Event(int(t_ms * MS), proc, op, type_, file, fence, error=error)


def held(proc: str, file: str, fence: int, start: float, end: float, write: str | None = "ok") -> list[Event]:
    """acquire at ``start``, a write (outcome ``write``), release at ``end``."""
    out = [ev(start - 1, proc, "acquire", "invoke", file), ev(start, proc, "acquire", "ok", file, fence)]
    if write is not None:
        out += [ev(start + 10, proc, "write", "invoke", file, fence), ev(start + 20, proc, "write", write, file, fence)]
    out += [ev(end, proc, "release", "invoke", file, fence), ev(end + 1, proc, "release", "ok", file, fence)]
    return out


def facts(produced: dict[str, list[str]] | None = None, end_ms: float = 10_000, bound_ms: float = 5000) -> RunFacts:
    return RunFacts(produced if produced is not None else {"a": ["T1", "T2"]}, TTL, int(bound_ms * MS), 0,
                    int(end_ms * MS))


def kinds(vs: list[Violation]) -> set[str]:
    return {v.invariant for v in vs}


# -- a clean run ----------------------------------------------------------------------------------

def clean() -> tuple[list[Event], Storage]:
    events = held("A", "a", 1, 100, 400) + held("B", "a", 2, 500, 800)
    storage = Storage(commits=[Commit(1, "a", 1, "A", 2), Commit(2, "a", 2, "B", 2)], row_counts={"T1": 1, "T2": 1})
    return events, storage


def test_a_clean_history_passes_every_invariant() -> None:
    events, storage = clean()
    assert check(events, [], storage, facts()) == []


# -- fence-order -----------------------------------------------------------------------------------

def test_fence_order_catches_a_lower_fence_committed_after_a_higher_one() -> None:
    storage = Storage(commits=[Commit(1, "a", 2, "B"), Commit(2, "a", 1, "A", 200)])
    vs = check_fence_order(storage)
    assert kinds(vs) == {"fence-order"}
    assert vs[0].proc == "A" and vs[0].resource == "a" and "stale holder's write of 200 rows" in vs[0].detail


def test_fence_order_accepts_rising_and_equal_fences_and_other_resources() -> None:
    storage = Storage(commits=[Commit(1, "a", 1, "A"), Commit(2, "a", 1, "A"), Commit(3, "b", 0, "C"),
                               Commit(4, "a", 7, "B")])
    assert check_fence_order(storage) == []


def test_fence_order_follows_commit_sequence_not_list_order() -> None:
    storage = Storage(commits=[Commit(2, "a", 2, "B"), Commit(1, "a", 1, "A")])  # listed out of order
    assert check_fence_order(storage) == []


# -- fence-unique ------------------------------------------------------------------------------------

def test_fence_unique_catches_one_fence_issued_twice_for_one_lock() -> None:
    events = held("A", "a", 5, 100, 200) + held("B", "a", 5, 300, 400)
    vs = check_fence_unique(events)
    assert kinds(vs) == {"fence-unique"} and vs[0].proc == "B"


def test_fence_unique_allows_the_same_number_on_different_locks() -> None:
    assert check_fence_unique(held("A", "a", 5, 100, 200) + held("B", "b", 5, 300, 400)) == []


# -- exactly-once -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("counts", "needle"),
    [({"T1": 1}, "missing"), ({"T1": 1, "T2": 2}, "more than once"), ({"T1": 1, "T2": 1, "X9": 1}, "never produced")],
)
def test_exactly_once_catches_lost_duplicated_and_phantom_rows(counts: dict[str, int], needle: str) -> None:
    vs = check_exactly_once(Storage(row_counts=counts), facts())
    assert kinds(vs) == {"exactly-once"}
    assert needle in vs[0].detail


def test_exactly_once_passes_when_every_row_is_there_once() -> None:
    assert check_exactly_once(Storage(row_counts={"T1": 1, "T2": 1}), facts()) == []


# -- lease-overlap ----------------------------------------------------------------------------------

def test_overlap_without_a_fault_is_a_violation() -> None:
    events = held("A", "a", 1, 100, 800) + held("B", "a", 2, 500, 900)
    vs = check_lease_overlap(leases(events, [], TTL), [], TTL)
    assert kinds(vs) == {"lease-overlap"}
    assert vs[0].proc == "B"


def test_overlap_explained_by_a_fault_on_the_lock_server_is_allowed() -> None:
    events = held("A", "a", 1, 100, 800) + held("B", "a", 2, 500, 900)
    faults = [Fault(int(450 * MS), "pexpire", "lock-server")]
    assert check_lease_overlap(leases(events, faults, TTL), fault_windows(faults), TTL) == []


def test_a_holder_never_believes_past_its_deadline() -> None:
    # A (no renewal) reports its loss late, but its lease ended at acquire invoke + TTL = 1099 ms:
    # B's lease from 1200 ms does not overlap it.
    events = [ev(99, "A", "acquire", "invoke"), ev(100, "A", "acquire", "ok", fence=1),
              ev(1500, "A", "lease-lost", "ok", fence=1), *held("B", "a", 2, 1200, 1300)]
    ls = leases(events, [], TTL)
    a = next(x for x in ls if x.proc == "A")
    assert a.end == 1099 * MS and a.ended_by == "deadline"
    assert check_lease_overlap(ls, [], TTL) == []


def test_renewal_moves_the_deadline() -> None:
    events = [ev(99, "A", "acquire", "invoke"), ev(100, "A", "acquire", "ok", fence=1),
              ev(500, "A", "renew", "invoke", fence=1), ev(501, "A", "renew", "ok", fence=1),
              ev(1200, "A", "release", "invoke", fence=1), ev(1201, "A", "release", "ok", fence=1)]
    (a,) = leases(events, [], TTL)
    assert a.deadline == 1500 * MS and a.end == 1200 * MS


# -- progress -----------------------------------------------------------------------------------------

def test_progress_catches_a_file_never_done() -> None:
    events = held("A", "a", 1, 100, 200, write="fail")
    vs = check_progress(events, [], facts())
    assert kinds(vs) == {"progress"} and vs[0].resource == "a" and "never" in vs[0].detail


def test_progress_catches_a_file_done_too_long_after_the_faults_healed() -> None:
    faults = [Fault(int(100 * MS), "sigstop", "A", "start"), Fault(int(1000 * MS), "sigstop", "A", "end")]
    events = held("B", "a", 1, 9000, 9100)  # done 8 s after the heal, bound 5 s
    vs = check_progress(events, fault_windows(faults), facts(end_ms=20_000))
    assert kinds(vs) == {"progress"} and "after the faults healed" in vs[0].detail


def test_progress_passes_when_done_within_the_bound() -> None:
    faults = [Fault(int(100 * MS), "sigstop", "A", "start"), Fault(int(1000 * MS), "sigstop", "A", "end")]
    assert check_progress(held("B", "a", 1, 3000, 3100), fault_windows(faults), facts()) == []


# -- ok-but-rejected / failed-but-applied ------------------------------------------------------------

def test_ok_for_a_write_the_storage_never_applied_is_a_violation() -> None:
    events = held("A", "a", 1, 100, 200)  # A says ok
    vs = check_outcomes(events, Storage(commits=[]))
    assert kinds(vs) == {"ok-but-rejected"} and vs[0].proc == "A"


def test_ok_matches_a_commit_of_the_same_writer_and_fence() -> None:
    assert check_outcomes(held("A", "a", 1, 100, 200), Storage(commits=[Commit(1, "a", 1, "A")])) == []
    # a commit by someone else, or with another fence, does not vouch for A's write
    vs = check_outcomes(held("A", "a", 1, 100, 200), Storage(commits=[Commit(1, "a", 2, "A"), Commit(2, "a", 1, "B")]))
    assert kinds(vs) == {"ok-but-rejected"}


def test_fail_for_a_write_the_storage_applied_is_a_violation_but_unknown_is_maybe() -> None:
    storage = Storage(commits=[Commit(1, "a", 1, "A")])
    vs = check_outcomes(held("A", "a", 1, 100, 200, write="fail"), storage)
    assert kinds(vs) == {"failed-but-applied"}
    assert check_outcomes(held("A", "a", 1, 100, 200, write="unknown"), storage) == []
    assert check_outcomes(held("A", "a", 1, 100, 200, write="unknown"), Storage()) == []


# -- lost-late -----------------------------------------------------------------------------------------

def lost_at(ms: float) -> list[Event]:
    return [ev(99, "A", "acquire", "invoke"), ev(100, "A", "acquire", "ok", fence=1),
            ev(ms, "A", "lease-lost", "ok", fence=1)]


def test_a_loss_reported_more_than_a_ttl_after_the_deadline_is_late() -> None:
    vs = check_lost_late(leases(lost_at(2500), [], TTL), [], TTL, int(10_000 * MS))
    assert kinds(vs) == {"lost-late"}


def test_a_loss_reported_within_a_ttl_of_the_deadline_is_in_time() -> None:
    assert check_lost_late(leases(lost_at(1800), [], TTL), [], TTL, int(10_000 * MS)) == []


def test_the_time_a_holder_was_stopped_excuses_a_late_report() -> None:
    faults = [Fault(int(500 * MS), "sigstop", "A", "start"), Fault(int(2000 * MS), "sigstop", "A", "end")]
    ls = leases(lost_at(2500), faults, TTL)
    assert check_lost_late(ls, fault_windows(faults), TTL, int(10_000 * MS)) == []


def test_a_loss_never_reported_is_a_violation_unless_the_holder_was_killed() -> None:
    events = [ev(99, "A", "acquire", "invoke"), ev(100, "A", "acquire", "ok", fence=1)]
    vs = check_lost_late(leases(events, [], TTL), [], TTL, int(10_000 * MS))
    assert kinds(vs) == {"lost-late"} and "never reported" in vs[0].detail
    kill = [Fault(int(300 * MS), "sigkill", "A")]
    assert check_lost_late(leases(events, kill, TTL), fault_windows(kill), TTL, int(10_000 * MS)) == []


def test_a_failed_release_counts_as_the_loss_report() -> None:
    events = [ev(99, "A", "acquire", "invoke"), ev(100, "A", "acquire", "ok", fence=1),
              ev(900, "A", "release", "invoke", fence=1), ev(901, "A", "release", "fail", fence=1)]
    assert check_lost_late(leases(events, [], TTL), [], TTL, int(10_000 * MS)) == []


# -- the whole check on a stale-holder history ----------------------------------------------------------

def test_check_reports_the_stale_write_of_a_paused_holder_with_fencing_off() -> None:
    # A pauses after its lease check; B takes over and writes; A's write lands after B's.
    events = [ev(99, "A", "acquire", "invoke"), ev(100, "A", "acquire", "ok", fence=1),
              ev(110, "A", "write", "invoke", fence=1), ev(1099, "A", "lease-lost", "ok", fence=1),
              *held("B", "a", 2, 1200, 1400),
              ev(2000, "A", "write", "ok", fence=1), ev(2001, "A", "release", "invoke", fence=1),
              ev(2002, "A", "release", "fail", fence=1)]
    faults = [Fault(int(105 * MS), "hook-pause", "A", "start"), Fault(int(2000 * MS), "hook-pause", "A", "end")]
    storage = Storage(commits=[Commit(1, "a", 2, "B", 2), Commit(2, "a", 1, "A", 2)], row_counts={"T1": 1, "T2": 1})
    assert kinds(check(events, faults, storage, facts())) == {"fence-order"}
    # with fencing on, A's write is refused, and the history says so
    events_on = [e if not (e.proc == "A" and e.op == "write" and e.type == "ok")
                 else ev(2000, "A", "write", "fail", fence=1, error="StaleFence") for e in events]
    storage_on = Storage(commits=[Commit(1, "a", 2, "B", 2)], row_counts={"T1": 1, "T2": 1})
    assert check(events_on, faults, storage_on, facts()) == []


# -- history files -----------------------------------------------------------------------------------------

def test_history_round_trip_and_a_torn_last_line(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path / "A.jsonl", "A")
    w.record("acquire", "invoke", file="a")
    w.record("acquire", "ok", file="a", fence=3)
    w.close()
    with (tmp_path / "A.jsonl").open("a") as fh:
        fh.write('{"t": 1, "proc": "A", "op": "wri')  # SIGKILL in the middle of a line
    events = read_events([tmp_path / "A.jsonl", tmp_path / "missing.jsonl"])
    assert [(e.op, e.type, e.fence) for e in events] == [("acquire", "invoke", None), ("acquire", "ok", 3)]
    assert "wall" in events[0].extra
    with pytest.raises(ValueError):
        read_events([tmp_path / "A.jsonl"], tolerate_torn_tail=False)


def test_history_writer_refuses_unknown_operations(tmp_path: Path) -> None:
    w = HistoryWriter(tmp_path / "A.jsonl", "A")
    try:
        with pytest.raises(ValueError):
            w.record("steal", "ok")
    finally:
        w.close()


def test_fault_log_pairs_windows_and_keeps_points(tmp_path: Path) -> None:
    log = FaultLog(tmp_path / "faults.jsonl")
    log.start("sigstop", "A")
    log.point("pexpire", "lock-server", "PEXPIRE k 1 -> True")
    log.end("sigstop", "A")
    log.start("partition", "B")  # never healed
    faults = read_faults(tmp_path / "faults.jsonl")
    assert [json.loads(line)["fault"] for line in (tmp_path / "faults.jsonl").read_text().splitlines()] == [
        "sigstop", "pexpire", "sigstop", "partition"]
    ws = {(w.fault, w.target): w for w in fault_windows(faults)}
    assert ws[("sigstop", "A")].end is not None and ws[("sigstop", "A")].end > ws[("sigstop", "A")].start
    assert ws[("pexpire", "lock-server")].start == ws[("pexpire", "lock-server")].end
    assert ws[("partition", "B")].end is None
