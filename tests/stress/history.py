"""The stress run's history: JSON lines, one file per process, one ``os.write`` per event.

Every event carries ``t`` (``time.monotonic()``: CLOCK_MONOTONIC is one clock for every process of
the host, so events of different workers and of the fault injector compare directly), ``pid``,
``ev`` (its kind) and the fields of that kind. A line is written with a single ``write(2)`` on an
``O_APPEND`` descriptor and never buffered in the process, so a SIGKILL loses at most the event
being formatted, and lines of the threads of one process never interleave.

Event kinds (the checker reads these; ``workload.py`` and ``faults.py`` write them):

  start        a worker began: ``worker`` (index), ``via`` (direct|proxy), ``inject`` (list)
  call         a fencelock call begins: ``cid``, ``op`` (acquire|try_acquire|with|extend|release|
               ensure|leader), ``name``, ``api`` (sync|async), ``timeout`` (acquire), ``token``
               (lease ops; for ``leader`` the asking leader's lease), ``actor``; on a coordination
               primitive also ``prim`` (sem|read|write|elect; absent: a mutex) and ``limit``
               (a semaphore's). An election's ``campaign`` is recorded as ``acquire``.
  ret          it ended: ``cid``, ``out`` (ok|none|err|cancelled), ``exc`` (type), ``msg``,
               ``documented`` (a fencelock error, or CancelledError), ``tb`` (undocumented only),
               and for a granted acquire the lease: ``token``, ``fence``, ``deadline``, ``ttl``,
               ``renew``, ``col`` (cancel_on_loss), ``lock_ttl``; for ``leader`` the ``term`` and
               ``value`` it reported (None: nobody leads)
  dl           a lease's deadline was set (at grant, and after every extend or renewal): ``token``,
               ``deadline``. Observed from outside (a property on the Lease class), not asked of
               the library.
  sig          a loss signal observed: ``token``, ``kind`` (on_lost|event|reason|ensure|flag|
               with_exit|extend|release)
  held         the library said "held" (``ensure_held()`` passed, ``lost`` was False): ``token``,
               ``how``
  sect_end     a holder's critical section ended: ``token``, ``how`` (normal|cancelled|leaselost|
               error), ``col``
  cancel       we cancelled a task: ``task``, ``sent`` (task.cancel() returned True), ``what``
  task_end     that task ended: ``task``, ``how`` (cancelled|returned|raised), ``exc``
  write        a fenced write: ``token``, ``fence``, ``name``, ``res`` (accepted|refused|error), ``t0``
  unexpected   an undocumented exception escaped a fencelock call or a worker: ``where``, ``exc``, ``tb``
  stop         a worker ended cleanly
  fault        (injector) ``kind``, ``t0``, ``t1`` (end of its window), ``target`` (pid), ``name``,
               ``detail``
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["Event", "Recorder", "load_dir", "load_lines"]

Event = dict[str, Any]


class Recorder:
    """Appends events to ``path`` (made if missing); thread safe, unbuffered, one write per line."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def emit(self, ev: str, t: float | None = None, **fields: Any) -> None:
        event = {"t": time.monotonic() if t is None else t, "pid": self._pid, "ev": ev, **fields}
        line = (json.dumps(event, default=str, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fd >= 0:
                os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def load_lines(lines: Iterable[str]) -> Iterator[Event]:
    """Parse JSON lines; a torn last line (the writer was killed mid-write) is skipped."""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "t" in event and "ev" in event:
            yield event


def load_dir(directory: Path | str) -> list[Event]:
    """Every event of every ``*.jsonl`` file under ``directory``, sorted by time."""
    events: list[Event] = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        with open(path, encoding="utf-8", errors="replace") as f:
            events.extend(load_lines(f))
    events.sort(key=lambda e: e["t"])
    return events
