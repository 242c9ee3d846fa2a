"""Decide whether a chaos run kept its promises: pure functions over a history and the storage.

Inputs (nothing here does I/O):

- ``events``: the consumers' operation history (``history.Event``), any order;
- ``faults``: the harness's fault log (``history.Fault``);
- ``storage``: what the database says (``Storage``): accepted writes in commit order, rejected
  writes, and how many rows each ``TransactionId`` has;
- ``facts``: what was produced and the run's parameters (``RunFacts``).

Invariants (``Violation.invariant``), after Jepsen's lock workloads:

=======================  ==========================================================================
``fence-order``          accepted fences per resource never go down in commit order (a write with a
                         stale fence was applied after a newer holder's)
``fence-unique``         no fence was issued twice for one lock
``exactly-once``         every produced row is in the database exactly once (no loss, no duplicate,
                         nothing that was never produced)
``lease-overlap``        no two leases on one resource overlap, unless a fault window explains it
``progress``             every file is done (a write acknowledged) within ``done_bound`` after the
                         last fault healed
``ok-but-rejected``      no client reports success for a write the storage rejected (or never saw)
``failed-but-applied``   no client reports failure for a write the storage applied (it must say
                         ``unknown`` when it cannot tell); ``unknown`` writes count as maybe
``lost-late``            a lost lease is reported within one TTL after its deadline (longer only by
                         the time its process was stopped; a killed process reports nothing)
=======================  ==========================================================================

A lease, as its holder believes it: from ``acquire ok`` until the first of ``release invoke``,
``lease-lost``, its deadline (the last successful ``acquire``/``renew`` *invoke* plus the TTL: the
same rule the library uses), or the holder's death.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .history import Event, Fault, FaultWindow, fault_windows

__all__ = [
    "INVARIANTS",
    "Commit",
    "Lease",
    "Rejection",
    "RunFacts",
    "Storage",
    "Violation",
    "check",
    "check_exactly_once",
    "check_fence_order",
    "check_fence_unique",
    "check_lease_overlap",
    "check_lost_late",
    "check_outcomes",
    "check_progress",
    "leases",
]

INVARIANTS = (
    "fence-order",
    "fence-unique",
    "exactly-once",
    "lease-overlap",
    "progress",
    "ok-but-rejected",
    "failed-but-applied",
    "lost-late",
)

# Faults that end a process's life (it cannot report anything afterwards).
KILL_FAULTS = frozenset({"sigkill"})
# Faults that freeze a process (its clock runs on, its threads do not).
STOP_FAULTS = frozenset({"sigstop"})


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str
    resource: str = ""
    proc: str = ""
    t: int | None = None

    def __str__(self) -> str:
        where = " ".join(x for x in (self.resource, self.proc) if x)
        return f"[{self.invariant}] {where + ': ' if where else ''}{self.detail}"


@dataclass(frozen=True)
class Commit:
    """A write the storage accepted; ``seq`` is its position in commit order."""

    seq: int
    resource: str
    fence: int | None
    writer: str
    rows: int = 0


@dataclass(frozen=True)
class Rejection:
    """A write the storage refused for a stale fence."""

    resource: str
    fence: int | None
    current: int | None
    writer: str


@dataclass
class Storage:
    commits: list[Commit] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)  # TransactionId -> rows with it


@dataclass
class RunFacts:
    produced: dict[str, list[str]]  # file -> its TransactionIds
    ttl_ns: int
    done_bound_ns: int
    start_t: int
    end_t: int


@dataclass
class Lease:
    proc: str
    resource: str
    fence: int | None
    start: int  # acquire ok
    end: int  # when the holder stopped believing it holds (see module docstring)
    deadline: int  # last successful acquire/renew invoke + TTL
    ended_by: str  # "release", "lost", "deadline", "killed", "history-end"
    lost_at: int | None = None  # when the holder reported the loss (lease-lost or a failed release)
    released_ok: bool = False


def _by_proc(events: Iterable[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in sorted(events, key=lambda e: e.t):
        out[e.proc].append(e)
    return out


def leases(events: Iterable[Event], faults: Iterable[Fault], ttl_ns: int) -> list[Lease]:
    """Rebuild every lease from the history (see the module docstring for where one ends)."""
    kills: dict[str, int] = {}
    for w in fault_windows(faults):
        if w.fault in KILL_FAULTS:
            kills.setdefault(w.target, w.start)
    out: list[Lease] = []
    for proc, evs in _by_proc(events).items():
        current: dict[str, Lease] = {}
        last_invoke: dict[tuple[str, str], int] = {}  # (op, file) -> t of the latest invoke
        for e in evs:
            key = (e.op, e.file)
            if e.type == "invoke":
                last_invoke[key] = e.t
            if e.op == "acquire" and e.type == "ok":
                sent = last_invoke.get(key, e.t)
                current[e.file] = Lease(proc, e.file, e.fence, e.t, e.t, sent + ttl_ns, "history-end")
                continue
            lease = current.get(e.file)
            if lease is None:
                continue
            if e.op == "renew" and e.type == "ok":
                lease.deadline = last_invoke.get(key, e.t) + ttl_ns
            elif e.op == "lease-lost":
                lease.lost_at = lease.lost_at or e.t
                _close(lease, e.t, "lost")
                out.append(current.pop(e.file))
            elif e.op == "release" and e.type == "invoke":
                _close(lease, e.t, "release")
            elif e.op == "release" and e.type in ("ok", "fail", "unknown"):
                if lease.ended_by != "release":
                    _close(lease, e.t, "release")
                lease.released_ok = e.type == "ok"
                if e.type == "fail":
                    lease.lost_at = lease.lost_at or e.t
                out.append(current.pop(e.file))
        for lease in current.values():  # never released nor reported lost
            killed = kills.get(proc)
            if killed is not None and killed >= lease.start:
                _close(lease, killed, "killed")
            else:
                lease.end = lease.deadline
                lease.ended_by = "history-end"
            out.append(lease)
    for lease in out:  # a holder never believes past its deadline (the library's own rule)
        if lease.end > lease.deadline and lease.ended_by != "killed":
            lease.end = lease.deadline
            lease.ended_by = "deadline"
    return sorted(out, key=lambda x: (x.resource, x.start))


def _close(lease: Lease, t: int, how: str) -> None:
    lease.end = t
    lease.ended_by = how


def check_fence_order(storage: Storage) -> list[Violation]:
    """Accepted fences per resource never go down in commit order."""
    out: list[Violation] = []
    highest: dict[str, tuple[int, str]] = {}
    for c in sorted(storage.commits, key=lambda c: c.seq):
        if c.fence is None:
            continue
        prev = highest.get(c.resource)
        if prev is not None and c.fence < prev[0]:
            out.append(Violation(
                "fence-order",
                f"write #{c.seq} by {c.writer} with fence {c.fence} applied after fence {prev[0]} "
                f"of {prev[1]}: a stale holder's write of {c.rows} rows was accepted",
                c.resource, c.writer))
        if prev is None or c.fence >= prev[0]:
            highest[c.resource] = (c.fence, c.writer)
    return out


def check_fence_unique(events: Iterable[Event]) -> list[Violation]:
    """No fence handed out twice for one lock (two ``acquire ok`` with one fence)."""
    seen: dict[tuple[str, int], Event] = {}
    out: list[Violation] = []
    for e in sorted(events, key=lambda e: e.t):
        if e.op != "acquire" or e.type != "ok" or e.fence is None:
            continue
        first = seen.get((e.file, e.fence))
        if first is not None:
            out.append(Violation("fence-unique", f"fence {e.fence} issued to {first.proc} and again to {e.proc}",
                                 e.file, e.proc, e.t))
        else:
            seen[(e.file, e.fence)] = e
    return out


def check_exactly_once(storage: Storage, facts: RunFacts) -> list[Violation]:
    """Every produced row persisted exactly once; nothing else persisted."""
    out: list[Violation] = []
    produced: set[str] = set()
    for file, txids in sorted(facts.produced.items()):
        missing = [t for t in txids if storage.row_counts.get(t, 0) == 0]
        dup = [t for t in txids if storage.row_counts.get(t, 0) > 1]
        produced.update(txids)
        if missing:
            rows = f"row{'s' if len(txids) != 1 else ''}"
            out.append(Violation("exactly-once", f"{len(missing)} of {len(txids)} {rows} missing (e.g. {missing[0]})",
                                 file))
        if dup:
            extra = sum(storage.row_counts[t] - 1 for t in dup)
            rows, copies = f"row{'s' if len(dup) != 1 else ''}", f"cop{'ies' if extra != 1 else 'y'}"
            out.append(Violation("exactly-once", f"{len(dup)} {rows} persisted more than once ({extra} extra {copies}, "
                                 f"e.g. {dup[0]})", file))
    phantom = sorted(set(storage.row_counts) - produced)
    if phantom:
        rows = "row that was" if len(phantom) == 1 else "rows that were"
        out.append(Violation("exactly-once", f"{len(phantom)} {rows} never produced (e.g. {phantom[0]})"))
    return out


def _writes(events: Iterable[Event]) -> list[Event]:
    return [e for e in events if e.op == "write" and e.type in ("ok", "fail", "unknown")]


def check_outcomes(events: Iterable[Event], storage: Storage) -> list[Violation]:
    """What clients said about their writes agrees with the storage (``unknown`` is maybe)."""
    committed: dict[tuple[str, str, int | None], int] = defaultdict(int)
    for c in storage.commits:
        committed[(c.writer, c.resource, c.fence)] += 1
    rejected = {(r.writer, r.resource, r.fence) for r in storage.rejections}
    out: list[Violation] = []
    claimed: dict[tuple[str, str, int | None], int] = defaultdict(int)
    for e in sorted(_writes(events), key=lambda e: e.t):
        key = (e.proc, e.file, e.fence)
        if e.type == "ok":
            claimed[key] += 1
            if committed.get(key, 0) < claimed[key]:
                why = "rejected" if key in rejected else "never applied"
                out.append(Violation("ok-but-rejected", f"client reported success for fence {e.fence}, "
                                     f"but the storage {why} it", e.file, e.proc, e.t))
        elif e.type == "fail":
            # applied although its client says it failed: counted once per commit not claimed ok
            if committed.get(key, 0) > claimed.get(key, 0) and not _has_unknown(events, key):
                out.append(Violation("failed-but-applied", f"client reported failure for fence {e.fence}, "
                                     "but the storage applied it", e.file, e.proc, e.t))
    return out


def _has_unknown(events: Iterable[Event], key: tuple[str, str, int | None]) -> bool:
    return any(e.op == "write" and e.type == "unknown" and (e.proc, e.file, e.fence) == key for e in events)


def check_lease_overlap(all_leases: Sequence[Lease], windows: Sequence[FaultWindow], ttl_ns: int) -> list[Violation]:
    """No two leases on one resource overlap, unless a fault window (widened by a TTL) meets the overlap."""
    out: list[Violation] = []
    by_res: dict[str, list[Lease]] = defaultdict(list)
    for lease in all_leases:
        by_res[lease.resource].append(lease)
    for res, ls in by_res.items():
        ls.sort(key=lambda x: x.start)
        for i, a in enumerate(ls):
            for b in ls[i + 1:]:
                if b.start >= a.end:
                    break
                lo, hi = b.start, min(a.end, b.end)
                if hi <= lo:
                    continue
                if any(w.covers(lo, hi, ttl_ns) for w in windows):
                    continue
                out.append(Violation(
                    "lease-overlap",
                    f"{a.proc} (fence {a.fence}) and {b.proc} (fence {b.fence}) both held it for "
                    f"{(hi - lo) / 1e6:.0f} ms with no fault to explain it", res, b.proc, lo))
    return out


def check_lost_late(all_leases: Sequence[Lease], windows: Sequence[FaultWindow], ttl_ns: int,
                    end_t: int) -> list[Violation]:
    """A lease that ended without a successful release is reported lost within a TTL of its deadline."""
    out: list[Violation] = []
    for lease in all_leases:
        if lease.released_ok or lease.ended_by == "killed":
            continue
        if lease.lost_at is not None and lease.lost_at <= lease.deadline:
            continue  # noticed early (renewal found it gone) or exactly in time
        stopped = sum(
            (min(w.end if w.end is not None else end_t, end_t) - w.start)
            for w in windows
            if w.fault in STOP_FAULTS and w.target == lease.proc
            and w.covers(lease.start, (lease.lost_at or end_t))
        )
        allowed = lease.deadline + ttl_ns + max(0, stopped)
        if lease.lost_at is None:
            if allowed < end_t:
                out.append(Violation("lost-late", f"lease with fence {lease.fence} ended "
                                     "but its holder never reported the loss", lease.resource, lease.proc,
                                     lease.deadline))
        elif lease.lost_at > allowed:
            late = (lease.lost_at - lease.deadline) / 1e6
            out.append(Violation("lost-late", f"loss of fence {lease.fence} reported {late:.0f} ms after its "
                                 f"deadline (TTL {ttl_ns / 1e6:.0f} ms)", lease.resource, lease.proc, lease.lost_at))
    return out


def check_progress(events: Iterable[Event], windows: Sequence[FaultWindow], facts: RunFacts) -> list[Violation]:
    """Every produced file done (a write acknowledged) within ``done_bound`` after the last fault healed."""
    done: dict[str, int] = {}
    for e in sorted(events, key=lambda e: e.t):
        if e.op == "write" and e.type == "ok":
            done.setdefault(e.file, e.t)
    healed = max([facts.start_t] + [w.end if w.end is not None else facts.end_t for w in windows])
    bound = healed + facts.done_bound_ns
    out: list[Violation] = []
    for file in sorted(facts.produced):
        t = done.get(file)
        if t is None:
            out.append(Violation("progress", "never done", file))
        elif t > bound:
            out.append(Violation("progress", f"done {(t - healed) / 1e9:.1f} s after the faults healed "
                                 f"(bound {facts.done_bound_ns / 1e9:.1f} s)", file, t=t))
    return out


def check(events: Sequence[Event], faults: Sequence[Fault], storage: Storage, facts: RunFacts) -> list[Violation]:
    """Every invariant, in the order of ``INVARIANTS``."""
    windows = fault_windows(faults)
    ls = leases(events, faults, facts.ttl_ns)
    out: list[Violation] = []
    out += check_fence_order(storage)
    out += check_fence_unique(events)
    out += check_exactly_once(storage, facts)
    out += check_lease_overlap(ls, windows, facts.ttl_ns)
    out += check_progress(events, windows, facts)
    out += check_outcomes(events, storage)
    out += check_lost_late(ls, windows, facts.ttl_ns, facts.end_t)
    return out
