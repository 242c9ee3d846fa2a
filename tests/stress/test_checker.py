"""The stress checker on hand-made histories: each rule passes a correct history and FAILS the
history that breaks it, so a green stress run means something. No server needed."""

from __future__ import annotations

from typing import Any

import pytest

from .checker import Bounds, Violation, check
from .history import Event, Recorder, load_dir

B = Bounds(request=1.0, slack=0.5, signal=0.5, liveness=2.0, settle=1.0, dead_hold=0.5)


class H:
    """A history builder: times are explicit, ids are made up."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._n = 0

    def ev(self, t: float, pid: int, ev: str, **fields: Any) -> H:
        self.events.append({"t": t, "pid": pid, "ev": ev, **fields})
        return self

    def cid(self) -> str:
        self._n += 1
        return f"c{self._n}"

    def start(self, *pids: int, t: float = 0.0) -> H:
        for pid in pids:
            self.ev(t, pid, "start", worker=pid)
        return self

    def stop(self, *pids: int, t: float = 100.0) -> H:
        for pid in pids:
            self.ev(t, pid, "stop")
        return self

    def lease(self, pid: int, token: str, fence: int, t_req: float, t_ok: float, *, name: str = "n", ttl: float = 1.0,
              op: str = "acquire", api: str = "sync", col: bool = False, timeout: float = 5.0,
              deadline: float | None = None, task: str | None = None, obj: int | None = None,
              prim: str | None = None, limit: int | None = None) -> H:
        c = self.cid()
        extra: dict[str, Any] = {"task": task} if task else {}
        if prim is not None:
            extra.update(prim=prim, limit=limit or 1)
        self.ev(t_req, pid, "call", cid=c, op=op, name=name, api=api, timeout=timeout, **extra)
        d = t_req + ttl if deadline is None else deadline
        self.ev(t_ok - 1e-4, pid, "dl", token=token, deadline=d, obj=obj)
        return self.ev(t_ok, pid, "ret", cid=c, out="ok", token=token, fence=fence, deadline=d, ttl=ttl,
                       renew=False, col=col, obj=obj)

    def op(self, pid: int, op: str, t0: float, t1: float, *, name: str = "n", token: str | None = None,
           out: str = "ok", exc: str | None = None, timeout: float | None = None, documented: bool = True,
           task: str | None = None, prim: str | None = None, limit: int | None = None,
           term: int | None = None) -> H:
        c = self.cid()
        extra: dict[str, Any] = {"task": task} if task else {}
        if timeout is not None:
            extra["timeout"] = timeout
        if prim is not None:
            extra.update(prim=prim, limit=limit or 1)
        self.ev(t0, pid, "call", cid=c, op=op, name=name, api="sync", token=token, **extra)
        ret: dict[str, Any] = {"term": term} if term is not None else {}
        return self.ev(t1, pid, "ret", cid=c, out=out, exc=exc, documented=documented, **ret)

    def release(self, pid: int, token: str, t0: float, *, name: str = "n", out: str = "ok",
                exc: str | None = None) -> H:
        return self.op(pid, "release", t0, t0 + 0.01, name=name, token=token, out=out, exc=exc)

    def sig(self, pid: int, token: str, t: float, *kinds: str, obj: int | None = None) -> H:
        for k in kinds:
            self.ev(t, pid, "sig", token=token, kind=k, obj=obj)
        return self

    def all_signals(self, pid: int, token: str, t: float) -> H:
        return self.sig(pid, token, t, "on_lost", "event", "reason")

    def fault(self, kind: str, t0: float, t1: float, **fields: Any) -> H:
        return self.ev(t1, 0, "fault", kind=kind, t0=t0, t1=t1, **fields)

    def check(self, bounds: Bounds = B) -> list[Violation]:
        return check(self.events, bounds)


def rules(vs: list[Violation]) -> set[str]:
    return {v.rule for v in vs}


def test_a_clean_history_has_no_violation() -> None:
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01).release(1, "A", 1.5)
    h.lease(2, "B", 11, 1.2, 1.51).release(2, "B", 2.0)
    h.stop(1, 2)
    assert h.check() == []


# -- a: mutual exclusion of believed-valid leases --------------------------------------------------


def test_a_two_leases_believed_valid_together_fail() -> None:
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=2.0).release(1, "A", 2.5)
    h.lease(2, "B", 11, 1.5, 1.6, ttl=2.0).release(2, "B", 3.0)
    h.stop(1, 2)
    assert rules(h.check()) == {"a"}


def test_a_overlap_is_excused_by_a_data_loss_fault_and_not_by_a_pause() -> None:
    def run(kind: str) -> set[str]:
        h = H().start(1, 2)
        h.lease(1, "A", 10, 1.0, 1.01, ttl=2.0).release(1, "A", 2.5, out="err", exc="LeaseLost")
        h.lease(2, "B", 11, 1.5, 1.6, ttl=2.0).release(2, "B", 3.0)
        h.fault(kind, 1.2, 1.3, name="n")
        h.stop(1, 2)
        return rules(h.check())

    assert "a" not in run("delete_lock")
    assert "a" not in run("restart_empty")
    assert "a" in run("pause")


def test_a_overlap_is_excused_by_a_deletion_while_a_waiter_was_still_acquiring() -> None:
    # the lock was handed to waiter B, deleted under it, then granted to A; B learns of its grant late
    h = H().start(1, 2)
    h.lease(2, "B", 10, 0.5, 2.01, ttl=2.0)
    h.fault("delete_lock", 1.0, 1.01, name="n")
    h.lease(1, "A", 11, 1.5, 2.0, ttl=2.0).release(1, "A", 3.0)
    h.release(2, "B", 3.0, out="err", exc="LeaseLost")
    h.stop(1, 2)
    assert "a" not in rules(h.check())


def test_a_a_data_loss_before_either_key_existed_excuses_nothing() -> None:
    # A waited from 0.5 and won with a request sent at 1.9; the restart at 1.0 did not lose its key
    h = H().start(1, 2)
    h.fault("restart_empty", 1.0, 1.1)
    h.lease(1, "A", 10, 0.5, 2.0, ttl=2.0, deadline=3.9).release(1, "A", 3.5)
    h.lease(2, "B", 11, 2.4, 2.5, ttl=2.0).release(2, "B", 3.0)
    h.stop(1, 2)
    assert rules(h.check()) == {"a"}


def test_a_a_deadline_the_renewer_sets_too_late_does_not_revive_the_lease() -> None:
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=1.0)  # deadline 2.0
    h.ev(2.2, 1, "dl", token="A", deadline=5.0)  # arrives after 2.0: the lease had ended
    h.all_signals(1, "A", 2.05)
    h.lease(2, "B", 11, 2.1, 2.3)
    h.release(2, "B", 2.8).release(1, "A", 3.0, out="err", exc="LeaseLost")
    h.stop(1, 2)
    assert "a" not in rules(h.check())


def test_a_client_believing_a_later_deadline_than_the_server_fails() -> None:
    # the extend/renewer race: the client's last update moved its deadline past the server's
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=1.0)
    h.ev(1.5, 1, "dl", token="A", deadline=4.0)
    h.lease(2, "B", 11, 2.1, 2.3).release(2, "B", 2.8)
    h.release(1, "A", 3.0)
    h.stop(1, 2)
    assert rules(h.check()) == {"a"}


def test_a_prime_fences_of_committed_writes_never_go_down() -> None:
    ok = [{"t": 1.0, "ev": "dbwrite", "pid": 1, "seq": 1, "resource": "n", "fence": 5, "token": "A"},
          {"t": 1.1, "ev": "dbwrite", "pid": 2, "seq": 2, "resource": "n", "fence": 7, "token": "B"},
          {"t": 1.2, "ev": "dbwrite", "pid": 2, "seq": 3, "resource": "n", "fence": 7, "token": "B"}]
    assert check(ok, B) == []
    bad = [*ok, {"t": 1.3, "ev": "dbwrite", "pid": 1, "seq": 4, "resource": "n", "fence": 5, "token": "A"}]
    assert rules(check(bad, B)) == {"a'"}


# -- b: fences -------------------------------------------------------------------------------------


def test_b_a_later_grant_with_a_lower_fence_fails() -> None:
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01).release(1, "A", 1.2)
    h.lease(2, "B", 9, 1.3, 1.31).release(2, "B", 1.5)
    h.stop(1, 2)
    assert rules(h.check()) == {"b"}


def test_b_a_fence_issued_twice_fails_and_concurrent_requests_may_come_in_any_order() -> None:
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01).release(1, "A", 1.2)
    h.lease(2, "B", 10, 1.3, 1.31).release(2, "B", 1.5)
    h.stop(1, 2)
    assert rules(h.check()) == {"b"}
    h = H().start(1, 2)
    h.lease(1, "A", 12, 1.0, 1.2).release(1, "A", 1.3)  # B asked at 1.1, before A's acquire returned
    h.lease(2, "B", 11, 1.1, 1.4).release(2, "B", 1.5)
    h.stop(1, 2)
    assert h.check() == []


# -- c: loss signals -------------------------------------------------------------------------------


def _expired(signals: tuple[str, ...], at: float = 2.1) -> set[str]:
    h = H().start(1)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=1.0)  # deadline 2.0, held until 4.0
    h.sig(1, "A", at, *signals)
    h.release(1, "A", 4.0, out="err", exc="LeaseLost")
    h.stop(1)
    return {str(v.detail.get("signal")) for v in h.check() if v.rule == "c"}


def test_c_every_signal_must_fire_when_the_deadline_passes() -> None:
    assert _expired(("on_lost", "event", "reason")) == set()
    assert _expired(("event", "reason")) == {"on_lost"}
    assert _expired(()) == {"on_lost", "event", "reason"}
    assert _expired(("on_lost", "event", "reason"), at=3.5) == {"on_lost", "event", "reason"}  # too late


def test_c_a_lease_returned_past_its_deadline_fails_and_needs_no_signal_if_released_at_once() -> None:
    h = H().start(1)
    h.lease(1, "A", 10, 1.0, 4.0, ttl=2.0)  # the request took 3 s (the server was paused): it ended at 3.0
    h.fault("pause", 1.0, 3.9)
    h.release(1, "A", 4.02)
    h.stop(1)
    assert [v.detail.get("signal") for v in h.check()] == ["doa"]


def test_c_a_frozen_holder_gets_its_signals_after_it_wakes() -> None:
    h = H().start(1)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=1.0)
    h.fault("sigstop", 1.5, 5.0, target=1)
    h.all_signals(1, "A", 5.1)
    h.release(1, "A", 6.0, out="err", exc="LeaseLost")
    h.stop(1)
    assert h.check() == []


def test_c_a_holder_frozen_past_its_deadline_that_releases_on_waking_needs_no_signal() -> None:
    h = H().start(1)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=1.0)
    h.fault("sigstop", 1.5, 5.0, target=1)
    h.release(1, "A", 5.01, out="err", exc="LeaseLost")
    h.stop(1)
    assert h.check() == []


def test_c_a_refused_extend_needs_every_signal() -> None:
    h = H().start(1)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=3.0)
    h.op(1, "extend", 1.5, 1.51, token="A", out="err", exc="LeaseLost").sig(1, "A", 1.51, "extend")
    h.release(1, "A", 2.5, out="err", exc="LeaseLost")
    h.stop(1)
    assert {v.detail.get("signal") for v in h.check()} == {"on_lost", "event", "reason"}


def test_c_a_refused_release_must_signal_too() -> None:
    h = H().start(1)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=5.0)
    h.fault("delete_lock", 1.2, 1.21, name="n")
    h.release(1, "A", 2.0, out="err", exc="LeaseLost").sig(1, "A", 2.01, "release", "event", "reason")
    h.stop(1)
    assert [v.detail.get("sub") for v in h.check()] == ["release-refused-no-on_lost"]


def test_c_held_after_the_deadline_or_after_a_signal_fails() -> None:
    h = H().start(1)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=1.0)
    h.all_signals(1, "A", 2.01)
    h.ev(2.5, 1, "held", t0=2.5, token="A", how="ensure")
    h.release(1, "A", 3.0, out="err", exc="LeaseLost")
    h.stop(1)
    assert [v.detail.get("signal") for v in h.check()] == ["ensure"]


def test_c_cancel_on_loss_must_stop_the_critical_section() -> None:
    def run(section_end: float, how: str) -> list[Violation]:
        h = H().start(1)
        h.lease(1, "A", 10, 1.0, 1.01, ttl=1.0, api="async", col=True, op="with")
        h.all_signals(1, "A", 2.01)
        h.ev(section_end, 1, "sect_end", token="A", how=how)
        h.op(1, "with_exit", section_end, section_end + 0.01, token="A", out="err", exc="LeaseLost")
        h.stop(1)
        return h.check()

    assert run(2.05, "cancelled") == []
    bad = run(9.0, "normal")  # the cancellation was lost: the section ran on for 7 s
    assert [v.detail.get("signal") for v in bad] == ["cancel"]


def test_c_a_with_block_left_after_the_loss_must_raise_lease_lost() -> None:
    h = H().start(1)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=1.0, op="with")
    h.all_signals(1, "A", 2.01)
    h.op(1, "with_exit", 4.0, 4.01, token="A", out="ok")
    h.stop(1)
    assert [v.detail.get("signal") for v in h.check()] == ["with_exit"]


def test_c_cancel_on_loss_with_block_must_not_raise_cancelled_error() -> None:
    def run(user_cancelled: bool) -> list[Violation]:
        h = H().start(1)
        h.lease(1, "A", 10, 1.0, 1.01, ttl=1.0, api="async", col=True, op="with", task="k1")
        h.all_signals(1, "A", 2.01)
        if user_cancelled:
            h.ev(1.9, 1, "cancel", task="k1", sent=True).ev(2.1, 1, "task_end", task="k1", how="cancelled")
        h.ev(2.02, 1, "sect_end", token="A", how="cancelled")
        h.op(1, "with_exit", 2.02, 2.03, token="A", out="cancelled", exc="CancelledError", task="k1")
        h.stop(1)
        return h.check()

    assert [v.detail.get("signal") for v in run(False)] == ["with_exit_cancelled"]
    assert run(True) == []


# -- d: liveness and FIFO --------------------------------------------------------------------------


def test_d_a_waiter_timing_out_on_a_free_lock_fails() -> None:
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=30.0).release(1, "A", 2.0)
    h.op(2, "acquire", 1.5, 7.5, timeout=6.0, out="err", exc="LockTimeout")
    h.stop(1, 2)
    assert rules(h.check()) == {"d"}


def test_d_two_waiters_timing_out_together_on_a_free_lock_both_fail() -> None:
    # (a waiter that timed out never held the lock: it does not make the lock look busy to another)
    h = H().start(1, 2, 3)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=30.0).release(1, "A", 2.0)
    h.op(2, "acquire", 1.5, 7.5, timeout=6.0, out="err", exc="LockTimeout")
    h.op(3, "acquire", 1.6, 7.6, timeout=6.0, out="err", exc="LockTimeout")
    h.stop(1, 2, 3)
    assert [v.rule for v in h.check()] == ["d", "d"]


def test_d_a_waiter_granted_only_long_after_the_lock_was_freed_fails() -> None:
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=30.0).release(1, "A", 2.0)
    h.lease(2, "B", 11, 1.5, 7.0, ttl=30.0, timeout=10.0).release(2, "B", 7.5)  # waited 5 s on a free lock
    h.stop(1, 2)
    assert rules(h.check()) == {"d"}
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=30.0).release(1, "A", 6.9)
    h.lease(2, "B", 11, 1.5, 7.0, ttl=30.0, timeout=10.0).release(2, "B", 7.5)
    h.stop(1, 2)
    assert h.check() == []


def test_d_no_liveness_promise_while_held_or_near_a_fault() -> None:
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=30.0).release(1, "A", 7.6)
    h.op(2, "acquire", 1.5, 7.5, timeout=6.0, out="err", exc="LockTimeout")
    h.stop(1, 2)
    assert h.check() == []
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=30.0).release(1, "A", 2.0)
    h.op(2, "acquire", 1.5, 7.5, timeout=6.0, out="err", exc="LockTimeout")
    h.fault("pause", 2.0, 7.0)
    h.stop(1, 2)
    assert h.check() == []


def test_d_a_killed_holder_keeps_the_lock_for_its_ttl() -> None:
    h = H().start(1, 2)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=5.0)
    h.fault("sigkill", 1.5, 1.5, target=1)
    h.op(2, "acquire", 1.2, 5.2, timeout=4.0, out="err", exc="LockTimeout")
    h.stop(2)
    assert h.check() == []


def test_d_a_dead_waiter_stops_counting_as_holder_once_another_is_granted_after_its_window() -> None:
    # 40 waiters of pid 5 die at 2.0 (dead_hold 0.5, their TTL 5); B is granted from a request sent
    # at 3.0 and releases at 3.2; C then waits from 3.3 to 9.3 on a free lock: a stall, not a dead waiter
    h = H().start(1, 2, 3, 5)
    for _ in range(40):
        h.ev(1.0, 5, "call", cid=h.cid(), op="acquire", name="n", api="async", timeout=8.0, ttl=5.0)
    h.fault("sigkill", 2.0, 2.0, target=5)
    h.lease(2, "B", 11, 1.5, 3.01, ttl=5.0, deadline=8.0).release(2, "B", 3.2)
    h.op(3, "acquire", 3.3, 9.3, timeout=6.0, out="err", exc="LockTimeout")
    h.stop(1, 2, 3)
    assert rules(h.check()) == {"d"}


def test_d_fifo_a_later_waiter_granted_first_fails() -> None:
    h = H().start(1, 2, 3)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=30.0).release(1, "A", 3.0)
    h.op(2, "acquire", 1.5, 6.5, timeout=5.0, out="err", exc="LockTimeout")
    h.lease(3, "C", 11, 2.5, 3.02, ttl=30.0).release(3, "C", 10.0)
    h.stop(1, 2, 3)
    assert rules(h.check()) == {"d"}
    assert rules(h.check(Bounds(**{**B.__dict__, "fifo": False}))) == set()


# -- e, f, g, h --------------------------------------------------------------------------------------


def test_e_a_call_past_its_timeout_fails_unless_its_process_was_frozen() -> None:
    h = H().start(1)
    h.op(1, "acquire", 1.0, 6.0, timeout=1.0, out="err", exc="LockTimeout")  # allowed 1 + 2*1 + 0.5
    h.stop(1)
    assert rules(h.check()) == {"e"}
    h.fault("sigstop", 1.5, 4.0, target=1)
    assert h.check() == []


def test_f_a_cancelled_task_must_end_cancelled() -> None:
    for how, bad in (("cancelled", False), ("returned", True), ("raised", True)):
        h = H().start(1)
        h.op(1, "acquire", 1.0, 1.31, timeout=0.3, out="err", exc="LockTimeout", task="k1")
        h.ev(1.3, 1, "cancel", task="k1", sent=True).ev(1.32, 1, "task_end", task="k1", how=how, exc="LockTimeout")
        h.stop(1)
        assert (rules(h.check()) == {"f"}) is bad, how


def test_g_on_lost_for_a_lease_never_returned_fails() -> None:
    h = H().start(1)
    h.sig(1, "X", 1.0, "on_lost")
    h.stop(1)
    assert rules(h.check()) == {"g"}
    h = H().start(1)
    h.lease(1, "A", 10, 1.0, 1.01, ttl=5.0, obj=111).release(1, "A", 2.0)
    h.sig(1, "A", 1.005, "on_lost", obj=222)  # another Lease object with the same token
    h.stop(1)
    assert rules(h.check()) == {"g"}


def test_h_an_undocumented_exception_fails() -> None:
    h = H().start(1)
    h.op(1, "acquire", 1.0, 1.1, timeout=1.0, out="err", exc="KeyError", documented=False)
    h.stop(1)
    assert rules(h.check()) == {"h"}
    h = H().start(1).ev(1.0, 1, "unexpected", where="worker", exc="RuntimeError", tb="...")
    assert rules(h.check()) == {"h"}


def test_c_late_signals_are_excused_by_a_stall_of_the_whole_host_only() -> None:
    """A host stall (no heartbeat and no event from anyone for over HOST_STALL s) counts as frozen
    time of every process; a quiet host with a steady heartbeat excuses nothing."""

    def run(stall: bool) -> set[str]:
        h = H().start(1)
        h.lease(1, "A", 10, 1.0, 1.01, ttl=1.0)  # deadline 2.0, signals only at 5.0
        h.all_signals(1, "A", 5.0).release(1, "A", 5.5)
        for i in range(100):
            t = round(0.05 + 0.1 * i, 3)
            if not (stall and 1.9 < t < 4.95):
                h.ev(t, 0, "tick")
        h.stop(1, t=10.0)
        return rules(h.check())

    assert run(stall=False) == {"c"}
    assert run(stall=True) == set()


# -- the coordination primitives: semaphore (i), read-write lock (j, k), election (l) ---------------


def test_i_more_than_limit_permits_believed_valid_together_fail() -> None:
    def run(holders: int) -> list[Violation]:
        h = H().start(1, 2, 3)
        for i in range(holders):
            h.lease(i + 1, f"P{i}", 10 + i, 1.0 + 0.1 * i, 1.01 + 0.1 * i, ttl=3.0, prim="sem", limit=2)
            h.release(i + 1, f"P{i}", 2.5)
        h.stop(1, 2, 3)
        return h.check()

    assert run(2) == []  # two permits of two: fine
    vs = run(3)
    assert rules(vs) == {"i"}
    assert "3 permits believed valid together (limit 2)" in vs[0].message


def test_i_too_many_permits_are_excused_by_data_loss_only() -> None:
    def run(kind: str) -> set[str]:
        h = H().start(1, 2, 3)
        h.lease(1, "P0", 10, 1.0, 1.01, ttl=3.0, prim="sem", limit=2).release(1, "P0", 2.5, out="err", exc="LeaseLost")
        h.lease(2, "P1", 11, 1.1, 1.11, ttl=3.0, prim="sem", limit=2).release(2, "P1", 2.5)
        h.fault(kind, 1.2, 1.3, name="n")
        h.lease(3, "P2", 12, 1.5, 1.51, ttl=3.0, prim="sem", limit=2).release(3, "P2", 2.5)
        h.stop(1, 2, 3)
        return rules(h.check())

    assert "i" not in run("delete_lock")
    assert "i" in run("pause")


def test_i_a_semaphore_waiter_timing_out_with_a_permit_free_fails_liveness() -> None:
    def run(holders: int) -> set[str]:
        h = H().start(1, 2, 3)
        for i in range(holders):
            h.lease(i + 1, f"P{i}", 10 + i, 1.0, 1.01, ttl=30.0, prim="sem", limit=2).release(i + 1, f"P{i}", 9.0)
        h.op(3, "acquire", 1.5, 7.5, timeout=6.0, out="err", exc="LockTimeout", prim="sem", limit=2)
        h.stop(1, 2, 3)
        return rules(h.check())

    assert run(1) == {"d"}  # one permit of two was free all along
    assert run(2) == set()  # both taken: waiting is right


def test_i_semaphore_fifo_a_waiter_passed_and_left_waiting_fails() -> None:
    def run(a_granted_at: float) -> list[Violation]:
        h = H().start(1, 2, 3, 4)
        h.lease(1, "P0", 10, 1.0, 1.01, ttl=30.0, prim="sem", limit=2).release(1, "P0", 20.0)
        h.lease(4, "P1", 11, 1.0, 1.02, ttl=30.0, prim="sem", limit=2).release(4, "P1", 3.0)
        h.lease(2, "A", 13, 1.5, a_granted_at, ttl=30.0, timeout=15.0, prim="sem", limit=2)
        h.release(2, "A", a_granted_at + 0.5)
        h.lease(3, "B", 12, 2.5, 3.02, ttl=30.0, prim="sem", limit=2).release(3, "B", 20.0)
        h.stop(1, 2, 3, 4)
        return h.check()

    vs = run(10.0)  # B, queued after A, got the freed permit; A waited on 7 s more
    assert {v.rule for v in vs} >= {"d"} and any("FIFO broken" in v.message for v in vs)
    assert not any("FIFO" in v.message for v in run(3.03))  # both fit: either order


def test_i_semaphore_fences_are_unique_and_increase_in_grant_order() -> None:
    h = H().start(1, 2)
    h.lease(1, "P0", 10, 1.0, 1.01, ttl=3.0, prim="sem", limit=3).release(1, "P0", 2.0)
    h.lease(2, "P1", 10, 1.2, 1.21, ttl=3.0, prim="sem", limit=3).release(2, "P1", 2.0)
    h.stop(1, 2)
    assert rules(h.check()) == {"b"}  # fence 10 twice
    h = H().start(1, 2)
    h.lease(1, "P0", 10, 1.0, 1.01, ttl=3.0, prim="sem", limit=3).release(1, "P0", 2.0)
    h.lease(2, "P1", 9, 1.2, 1.21, ttl=3.0, prim="sem", limit=3).release(2, "P1", 2.0)
    h.stop(1, 2)
    assert rules(h.check()) == {"b"}  # asked after P0's grant, lower fence


def test_j_a_writer_believed_valid_with_another_holder_fails() -> None:
    def run(first: str, second: str) -> set[str]:
        h = H().start(1, 2)
        h.lease(1, "X", 10, 1.0, 1.01, ttl=3.0, prim=first).release(1, "X", 2.5)
        h.lease(2, "Y", 11, 1.5, 1.51, ttl=3.0, prim=second).release(2, "Y", 3.0)
        h.stop(1, 2)
        return rules(h.check())

    assert run("read", "read") == set()
    assert run("read", "write") == {"j"}
    assert run("write", "read") == {"j"}
    assert run("write", "write") == {"j"}


def test_j_read_write_fences_increase_across_readers_and_writers() -> None:
    h = H().start(1, 2)
    h.lease(1, "R", 10, 1.0, 1.01, ttl=3.0, prim="read").release(1, "R", 2.0)
    h.lease(2, "W", 10, 2.1, 2.11, ttl=3.0, prim="write").release(2, "W", 3.0)
    h.stop(1, 2)
    assert rules(h.check()) == {"b"}


def test_k_a_reader_queued_after_a_waiting_writer_granted_first_fails() -> None:
    def run(second: str, w_granted: float) -> list[Violation]:
        h = H().start(1, 2, 3)
        h.lease(1, "R0", 10, 1.0, 1.01, ttl=30.0, prim="read").release(1, "R0", 3.0)
        h.lease(2, "W", 12, 1.5, w_granted, ttl=30.0, timeout=15.0, prim="write").release(2, "W", w_granted + 0.5)
        h.lease(3, "R1", 11, 2.5, 2.6, ttl=30.0, prim=second).release(3, "R1", 2.9)
        h.stop(1, 2, 3)
        return [v for v in h.check() if v.rule == "k"]

    vs = run("read", 3.05)
    assert len(vs) == 1 and "writer starved" in vs[0].message
    # and a writer may not pass a writer either (plain FIFO)
    vs = run("write", 3.05)
    assert len(vs) == 1 and "FIFO broken" in vs[0].message and "starved" not in vs[0].message


def test_k_readers_that_both_fit_may_be_granted_in_either_order() -> None:
    h = H().start(1, 2, 3)
    h.lease(1, "W", 10, 1.0, 1.01, ttl=30.0, prim="write").release(1, "W", 3.0)
    h.lease(2, "R0", 11, 1.5, 3.05, ttl=30.0, prim="read").release(2, "R0", 4.0)
    h.lease(3, "R1", 12, 2.5, 3.02, ttl=30.0, prim="read").release(3, "R1", 4.0)
    h.stop(1, 2, 3)
    assert h.check() == []


def test_l_two_leaders_believed_valid_together_fail() -> None:
    h = H().start(1, 2)
    h.lease(1, "L1", 10, 1.0, 1.01, ttl=2.0, prim="elect").release(1, "L1", 2.5)
    h.lease(2, "L2", 11, 1.5, 1.6, ttl=2.0, prim="elect").release(2, "L2", 3.0)
    h.stop(1, 2)
    vs = h.check()
    assert rules(vs) == {"l"} and "two leaders" in vs[0].message


def test_l_terms_reported_by_leader_never_go_down() -> None:
    def run(second: int, fault: str | None = None) -> set[str]:
        h = H().start(1, 2, 3)
        h.lease(1, "L1", 10, 1.0, 1.01, ttl=2.0, prim="elect").release(1, "L1", 1.5)
        h.op(3, "leader", 1.1, 1.12, term=10, prim="elect")
        h.lease(2, "L2", 11, 1.6, 1.61, ttl=2.0, prim="elect").release(2, "L2", 2.5)
        h.op(3, "leader", 1.7, 1.72, term=second, prim="elect")
        if fault is not None:
            h.fault(fault, 1.65, 1.66)
        h.stop(1, 2, 3)
        return rules(h.check())

    assert run(11) == set()
    assert run(10) == {"l"}  # after campaign returned term 11
    assert run(9) == {"l"}
    assert run(9, "restart_empty") == set()  # the server forgot the terms


def test_l_a_valid_leader_asking_leader_must_be_named() -> None:
    def run(term: int | None, at: float, fault: str | None = None) -> list[Violation]:
        h = H().start(1)
        h.lease(1, "L1", 10, 1.0, 1.01, ttl=2.0, prim="elect").release(1, "L1", 2.5)
        h.op(1, "leader", at, at + 0.02, token="L1", term=term, prim="elect")
        if fault is not None:
            h.fault(fault, 1.1, 1.2, name="n")
        h.stop(1)
        return [v for v in h.check() if v.rule == "l"]

    assert run(10, 1.5) == []
    assert len(run(None, 1.5)) == 1 and "reported nobody" in run(None, 1.5)[0].message
    assert {v.detail.get("sub") for v in run(9, 1.5)} == {"self", None}  # also: below the term campaign returned
    assert run(None, 2.6) == []  # after its release: anything goes
    assert run(None, 1.5, "delete_lock") == []  # the server forgot it


def test_l_a_leader_whose_lease_ran_out_gets_every_loss_signal() -> None:
    h = H().start(1)
    h.lease(1, "L1", 10, 1.0, 1.01, ttl=1.0, prim="elect")  # deadline 2.0, never renewed, never released
    h.stop(1, t=10.0)
    vs = h.check()
    assert rules(vs) == {"c"} and {v.detail["signal"] for v in vs} == {"on_lost", "event", "reason"}
    h = H().start(1)
    h.lease(1, "L1", 10, 1.0, 1.01, ttl=1.0, prim="elect").all_signals(1, "L1", 2.05)
    h.stop(1, t=10.0)
    assert h.check() == []


def test_l_election_terms_strictly_increase_in_grant_order() -> None:
    h = H().start(1, 2)
    h.lease(1, "L1", 10, 1.0, 1.01, ttl=1.0, prim="elect").release(1, "L1", 1.5)
    h.lease(2, "L2", 10, 1.6, 1.61, ttl=1.0, prim="elect").release(2, "L2", 2.0)
    h.stop(1, 2)
    assert rules(h.check()) == {"b"}


def test_history_survives_a_torn_last_line(tmp_path: Any) -> None:
    rec = Recorder(tmp_path / "w.jsonl")
    rec.emit("start", worker=1)
    rec.emit("stop")
    rec.close()
    with open(tmp_path / "w.jsonl", "a") as f:
        f.write('{"t": 3.0, "pid": 1, "ev": "ca')  # SIGKILL mid-line
    events = load_dir(tmp_path)
    assert [e["ev"] for e in events] == ["start", "stop"]


@pytest.mark.parametrize("rule", ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"])
def test_every_rule_is_covered_by_a_failing_history(rule: str) -> None:
    """Guard: a rule without a test that makes it fire could be dead code."""
    import inspect
    import sys

    src = inspect.getsource(sys.modules[__name__])
    assert f"def test_{rule}_" in src


# -- property-based: random correct histories pass, one injected defect is always seen ---------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_lease_plan = st.lists(
    st.tuples(
        st.floats(0.01, 2.0),  # gap before the acquire call
        st.floats(0.001, 0.2),  # acquire's latency
        st.floats(0.05, 1.0),  # time held (less than the TTL below)
        st.integers(1, 3),  # process
        st.booleans(),  # sync or async
    ),
    min_size=2,
    max_size=12,
)


def _sequential(plan: list[tuple[float, float, float, int, bool]]) -> tuple[H, list[tuple[str, float, float]]]:
    """Leases of one name one after another, each released before the next is asked for."""
    h = H().start(1, 2, 3)
    t, fence, spans = 1.0, 100, []
    for i, (gap, latency, held, pid, is_async) in enumerate(plan):
        t += gap
        token = f"T{i}"
        fence += 1 + i
        h.lease(pid, token, fence, t, t + latency, ttl=2.0, api="async" if is_async else "sync")
        h.ev(t + latency + held / 2, pid, "held", t0=t + latency + held / 2, token=token, how="ensure")
        h.release(pid, token, t + latency + held)
        spans.append((token, t + latency, t + latency + held))
        t += latency + held + 0.02
    h.stop(1, 2, 3, t=t + 10)
    return h, spans


@settings(max_examples=150, deadline=None, database=None)  # no .hypothesis/ in the tree
@given(_lease_plan)
def test_property_sequential_leases_pass(plan: list[tuple[float, float, float, int, bool]]) -> None:
    h, _ = _sequential(plan)
    assert h.check() == []


@settings(max_examples=150, deadline=None, database=None)  # no .hypothesis/ in the tree
@given(_lease_plan, st.data())
def test_property_a_lease_granted_inside_another_is_always_seen(
    plan: list[tuple[float, float, float, int, bool]], data: st.DataObject
) -> None:
    h, spans = _sequential(plan)
    _, s, e = spans[data.draw(st.integers(0, len(spans) - 1))]
    at = data.draw(st.floats(s + 0.01, max(s + 0.011, e - 0.01))) if e - s > 0.03 else s + 0.01
    if at >= e - 0.002:
        return
    h.lease(9, "intruder", 10**6, at - 0.001, at, ttl=2.0)
    h.release(9, "intruder", e + 0.01)
    h.start(9)
    assert "a" in rules(h.check())


@settings(max_examples=150, deadline=None, database=None)  # no .hypothesis/ in the tree
@given(_lease_plan, st.data())
def test_property_a_fence_that_goes_down_is_always_seen(
    plan: list[tuple[float, float, float, int, bool]], data: st.DataObject
) -> None:
    h, spans = _sequential(plan)
    i = data.draw(st.integers(1, len(spans) - 1))
    for e in h.events:  # give lease i a fence no higher than lease i-1's
        if e["ev"] == "ret" and e.get("token") == spans[i][0]:
            e["fence"] = 100 + sum(range(1, i + 1))
    assert "b" in rules(h.check())
