"""The recorded history of a chaos run: what every consumer did, and what the harness did to whom.

Two kinds of JSON lines, both stamped with ``time.monotonic_ns()`` (CLOCK_MONOTONIC is one clock
for every process on a host, so lines of different processes can be merged and compared; it is
also the clock libfaketime leaves alone with ``FAKETIME_DONT_FAKE_MONOTONIC=1``):

- **operations**, appended by each consumer (one file per consumer, or one shared file opened
  with ``O_APPEND``; a line is written with a single ``write``)::

    {"t": 123, "proc": "c1", "pid": 4242, "op": "acquire"|"renew"|"release"|"lease-lost"|"write",
     "type": "invoke"|"ok"|"fail"|"unknown", "file": "f-0001.tsv", "fence": 17 | null,
     "rows": 200, "error": "..."}

  A ``write ... unknown`` is a write whose outcome the client could not learn (connection lost
  after the commit was sent): the checker counts it as *maybe* applied.

- **faults**, appended by the harness::

    {"t": 123, "fault": "sigstop", "target": "c1", "phase": "start"|"end"|"point", "detail": "..."}

  A fault with ``start`` and ``end`` is a window (a pause, a blackholed link); ``point`` is an
  instant (a kill, a ``PEXPIRE``).

Readers skip blank lines and report malformed ones instead of guessing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "OPS",
    "TYPES",
    "Event",
    "Fault",
    "FaultLog",
    "FaultWindow",
    "HistoryWriter",
    "fault_windows",
    "read_events",
    "read_faults",
]

OPS = ("acquire", "renew", "release", "lease-lost", "write")
TYPES = ("invoke", "ok", "fail", "unknown")

Phase = Literal["start", "end", "point"]


@dataclass(frozen=True)
class Event:
    """One operation step of one consumer process."""

    t: int
    proc: str
    op: str
    type: str
    file: str = ""
    fence: int | None = None
    pid: int = 0
    rows: int = 0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        known = {"t", "proc", "op", "type", "file", "fence", "pid", "rows", "error"}
        fence = data.get("fence")
        return cls(
            t=int(data["t"]),
            proc=str(data["proc"]),
            op=str(data["op"]),
            type=str(data["type"]),
            file=str(data.get("file") or ""),
            fence=int(fence) if fence is not None else None,
            pid=int(data.get("pid") or 0),
            rows=int(data.get("rows") or 0),
            error=str(data.get("error") or ""),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "t": self.t, "proc": self.proc, "pid": self.pid, "op": self.op, "type": self.type,
            "file": self.file, "fence": self.fence, "rows": self.rows, "error": self.error,
        }
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Fault:
    """One entry of the fault log: what the harness did to whom, and when."""

    t: int
    fault: str
    target: str
    phase: Phase = "point"
    detail: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        phase = str(data.get("phase") or "point")
        if phase not in ("start", "end", "point"):
            raise ValueError(f"unknown fault phase {phase!r}")
        return cls(int(data["t"]), str(data["fault"]), str(data["target"]), phase,  # type: ignore[arg-type]
                   str(data.get("detail") or ""))

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "fault": self.fault, "target": self.target, "phase": self.phase,
                "detail": self.detail}


@dataclass(frozen=True)
class FaultWindow:
    """A fault as an interval (``start == end`` for an instant). ``end`` is None while unhealed."""

    fault: str
    target: str
    start: int
    end: int | None
    detail: str = ""

    def covers(self, lo: int, hi: int, slack: int = 0) -> bool:
        """True when the window (widened by ``slack`` ns each side) meets [lo, hi]."""
        end = self.end if self.end is not None else hi
        return self.start - slack <= hi and lo <= end + slack


def fault_windows(faults: Iterable[Fault]) -> list[FaultWindow]:
    """Pair ``start``/``end`` entries (same fault and target, in order) into windows."""
    open_: dict[tuple[str, str], list[Fault]] = {}
    out: list[FaultWindow] = []
    for f in sorted(faults, key=lambda f: f.t):
        key = (f.fault, f.target)
        if f.phase == "point":
            out.append(FaultWindow(f.fault, f.target, f.t, f.t, f.detail))
        elif f.phase == "start":
            open_.setdefault(key, []).append(f)
        else:
            starts = open_.get(key)
            if starts:
                s = starts.pop(0)
                out.append(FaultWindow(f.fault, f.target, s.t, f.t, s.detail or f.detail))
            else:  # an end without a start: the window began before the log did
                out.append(FaultWindow(f.fault, f.target, f.t, f.t, f.detail))
    for starts in open_.values():
        out.extend(FaultWindow(s.fault, s.target, s.t, None, s.detail) for s in starts)
    return sorted(out, key=lambda w: w.start)


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as fh:
        for no, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                # a process killed mid-write leaves at most one torn last line
                raise ValueError(f"{path}:{no}: not JSON: {err}") from err
            if not isinstance(data, dict):
                raise ValueError(f"{path}:{no}: not a JSON object")
            yield no, data


def read_events(paths: Iterable[str | os.PathLike[str]], *, tolerate_torn_tail: bool = True) -> list[Event]:
    """All operation events of the given files, merged in time order.

    A consumer killed with SIGKILL may leave a torn last line; with ``tolerate_torn_tail`` that one
    line (and only a last one) is dropped.
    """
    events: list[Event] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            continue
        try:
            events.extend([Event.from_json(d) for _, d in _lines(path)])  # all of the file, or none of it
        except ValueError:
            if not tolerate_torn_tail:
                raise
            lines = path.read_text(encoding="utf-8").splitlines()
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    if i == len(lines) - 1:
                        break
                    raise ValueError(f"{path}:{i + 1}: not JSON (and not the last line)") from None
                events.append(Event.from_json(data))
    events.sort(key=lambda e: (e.t, e.proc))
    return events


def read_faults(path: str | os.PathLike[str]) -> list[Fault]:
    p = Path(path)
    if not p.exists():
        return []
    return sorted((Fault.from_json(d) for _, d in _lines(p)), key=lambda f: f.t)


class HistoryWriter:
    """Appends operation events for one process: one ``write`` per line, flushed at once."""

    def __init__(self, path: str | os.PathLike[str], proc: str) -> None:
        self.path = Path(path)
        self.proc = proc
        self.pid = os.getpid()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._mutex = threading.Lock()  # the renewal thread writes too

    def record(self, op: str, type_: str, *, file: str = "", fence: int | None = None, rows: int = 0,
               error: str = "", t: int | None = None, **extra: Any) -> Event:
        """Append one event, stamped now (or at ``t``, a ``monotonic_ns`` taken earlier). Each line
        also carries ``wall`` (``time.time()``): the evidence that a faked clock was in effect."""
        if op not in OPS or type_ not in TYPES:
            raise ValueError(f"bad history entry op={op!r} type={type_!r}")
        extra.setdefault("wall", time.time())
        stamp = time.monotonic_ns() if t is None else t
        event = Event(stamp, self.proc, op, type_, file, fence, self.pid, rows, error[:300], extra)
        line = (json.dumps(event.to_json(), separators=(",", ":")) + "\n").encode()
        with self._mutex:
            os.write(self._fd, line)
        return event

    def close(self) -> None:
        with self._mutex:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class FaultLog:
    """The harness's own log of injected faults (one file, one writer)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.entries: list[Fault] = []

    def _add(self, fault: str, target: str, phase: Phase, detail: str) -> Fault:
        entry = Fault(time.monotonic_ns(), fault, target, phase, detail)
        self.entries.append(entry)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry.to_json(), separators=(",", ":")) + "\n")
        return entry

    def point(self, fault: str, target: str, detail: str = "") -> Fault:
        return self._add(fault, target, "point", detail)

    def start(self, fault: str, target: str, detail: str = "") -> Fault:
        return self._add(fault, target, "start", detail)

    def end(self, fault: str, target: str, detail: str = "") -> Fault:
        return self._add(fault, target, "end", detail)
