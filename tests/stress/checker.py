"""Properties of a stress run, checked over its history (pure functions: no server, no I/O).

``check(events, bounds)`` returns the violations; ``build(events)`` is the model it checks (leases,
calls, processes, faults), also used by the run's summary. Every rule is stated on the history alone,
never on how fencelock is built, so a rule catches a whole class of defects, not one bug.

Times are CLOCK_MONOTONIC seconds, shared by every process of the host. A process stopped with
SIGSTOP cannot act, so every "within a bound" rule adds the time that process was frozen inside the
window. Evidence a SIGKILL cut short (an event never written) only removes checks: every rule is
written so that a missing or late-written event makes it *less* likely to fire, never more (e.g. a
grant is stamped after acquire returned, so a late stamp can only shrink the believed interval).

Rules (letters as in the run's report):
  a   two leases of one name are never both believed valid at overlapping moments. Believed valid:
      from acquire's return until the earliest of the client deadline (walking every deadline
      update; an update that arrives after the deadline it replaces does not revive the lease),
      the first loss signal, the release call, the holder's death. Overlaps are allowed when data
      was lost on the server (restart without persistence or from an older snapshot, the lock
      deleted or expired under its holder) between the first of the two acquire calls and the
      second grant.
  a'  accepted fenced writes of one resource, in the storage's commit order, never go down in fence.
  b   if lease A's acquire returned before lease B's acquire was called (same name), A.fence <
      B.fence; no two leases of one name share a fence.
  c   a lease that stopped being held before its release (its deadline passed while it was held,
      a server refused an extend or the release, or a loss was signalled) gets every signal within
      ``bounds.signal``: the on_lost callback, lost_event, the lost reason; ensure_held()/lost never
      say "held" after that; a ``with`` block left after it raises LeaseLost; with cancel_on_loss the
      critical section ends (cancelled or LeaseLost) within the bound.
  d   liveness: a blocking acquire does not time out while the lock was free, with no fault near,
      for ``bounds.liveness`` seconds of its wait; FIFO (backends that promise it): in a fault-free
      stretch a waiter is not passed by one that called acquire ``bounds.fifo_margin`` s later.
  e   every call returns within its timeout (acquire) plus ``bounds.call_slack(op)``.
  f   a task we cancelled ends cancelled (CancelledError), never with a normal return, LockTimeout
      or LeaseLost.
  g   on_lost fires only for leases that acquire returned to the caller.
  h   only documented errors (fencelock's, CancelledError) leave fencelock calls.

The coordination primitives (their calls carry ``prim``: sem, read, write, elect; and ``limit``)
are judged by the same rules (b: fences unique and increasing in grant order for every grant of a
name, reader or writer, permit or term; c: every loss signalled; d: liveness, FIFO; e to h), rule a
replaced by the primitive's own exclusion, and rules of their own:
  i   semaphore: at most ``limit`` leases of one name believed valid at once (excused by data loss,
      as a is); liveness (d) counts a permit free while fewer than ``limit`` contenders may hold.
  j   read-write lock: a writer is never believed valid together with any other holder (reader or
      writer) of its name.
  k   read-write lock, writers not starved and FIFO: in a fault-free stretch a reader that called
      acquire after a writer began waiting is not granted while that writer still waits, and a
      writer is not granted before a waiter that came before it. Two readers (or two permits of a
      semaphore, rule d) that both fit may be granted in either order: only a waiter passed and
      then kept waiting ``bounds.liveness`` s more counts.
  l   election: at most one leader of a name believed valid at any instant (as a); ``leader()``
      never reports a lower term than a ``leader()`` answer that returned before it was called, or
      a term below one a ``campaign`` had returned before it was called (terms only go up), and
      asked by a leader that believed itself valid all through the call it names that leader's
      term; unless the server lost data in between.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .history import Event

__all__ = [
    "CONNECTIVITY_FAULTS",
    "DATA_LOSS_FAULTS",
    "Bounds",
    "Model",
    "Violation",
    "build",
    "check",
]

DATA_LOSS_FAULTS = frozenset({"restart_empty", "restart_snapshot", "delete_lock", "expire_lock"})
"""Faults after which two leases may overlap (the server forgot or dropped the holder's lock)."""

NAMED_FAULTS = frozenset({"delete_lock", "expire_lock"})
"""Of those, the ones that touch one lock name (``name``); the others touch the whole server."""

CONNECTIVITY_FAULTS = frozenset({"pause", "cut", "delay", "stall", "restart_empty", "restart_snapshot"})
"""Faults that slow or stop requests; no liveness or FIFO promise holds near them."""

PROCESS_FAULTS = frozenset({"sigstop", "sigkill", "sigterm", "crowd"})

HOST_STALL = 1.0
"""A gap this long between the run's heartbeats (``tick``, every 0.1 s from the test process) in
which no process recorded anything at all is a stall of the whole host (a machine shared with
other work, 2 cores): every process counts as frozen in it, as under SIGSTOP."""

LOSS_KINDS = ("on_lost", "event", "reason")
"""Signals every lost lease must get, whoever noticed the loss first."""

ACQUIRE_OPS = ("acquire", "try_acquire", "with")


@dataclass(frozen=True)
class Bounds:
    """How long the checker waits for things, per backend (seconds). The run states them."""

    request: float = 5.0
    """Longest single request to the lock server (socket/session/busy timeout of the backend)."""
    slack: float = 2.0
    """Scheduling slack on a loaded 2-core machine, added to every bound below."""
    signal: float = 1.0
    """From a lease's loss to each of its signals (a timer or renewer round on the client)."""
    liveness: float = 3.0
    """Longest a free lock keeps a live waiter waiting (wake-up and one poll, generously)."""
    settle: float = 6.0
    """After a connectivity or server fault ends, how long before liveness is promised again."""
    dead_hold: float = 2.0
    """A waiter that died (or froze) may still be handed the lock this long after, plus its TTL
    (Redis: its registration window; ZooKeeper: the session timeout)."""
    fifo: bool = True
    fifo_margin: float = 0.3
    """A later waiter must have called acquire this much later to count as "behind" (its request
    may reach the server later than its record says)."""

    def call_slack(self, op: str) -> float:
        # acquire: the request in flight at the timeout, then the cleanup request (abandon)
        if op in ("acquire", "with"):
            return 2 * self.request + self.slack
        return self.request + self.slack


@dataclass
class Violation:
    rule: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"({self.rule}) {self.message}"


@dataclass
class Call:
    pid: int
    cid: str
    op: str
    name: str
    api: str
    t0: float
    timeout: float | None = None
    token: str | None = None
    actor: str = ""
    task: str | None = None
    ttl: float | None = None
    prim: str = "lock"
    """lock, sem, read, write or elect (the primitive the call was made on)."""
    limit: int = 1
    t1: float | None = None
    out: str | None = None
    exc: str | None = None
    msg: str = ""
    documented: bool = True
    tb: str = ""
    term: int | None = None
    """leader(): the term it reported (None: nobody leads, or not a leader() call)."""


@dataclass
class Lease:
    pid: int
    token: str
    name: str
    fence: int
    api: str
    op: str
    t_req: float
    t_ok: float
    ttl: float
    renew: Any
    col: bool
    obj: int | None = None
    cid: str = ""
    """id() of the Lease object returned (the library may make another with the same token)."""
    deadlines: list[tuple[float, float]] = field(default_factory=list)
    rel_call: float | None = None
    rel_end: float | None = None
    rel_out: str | None = None
    signals: dict[str, float] = field(default_factory=dict)
    held: list[tuple[float, float, str]] = field(default_factory=list)
    sect_end: tuple[float, str] | None = None
    with_exit: Call | None = None
    inject: list[str] = field(default_factory=list)
    """Client faults injected into the holder's process (shown with every violation of it)."""
    prim: str = "lock"
    limit: int = 1

    def deadline_at(self, t: float) -> float:
        """The lease's deadline as last set at or before ``t`` (the library's own value)."""
        d = self.deadlines[0][1] if self.deadlines else self.t_ok
        for tu, value in self.deadlines:
            if tu > t:
                break
            d = value
        return d

    def expiry(self) -> float:
        """When the lease's client deadline ran out, walking its updates: an update that arrives
        after the deadline it would replace comes too late (the lease had already ended)."""
        if not self.deadlines:
            return self.t_ok
        cur = self.deadlines[0][1]
        for tu, value in self.deadlines[1:]:
            if tu >= cur:
                break
            cur = value
        return cur


@dataclass
class Proc:
    pid: int
    start: float
    end: float
    died: float | None = None
    frozen: list[tuple[float, float]] = field(default_factory=list)
    worker: int | None = None
    inject: list[str] = field(default_factory=list)

    def frozen_in(self, a: float, b: float) -> float:
        return sum(max(0.0, min(b, f1) - max(a, f0)) for f0, f1 in self.frozen)

    def alive_through(self, t: float) -> bool:
        return t <= self.end


@dataclass
class Fault:
    kind: str
    t0: float
    t1: float
    target: int | None = None
    name: str | None = None
    detail: Any = None


@dataclass
class Model:
    leases: dict[tuple[int, str], Lease] = field(default_factory=dict)
    calls: dict[tuple[int, str], Call] = field(default_factory=dict)
    procs: dict[int, Proc] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    writes: list[Event] = field(default_factory=list)
    db_writes: list[Event] = field(default_factory=list)
    cancels: dict[tuple[int, str], Event] = field(default_factory=dict)
    task_ends: dict[tuple[int, str], Event] = field(default_factory=dict)
    on_lost: list[Event] = field(default_factory=list)
    on_lost_foreign: list[Event] = field(default_factory=list)
    """on_lost calls for a Lease object other than the one acquire returned with that token."""
    unexpected: list[Event] = field(default_factory=list)
    stalls: list[tuple[float, float]] = field(default_factory=list)
    """Host stalls (see ``HOST_STALL``): counted as frozen time of every process."""
    end: float = 0.0

    def proc(self, pid: int) -> Proc:
        p = self.procs.get(pid)
        if p is None:
            p = self.procs[pid] = Proc(pid, math.inf, -math.inf)
        return p


def build(events: Iterable[Event]) -> Model:
    """The run's model, from events in any order."""
    m = Model()
    evs = sorted(events, key=lambda e: e["t"])
    dls: dict[tuple[int, str], list[tuple[float, float, Any]]] = defaultdict(list)
    sigs: list[Event] = []
    helds: list[Event] = []
    sect: list[Event] = []
    for e in evs:
        kind = e["ev"]
        m.end = max(m.end, e["t"])
        if kind == "fault":
            m.faults.append(
                Fault(e["kind"], e.get("t0", e["t"]), e.get("t1", e["t"]), e.get("target"), e.get("name"),
                      e.get("detail"))
            )
            continue
        if kind == "dbwrite":
            m.db_writes.append(e)
            continue
        if kind == "tick":
            continue
        pid = e["pid"]
        p = m.proc(pid)
        p.start = min(p.start, e["t"])
        p.end = max(p.end, e["t"])
        if kind == "start":
            p.worker = e.get("worker")
            p.inject = list(e.get("inject") or [])
        elif kind == "call":
            m.calls[(pid, e["cid"])] = Call(
                pid, e["cid"], e["op"], e.get("name", ""), e.get("api", ""), e["t"], e.get("timeout"),
                e.get("token"), e.get("actor", ""), e.get("task"), e.get("ttl"), e.get("prim") or "lock",
                int(e.get("limit") or 1),
            )
        elif kind == "ret":
            c = m.calls.get((pid, e["cid"]))
            if c is None:
                continue
            c.t1, c.out, c.exc, c.msg = e["t"], e["out"], e.get("exc"), e.get("msg", "")
            c.documented, c.tb = e.get("documented", True), e.get("tb", "")
            if e.get("term") is not None:
                c.term = int(e["term"])
            if c.out == "ok" and c.op in ACQUIRE_OPS and e.get("token"):
                m.leases[(pid, e["token"])] = Lease(
                    pid, e["token"], c.name, int(e["fence"]), c.api, c.op, c.t0, e["t"],
                    float(e.get("ttl") or 0), e.get("renew"), bool(e.get("col")), e.get("obj"), c.cid,
                    prim=c.prim, limit=c.limit,
                )
        elif kind == "dl":
            dls[(pid, e["token"])].append((e["t"], float(e["deadline"]), e.get("obj")))
        elif kind == "sig":
            sigs.append(e)
        elif kind == "held":
            helds.append(e)
        elif kind == "sect_end":
            sect.append(e)
        elif kind == "write":
            m.writes.append(e)
        elif kind == "cancel":
            m.cancels[(pid, e["task"])] = e
        elif kind == "task_end":
            m.task_ends[(pid, e["task"])] = e
        elif kind == "unexpected":
            m.unexpected.append(e)
    for f in m.faults:
        if f.target is None:
            continue
        p = m.proc(f.target)
        if f.kind == "sigstop":
            p.frozen.append((f.t0, f.t1))
        elif f.kind in ("sigkill", "sigterm", "crowd"):
            p.died = f.t1 if f.kind == "crowd" else f.t0
            p.end = min(max(p.end, p.start), p.died) if p.start != math.inf else p.died
    m.stalls = host_stalls(evs)
    for p in m.procs.values():
        p.frozen += m.stalls
    for key, lease in m.leases.items():
        lease.inject = m.proc(lease.pid).inject
        lease.deadlines = sorted(
            (d[0], d[1]) for d in dls.get(key, []) if d[0] >= lease.t_req - 1e-6 and _same(lease, d[2])
        )
    for c in m.calls.values():
        if c.token is None:
            continue
        lease = m.leases.get((c.pid, c.token))
        if lease is None:
            continue
        c.prim, c.limit = lease.prim, lease.limit  # a lease's own calls (extend, release) are on its primitive
        if c.op in ("release", "with_exit") and lease.rel_call is None:
            lease.rel_call, lease.rel_end = c.t0, c.t1
            lease.rel_out = c.exc if c.out == "err" else c.out
            if c.op == "with_exit":
                lease.with_exit = c
    for e in sigs:
        lease = m.leases.get((e["pid"], e["token"]))
        if lease is not None and not _same(lease, e.get("obj")):
            lease = None  # a signal of another Lease object with the same token
            if e["kind"] == "on_lost":
                m.on_lost_foreign.append(e)
        elif e["kind"] == "on_lost":
            m.on_lost.append(e)
        if lease is not None:
            lease.signals.setdefault(e["kind"], e["t"])
    for e in helds:
        lease = m.leases.get((e["pid"], e["token"]))
        if lease is not None:
            lease.held.append((e.get("t0", e["t"]), e["t"], e.get("how", "")))
    for e in sect:
        lease = m.leases.get((e["pid"], e["token"]))
        if lease is not None and lease.sect_end is None:
            lease.sect_end = (e["t"], e.get("how", ""))
    return m


# -- helpers ---------------------------------------------------------------------------------------


def host_stalls(evs: list[Event]) -> list[tuple[float, float]]:
    """Stretches longer than ``HOST_STALL`` in which neither the heartbeat nor any process recorded
    anything (``evs`` sorted by time). Without heartbeats in the history (a hand-made one), none."""
    ticks = [e["t"] for e in evs if e["ev"] == "tick"]
    if len(ticks) < 2:
        return []
    times = [e["t"] for e in evs if e["ev"] != "dbwrite"]
    out: list[tuple[float, float]] = []
    for a, b in itertools.pairwise(ticks):
        if b - a <= HOST_STALL:
            continue
        points = [a, *times[bisect.bisect_right(times, a):bisect.bisect_left(times, b)], b]
        out += [(x, y) for x, y in itertools.pairwise(points) if y - x > HOST_STALL]
    return out


def _same(lease: Lease, obj: Any) -> bool:
    return obj is None or lease.obj is None or obj == lease.obj


def _first_signal(lease: Lease) -> float | None:
    kinds = ("on_lost", "event", "reason", "extend", "release", "ensure", "flag")
    ts = [lease.signals[k] for k in kinds if k in lease.signals]
    return min(ts) if ts else None


def believed(lease: Lease, m: Model) -> tuple[float, float]:
    """[start, end) during which the holder had every reason to believe it held the lock."""
    end = lease.expiry()
    first = _first_signal(lease)
    if first is not None:
        end = min(end, first)
    if lease.rel_call is not None:
        end = min(end, lease.rel_call)
    died = m.procs[lease.pid].died if lease.pid in m.procs else None
    if died is not None:
        end = min(end, died)
    return lease.t_ok, max(lease.t_ok, end)


def _key_since(lease: Lease, m: Model) -> float:
    """Earliest moment the lease's key can have existed on the server: when the request that won
    it was sent (its first deadline minus its TTL; the library measures from then). A waiter that
    was frozen while it waited may have been handed the lock earlier: then since its acquire call."""
    proc = m.procs.get(lease.pid)
    if not lease.deadlines or (proc is not None and proc.frozen_in(lease.t_req, lease.t_ok) > 0):
        return lease.t_req
    return min(lease.t_ok, lease.deadlines[0][1] - lease.ttl)


def _data_loss(m: Model, name: str, a: float, b: float) -> Fault | None:
    for f in m.faults:
        if f.kind in DATA_LOSS_FAULTS and (f.kind not in NAMED_FAULTS or f.name == name) and f.t0 <= b and f.t1 >= a:
            return f
    return None


def _short(token: str) -> str:
    return token[:8]


def _where(lease: Lease) -> str:
    what = "" if lease.prim == "lock" else f"{lease.prim} "
    where = f"pid {lease.pid} {lease.api} {what}{lease.op} fence {lease.fence} token {_short(lease.token)}"
    return where + (f" in a process with injected {'+'.join(lease.inject)}" if lease.inject else "")


# -- rules -----------------------------------------------------------------------------------------


OVERLAP_RULE = {"lock": "a", "elect": "l", "sem": "i", "read": "j", "write": "j"}
"""The rule that judges leases of one name believed valid together, by the name's primitive."""


def _conflicts(lease: Lease, active: list[tuple[float, float, Lease]]) -> list[tuple[float, float, Lease]]:
    """Of the leases believed valid when ``lease`` began to be, those it may not coexist with; for
    a semaphore all of them once there are ``limit`` (the first ``limit`` of them are not wrong alone)."""
    if lease.prim == "sem":
        return active if len(active) >= max(1, lease.limit) else []
    if lease.prim in ("read", "write"):
        return [x for x in active if lease.prim == "write" or x[2].prim == "write"]
    return active


def check_overlap(m: Model) -> list[Violation]:
    """a (mutex), l (election), i (semaphore: more than ``limit``), j (read-write: a writer and
    another holder): leases believed valid together beyond what the primitive allows."""
    out: list[Violation] = []
    by_name: dict[str, list[tuple[float, float, Lease]]] = defaultdict(list)
    for lease in m.leases.values():
        s, e = believed(lease, m)
        if e > s:
            by_name[lease.name].append((s, e, lease))
    for name, items in by_name.items():
        items.sort(key=lambda x: x[0])
        active: list[tuple[float, float, Lease]] = []
        for s, e, lease in items:
            active = [x for x in active if x[1] > s]
            conflicts = _conflicts(lease, active)
            rule = OVERLAP_RULE.get(lease.prim, "a")
            if lease.prim == "sem" and conflicts:
                # too many from s until all but ``limit`` of them have ended: the (limit+1)-th latest end
                ends = sorted([e] + [x[1] for x in conflicts], reverse=True)
                overlap = ends[max(1, lease.limit)] - s
                if overlap > 1e-3 and _data_loss(
                    m, name, min(_key_since(x[2], m) for x in [*conflicts, (s, e, lease)]), s
                ) is None:
                    held = ", ".join(f"[{_where(x[2])}] {x[0]:.3f}..{x[1]:.3f}" for x in conflicts)
                    out.append(
                        Violation(
                            rule,
                            f"{name}: {len(conflicts) + 1} permits believed valid together (limit {lease.limit}) for "
                            f"{overlap:.3f} s: {held}, and [{_where(lease)}] from {s:.3f}",
                            {"name": name, "second": lease.token, "at": s, "overlap": overlap,
                             "holders": [x[2].token for x in conflicts]},
                        )
                    )
                active.append((s, e, lease))
                continue
            for s0, e0, other in conflicts:
                overlap = min(e, e0) - s
                if overlap <= 1e-3:
                    continue
                # excused when the server lost data after either lease's key could exist and
                # before the second grant (a lock deleted under its holder, or just after it was
                # handed to a waiter that had not heard of it yet)
                if _data_loss(m, name, min(_key_since(other, m), _key_since(lease, m)), s) is not None:
                    continue
                what = {"l": "two leaders", "j": "a writer and another holder"}.get(rule, "two leases")
                out.append(
                    Violation(
                        rule,
                        f"{name}: {what} believed valid together for {overlap:.3f} s: "
                        f"[{_where(other)}] held {s0:.3f}..{e0:.3f}, [{_where(lease)}] from {s:.3f}",
                        {"name": name, "first": other.token, "second": lease.token, "at": s, "overlap": overlap},
                    )
                )
            active.append((s, e, lease))
    return out


def check_terms(m: Model) -> list[Violation]:
    """l: what ``leader()`` reports never goes back to a lower term than one already known when it
    was called (an earlier ``leader()`` answer, or a term ``campaign`` returned), unless the server
    lost data between the two."""
    out: list[Violation] = []
    known: dict[str, list[tuple[float, int, str]]] = defaultdict(list)  # name -> (known from, term, how)
    for lease in m.leases.values():
        if lease.prim == "elect":
            known[lease.name].append((lease.t_ok, lease.fence, f"[{_where(lease)}] campaign returned"))
    looks = [c for c in m.calls.values() if c.op == "leader" and c.t1 is not None and c.out == "ok"]
    for c in looks:
        if c.term is not None:
            assert c.t1 is not None
            known[c.name].append((c.t1, c.term, f"pid {c.pid} leader() returned"))
    for c in sorted(looks, key=lambda c: c.t0):
        asker = m.leases.get((c.pid, c.token)) if c.token else None
        if asker is not None and c.term != asker.fence:
            # asked by a leader that believed itself valid all through the call: the server must
            # name that leader (its key outlives the holder's belief)
            s, e = believed(asker, m)
            assert c.t1 is not None
            if s <= c.t0 and c.t1 <= e and _data_loss(m, c.name, _key_since(asker, m), c.t1) is None:
                out.append(
                    Violation(
                        "l",
                        f"{c.name}: [{_where(asker)}] believed it led from {s:.3f} to {e:.3f}, but its leader() "
                        f"call {c.t0:.3f}..{c.t1:.3f} reported " + ("nobody" if c.term is None else f"term {c.term}"),
                        {"name": c.name, "cid": c.cid, "term": c.term, "own": asker.fence, "sub": "self"},
                    )
                )
        if c.term is None:
            continue
        before = [k for k in known.get(c.name, []) if k[0] < c.t0 and k[1] > c.term]
        if not before:
            continue
        t, term, how = max(before, key=lambda k: k[1])
        if _data_loss(m, c.name, t - 0.5, c.t1 or c.t0) is not None:
            continue
        out.append(
            Violation(
                "l",
                f"{c.name}: pid {c.pid} {c.api} leader() called at {c.t0:.3f} reported term {c.term}, but {how} "
                f"term {term} at {t:.3f}: the term went down",
                {"name": c.name, "cid": c.cid, "term": c.term, "known": term},
            )
        )
    return out


def check_write_order(m: Model) -> list[Violation]:
    """a': in commit order (the fence database's own sequence), fences of one resource never drop."""
    out: list[Violation] = []
    top: dict[str, tuple[int, Any]] = {}
    for w in sorted(m.db_writes, key=lambda w: w["seq"]):
        res, fence = w["resource"], int(w["fence"])
        if res in top and fence < top[res][0]:
            out.append(
                Violation(
                    "a'",
                    f"{res}: write with fence {fence} (token {_short(str(w.get('token')))}) committed after one "
                    f"with fence {top[res][0]} (seq {top[res][1]})",
                    {"resource": res, "seq": w["seq"], "fence": fence, "after": top[res][0]},
                )
            )
        if res not in top or fence > top[res][0]:
            top[res] = (fence, w["seq"])
    return out


def check_fences(m: Model) -> list[Violation]:
    out: list[Violation] = []
    by_name: dict[str, list[Lease]] = defaultdict(list)
    for lease in m.leases.values():
        by_name[lease.name].append(lease)
    for name, leases in by_name.items():
        seen: dict[int, Lease] = {}
        for lease in leases:
            other = seen.get(lease.fence)
            if other is not None and other.token != lease.token:
                out.append(
                    Violation("b", f"{name}: fence {lease.fence} issued twice: [{_where(other)}] and [{_where(lease)}]",
                              {"name": name, "fence": lease.fence})
                )
            seen[lease.fence] = lease
        by_ok = sorted(leases, key=lambda x: x.t_ok)
        oks = [x.t_ok for x in by_ok]
        best: list[Lease] = []  # best[i]: the lease with the highest fence among by_ok[: i + 1]
        for lease in by_ok:
            best.append(lease if not best or lease.fence > best[-1].fence else best[-1])
        for lease in leases:
            i = bisect.bisect_left(oks, lease.t_req) - 1
            if i < 0:
                continue
            prior = best[i]
            if prior.fence >= lease.fence and prior.token != lease.token:
                out.append(
                    Violation(
                        "b",
                        f"{name}: fence went down: [{_where(prior)}] was granted at {prior.t_ok:.3f}, before "
                        f"[{_where(lease)}] called acquire at {lease.t_req:.3f}",
                        {"name": name, "earlier": prior.fence, "later": lease.fence},
                    )
                )
    return out


def loss_time(lease: Lease, m: Model, bounds: Bounds) -> tuple[float, str] | None:
    """When the lease stopped being held before its release, and how; None if it did not."""
    cands: list[tuple[float, str]] = []
    exp = lease.expiry()
    if lease.rel_call is None or lease.rel_call > exp:
        cands.append((exp, "deadline passed while held"))
    for kind in ("extend", "release"):
        if kind in lease.signals:
            cands.append((lease.signals[kind], f"server refused {kind}"))
    for kind in ("on_lost", "event", "reason"):
        if kind in lease.signals and (lease.rel_call is None or lease.signals[kind] <= lease.rel_call):
            cands.append((lease.signals[kind], f"signalled ({kind})"))
    if not cands:
        return None
    return min(cands)


def check_signals(m: Model, bounds: Bounds) -> list[Violation]:
    out: list[Violation] = []
    for lease in m.leases.values():
        proc = m.procs.get(lease.pid)
        if proc is None:
            continue
        lt = loss_time(lease, m, bounds)
        first = _first_signal(lease)
        if lease.deadlines and lease.deadlines[-1][0] <= lease.t_ok:
            # dead on arrival: acquire returned a lease whose deadline had already passed (its
            # request outlived the TTL); the caller never had a valid moment
            dl = lease.deadline_at(lease.t_ok)
            if dl < lease.t_ok - 0.05 and not proc.frozen_in(lease.t_req, lease.t_ok):
                out.append(
                    Violation(
                        "c",
                        f"{lease.name}: [{_where(lease)}] acquire returned at {lease.t_ok:.3f} a lease already "
                        f"{lease.t_ok - dl:.3f} s past its deadline (asked at {lease.t_req:.3f})",
                        {"token": lease.token, "signal": "doa"},
                    )
                )
        if lt is not None:
            when, why = lt
            due = when + bounds.signal + bounds.slack + proc.frozen_in(when, when + bounds.signal + bounds.slack + 60)
            # a holder that let go right after the loss (or right after a dead-on-arrival grant)
            # gave the library no time to tell it: only the release's own answer counts then
            since = max(when, lease.t_ok)
            gave_time = (
                lease.rel_call is None
                or lease.rel_call - proc.frozen_in(since, lease.rel_call) > since + bounds.signal
                or why == "server refused release"  # the release found the loss: it must signal it
            )
            if proc.end >= due and gave_time:
                for kind in LOSS_KINDS:
                    got = lease.signals.get(kind)
                    if kind == "on_lost" and why == "server refused release" and got is None:
                        # the release itself raised LeaseLost to the caller; reported apart
                        out.append(Violation("c", f"{lease.name}: [{_where(lease)}] release was refused (lost at "
                                             f"{when:.3f}) but on_lost never fired", {"token": lease.token,
                                             "sub": "release-refused-no-on_lost"}))
                        continue
                    if got is None or got > due:
                        late = "never" if got is None else f"only {got - when:.3f} s later"
                        out.append(
                            Violation(
                                "c",
                                f"{lease.name}: [{_where(lease)}] lost at {when:.3f} ({why}); signal {kind} {late}",
                                {"token": lease.token, "signal": kind, "lost_at": when, "why": why},
                            )
                        )
                # cancel_on_loss: the critical section must stop
                section_open = lease.sect_end is None or lease.sect_end[0] > when
                if lease.col and lease.api == "async" and section_open:
                    se = lease.sect_end
                    if se is None or se[0] > due:
                        how = "never ended" if se is None else f"ended {se[1]} {se[0] - when:.3f} s later"
                        out.append(
                            Violation(
                                "c",
                                f"{lease.name}: [{_where(lease)}] has cancel_on_loss, lost at {when:.3f} ({why}); "
                                f"its critical section {how}",
                                {"token": lease.token, "signal": "cancel", "lost_at": when},
                            )
                        )
                # a with block left after the loss must raise LeaseLost
                w = lease.with_exit
                if w is not None and w.t1 is not None and w.t0 > due and w.out == "ok":
                    out.append(
                        Violation(
                            "c",
                            f"{lease.name}: [{_where(lease)}] lost at {when:.3f} ({why}); its with block was left at "
                            f"{w.t0:.3f} with {w.exc or 'no error'}, not LeaseLost",
                            {"token": lease.token, "signal": "with_exit"},
                        )
                    )
        # cancel_on_loss is the library's own cancellation: `async with` turns it into LeaseLost,
        # so a block that nobody else cancelled never ends with CancelledError
        w = lease.with_exit
        if lease.col and w is not None and w.exc == "CancelledError" and not _user_cancelled(m, lease.pid, w.task):
            out.append(
                Violation(
                    "c",
                    f"{lease.name}: [{_where(lease)}] cancel_on_loss: the with block's exit at {w.t0:.3f} raised "
                    "CancelledError although only fencelock cancelled the task (documented: LeaseLost)",
                    {"token": lease.token, "signal": "with_exit_cancelled"},
                )
            )
        # the library never says "held" after its own deadline or after it signalled the loss
        for t0, t1, how in lease.held:
            if lease.rel_call is not None and t0 >= lease.rel_call:
                continue
            dl = lease.deadline_at(t1)
            if t0 > dl + 1e-3:
                out.append(
                    Violation("c", f"{lease.name}: [{_where(lease)}] {how} said held at {t0:.3f}, after its deadline "
                              f"{dl:.3f}", {"token": lease.token, "signal": how})
                )
                break
            if first is not None and t0 > first + 1e-3:
                out.append(
                    Violation("c", f"{lease.name}: [{_where(lease)}] {how} said held at {t0:.3f}, after a loss was "
                              f"signalled at {first:.3f}", {"token": lease.token, "signal": how})
                )
                break
    return out


def _user_cancelled(m: Model, pid: int, task: str | None) -> bool:
    if task is None:
        return True  # unknown: assume the user may have cancelled (never a false alarm)
    cancel = m.cancels.get((pid, task))
    return cancel is not None and bool(cancel.get("sent"))


def _possibly_held(m: Model, bounds: Bounds) -> dict[str, list[tuple[float, float, Any]]]:
    """Per name, intervals in which some contender may have held the lock on the server, with
    whose (a lease's (pid, token) or a call's (pid, cid)).

    A lease released cleanly held it until its release returned; any other lease until its key's
    expiry (its last deadline update plus its TTL). A waiter that gave up (timeout, cancellation)
    may have been handed the lock at the end of its wait, or any time it was frozen, and passed it
    on in its cleanup; if a connectivity fault was near, that cleanup may have failed, and the lock
    stays with it for a TTL. A waiter that died (or any other error) may hold it for the dead-waiter
    window plus a TTL."""
    out: dict[str, list[tuple[float, float, Any]]] = defaultdict(list)
    for lease in m.leases.values():
        if lease.rel_end is not None and lease.rel_out == "ok":
            end = lease.rel_end
        else:
            last = lease.deadlines[-1][0] if lease.deadlines else lease.t_ok
            end = max(last + lease.ttl, lease.deadline_at(math.inf), lease.rel_end or 0.0) + bounds.slack
        out[lease.name].append((lease.t_req, end, (lease.pid, lease.token)))
    max_ttl = max((x.ttl for x in m.leases.values()), default=5.0) or 5.0
    links = [(f.t0, f.t1) for f in m.faults if f.kind in CONNECTIVITY_FAULTS]
    by_name: dict[str, list[Lease]] = defaultdict(list)
    for lease in m.leases.values():
        by_name[lease.name].append(lease)
    for c in m.calls.values():
        if c.op not in ACQUIRE_OPS or c.out == "ok":
            continue
        proc = m.procs.get(c.pid)
        start, end = c.t0, c.t1
        if end is None:  # never returned: killed, or the run ended
            # a live, running waiter that is granted returns at once: it can have held the lock
            # without saying so only just before it died or while it was frozen. Dead, it can
            # still be handed the lock for ``dead_hold`` s, and then holds it for its TTL; but not
            # past a grant to another contender whose granting request was sent after that window
            # (the lock was not the dead waiter's then, and could not become it again).
            died = proc.died if proc is not None and proc.died is not None else m.end
            start = max(start, died - 0.5)
            if proc is not None:
                start = min([start] + [f0 for f0, f1 in proc.frozen if f1 > c.t0 and f0 < died])
            end = died + bounds.dead_hold + (c.ttl or max_ttl) + bounds.slack
            later = [
                x.t_ok for x in by_name.get(c.name, [])
                if x.pid != c.pid and x.deadlines and x.deadlines[0][1] - x.ttl >= died + bounds.dead_hold
            ]
            if later:
                end = max(start, min(end, min(later)))
        elif c.out in ("none", "cancelled") or c.exc == "LockTimeout":
            start = max(start, end - 0.5)
            if proc is not None:
                start = min([start] + [f0 for f0, f1 in proc.frozen if f1 > c.t0 and f0 < end])
            if any(f0 < end + 1.0 and f1 > c.t0 for f0, f1 in links):
                end = end + max_ttl + bounds.slack
            else:
                end = end + 0.5
        else:
            end = end + max_ttl + bounds.slack  # an error: its cleanup may have failed
        out[c.name].append((start, end, (c.pid, c.cid)))
    return out


def _disturbed(m: Model, bounds: Bounds) -> list[tuple[float, float]]:
    """Windows in which no liveness is promised: a connectivity or server fault and ``settle`` s
    after it. A restore from an older snapshot can bring back a lock of a lease that was released
    since: it stays until that lease's TTL runs out, so it disturbs for the longest TTL more."""
    max_ttl = max((x.ttl for x in m.leases.values()), default=5.0)
    out = []
    for f in m.faults:
        if f.kind in CONNECTIVITY_FAULTS:
            extra = max_ttl if f.kind == "restart_snapshot" else 0.0
            out.append((f.t0 - 0.2, f.t1 + bounds.settle + extra))
    return out


def _free_time(busy: list[tuple[float, float]], a: float, b: float) -> list[tuple[float, float]]:
    """Sub-intervals of [a, b] covered by none of ``busy``."""
    free: list[tuple[float, float]] = []
    cur = a
    for s, e in sorted(busy):
        if e <= cur:
            continue
        if s >= b:
            break
        if s > cur:
            free.append((cur, min(s, b)))
        cur = max(cur, e)
        if cur >= b:
            break
    if cur < b:
        free.append((cur, b))
    return free


def _free_time_counted(
    held: list[tuple[float, float]], blocked: list[tuple[float, float]], a: float, b: float, capacity: int
) -> list[tuple[float, float]]:
    """Sub-intervals of [a, b] in which fewer than ``capacity`` of ``held`` overlap and none of
    ``blocked`` does (a semaphore with a permit to spare, and nothing disturbed)."""
    marks: list[tuple[float, int]] = []
    for s, e in held:
        if e > a and s < b:
            marks += [(max(s, a), 1), (min(e, b), -1)]
    for s, e in blocked:
        if e > a and s < b:
            marks += [(max(s, a), capacity), (min(e, b), -capacity)]
    marks.sort(key=lambda x: (x[0], x[1]))  # at one instant, ends before starts: touching is not busy
    free: list[tuple[float, float]] = []
    level, cur = 0, a
    for t, d in marks:
        if level < capacity and t > cur:
            free.append((cur, t))
        level += d
        cur = t
    if level < capacity and b > cur:
        free.append((cur, b))
    merged: list[tuple[float, float]] = []
    for s, e in free:
        if merged and abs(merged[-1][1] - s) < 1e-9:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def check_liveness(m: Model, bounds: Bounds) -> list[Violation]:
    out: list[Violation] = []
    held = _possibly_held(m, bounds)
    disturbed = _disturbed(m, bounds)
    own = {(x.pid, x.cid): (x.pid, x.token) for x in m.leases.values()}
    for c in m.calls.values():
        # every blocking acquire that waited: one that timed out, and one granted only after a wait
        if c.op not in ("acquire", "with") or c.t1 is None or not (c.exc == "LockTimeout" or c.out == "ok"):
            continue
        if (c.timeout or 0) < bounds.liveness or c.t1 - c.t0 < bounds.liveness:
            continue
        proc = m.procs.get(c.pid)
        mine = {(c.pid, c.cid), own.get((c.pid, c.cid))}
        others = [(s, e) for s, e, who in held.get(c.name, []) if who not in mine]
        blocked = list(disturbed)
        if proc is not None:
            blocked += [(f0 - 0.2, f1 + bounds.dead_hold) for f0, f1 in proc.frozen]
        if c.prim == "sem" and c.limit > 1:
            # a permit is free while fewer than ``limit`` others may hold one
            free = _free_time_counted(others, blocked, c.t0 + 0.2, c.t1, c.limit)
        else:
            free = _free_time(others + blocked, c.t0 + 0.2, c.t1)
        for s, e in free:
            if e - s >= bounds.liveness:
                ended = f"timed out at {c.t1:.3f}" if c.out != "ok" else f"was granted only at {c.t1:.3f}"
                out.append(
                    Violation(
                        "d",
                        f"{c.name}: pid {c.pid} {c.api} acquire(timeout={c.timeout:g}) {ended} "
                        f"although the lock was free and nothing was disturbed from {s:.3f} to {e:.3f} "
                        f"({e - s:.2f} s)",
                        {"name": c.name, "pid": c.pid, "cid": c.cid, "free": (s, e)},
                    )
                )
                break
    if bounds.fifo:
        out += _check_fifo(m, bounds, disturbed)
    return out


def _check_fifo(m: Model, bounds: Bounds, disturbed: list[tuple[float, float]]) -> list[Violation]:
    out: list[Violation] = []
    faults = [(f.t0 - bounds.settle, f.t1 + bounds.settle) for f in m.faults]
    waits: dict[str, list[Call]] = defaultdict(list)
    for c in m.calls.values():
        if c.op in ("acquire", "with") and c.t1 is not None and (c.timeout or 0) > 0:
            waits[c.name].append(c)
    for name, calls in waits.items():
        calls.sort(key=lambda c: c.t0)
        for i, a in enumerate(calls):
            assert a.t1 is not None
            for b in calls[i + 1:]:
                assert b.t1 is not None
                if b.t0 > a.t1:
                    break
                if b.t0 < a.t0 + bounds.fifo_margin or b.out != "ok":
                    continue
                # a granted later than b, or a gave up later than b was granted; a waiter that timed
                # out leaves the queue just before its call returns, so only grants before its
                # give-up time count
                if a.out == "ok":
                    latest = a.t1 - 1e-3
                elif a.exc == "LockTimeout":
                    latest = a.t0 + (a.timeout or 0.0) - 0.05
                else:
                    continue  # an error: the server or the link was in trouble
                # two that both fit (permits of a semaphore, two readers) may be granted together and
                # return in either order: b passed a only if a then waited on for a while
                both_fit = (a.prim == "sem" and a.limit > 1) or (a.prim == b.prim == "read")
                if b.t1 >= latest - (bounds.liveness if both_fit else 0.0):
                    continue
                # b was granted while a, which came first, was still waiting
                lo, hi = a.t0, b.t1
                if any(f0 < hi and f1 > lo for f0, f1 in faults):
                    continue
                pa, pb = m.procs.get(a.pid), m.procs.get(b.pid)
                if (pa and pa.frozen_in(lo - 5, hi)) or (pb and pb.frozen_in(lo - 5, hi)):
                    continue
                rw = a.prim in ("read", "write")
                what = {"read": "reader ", "write": "writer "}
                starved = " (a writer starved by a later reader)" if a.prim == "write" and b.prim == "read" else ""
                out.append(
                    Violation(
                        "k" if rw else "d",
                        f"{name}: FIFO broken{starved}: {what.get(b.prim, '')}pid {b.pid} called acquire at {b.t0:.3f} "
                        f"and was granted at {b.t1:.3f} while {what.get(a.prim, '')}pid {a.pid}, waiting since "
                        f"{a.t0:.3f}, was still waiting (until {a.t1:.3f}, {a.out} {a.exc or ''})",
                        {"name": name, "first": a.cid, "second": b.cid, "sub": "starved" if starved else "fifo"},
                    )
                )
    return out


def check_durations(m: Model, bounds: Bounds) -> list[Violation]:
    out: list[Violation] = []
    for c in m.calls.values():
        if c.op == "with_exit":
            continue
        proc = m.procs.get(c.pid)
        timeout = c.timeout if c.op in ("acquire", "with") and c.timeout is not None else 0.0
        allowed = timeout + bounds.call_slack(c.op)
        end = c.t1
        if end is None:
            if proc is None or proc.died is not None:
                continue
            end = proc.end  # never returned although its process lived on
            if end - c.t0 <= allowed:
                continue
        took = end - c.t0 - (proc.frozen_in(c.t0, end) if proc else 0.0)
        if took > allowed:
            out.append(
                Violation(
                    "e",
                    f"{c.name}: pid {c.pid} {c.api} {c.op}"
                    + (f"(timeout={c.timeout:g})" if c.op in ("acquire", "with") else "")
                    + f" took {took:.2f} s (allowed {allowed:.2f} s){'' if c.t1 else ' and never returned'}"
                    f" -> {c.out} {c.exc or ''}",
                    {"cid": c.cid, "pid": c.pid, "took": took},
                )
            )
    return out


def check_cancellation(m: Model) -> list[Violation]:
    out: list[Violation] = []
    calls_of: dict[tuple[int, str], list[Call]] = defaultdict(list)
    for c in sorted(m.calls.values(), key=lambda c: c.t0):
        if c.task is not None:
            calls_of[(c.pid, c.task)].append(c)
    for key, cancel in m.cancels.items():
        if not cancel.get("sent"):
            continue
        end = m.task_ends.get(key)
        proc = m.procs.get(key[0])
        if end is None:
            if proc is not None and proc.died is None and proc.end > cancel["t"] + 30:
                out.append(Violation("f", f"pid {key[0]} task {key[1]}: cancelled at {cancel['t']:.3f}, never ended"))
            continue
        if end.get("how") != "cancelled":
            # which fencelock call the cancellation hit, and what that call did with it
            hit = [c for c in calls_of.get(key, []) if c.t0 <= cancel["t"] and (c.t1 is None or c.t1 >= cancel["t"])]
            during = ""
            if hit:
                c = hit[-1]
                during = f" during {c.op} (called at {c.t0:.3f}, which then ended {c.out} {c.exc or ''})"
            out.append(
                Violation(
                    "f",
                    f"pid {key[0]} task {key[1]} ({cancel.get('what', '')}): cancelled at {cancel['t']:.3f}{during}, "
                    f"but the task ended {end.get('how')} {end.get('exc') or ''} at {end['t']:.3f}: the "
                    "cancellation was swallowed",
                    {"pid": key[0], "task": key[1], "op": hit[-1].op if hit else None,
                     "op_out": (hit[-1].exc or hit[-1].out) if hit else None},
                )
            )
    return out


def check_unreturned(m: Model) -> list[Violation]:
    out: list[Violation] = []
    returned = {(x.pid, x.token) for x in m.leases.values()}
    for e in m.on_lost_foreign:
        out.append(
            Violation(
                "g",
                f"pid {e['pid']}: on_lost fired for a Lease object acquire never returned (token {_short(e['token'])}, "
                f"fence {e.get('fence')}; acquire returned another object with that token)",
                {"pid": e["pid"], "token": e["token"]},
            )
        )
    for e in m.on_lost:
        if (e["pid"], e["token"]) in returned:
            continue
        proc = m.procs.get(e["pid"])
        if proc is not None and proc.died is not None and proc.died - e["t"] < 0.5:
            continue  # the process may have died before it wrote the grant
        out.append(
            Violation(
                "g",
                f"pid {e['pid']}: on_lost fired for token {_short(e['token'])} (fence {e.get('fence')}), a lease that "
                "acquire never returned to the caller",
                {"pid": e["pid"], "token": e["token"]},
            )
        )
    return out


def check_errors(m: Model) -> list[Violation]:
    out: list[Violation] = []
    for c in m.calls.values():
        if c.t1 is not None and not c.documented:
            out.append(
                Violation("h", f"pid {c.pid} {c.api} {c.op} on {c.name} raised {c.exc}: {c.msg}\n{c.tb}",
                          {"pid": c.pid, "exc": c.exc})
            )
    for e in m.unexpected:
        out.append(Violation("h", f"pid {e['pid']} {e.get('where')}: {e.get('exc')}\n{e.get('tb', '')}",
                             {"pid": e["pid"], "exc": e.get("exc")}))
    return out


def check(events: Iterable[Event], bounds: Bounds | None = None) -> list[Violation]:
    """Every violation of every rule in the history."""
    b = bounds or Bounds()
    m = build(events)
    return (
        check_overlap(m)
        + check_terms(m)
        + check_write_order(m)
        + check_fences(m)
        + check_signals(m, b)
        + check_liveness(m, b)
        + check_durations(m, b)
        + check_cancellation(m)
        + check_unreturned(m)
        + check_errors(m)
    )
