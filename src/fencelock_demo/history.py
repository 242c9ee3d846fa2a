"""The operation history that the fault harness (``fencelock_chaos``) reads.

One JSON object a line, one line per step of an operation:

    {"t": <time.monotonic_ns()>, "proc": "<consumer id>", "pid": <pid>,
     "op": "acquire" | "renew" | "release" | "lease-lost" | "write",
     "type": "invoke" | "ok" | "fail" | "unknown",
     "file": <name>, "fence": <int or null>, "rows": <int, on write results>, "error": <str, on fail>}

``t`` is CLOCK_MONOTONIC, the same clock for every process on one host, so lines of several
consumers sharing one file can be ordered. Each line is one ``write(2)`` on a descriptor opened with
``O_APPEND``: lines of concurrent processes never interleave, and a line is in the file (the kernel's
page cache) as soon as the call returns, even if the process is killed right after.

``lease-lost`` has type ``ok`` (the loss was observed) and the library's reason in ``error``.
``write`` ends in ``unknown`` when the commit itself failed on a connection error: the database
may or may not have committed it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

__all__ = ["History"]


class History:
    """Appends history lines to ``path``; a no-op when ``path`` is None."""

    def __init__(self, path: str | os.PathLike[str] | None, proc: str) -> None:
        self.proc = proc
        self._fd = -1 if path is None else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def record(
        self,
        op: str,
        type_: str,
        file: str,
        fence: int | None = None,
        *,
        rows: int | None = None,
        error: str | None = None,
    ) -> None:
        if self._fd < 0:
            return
        entry: dict[str, Any] = {
            "t": time.monotonic_ns(),
            "proc": self.proc,
            "pid": os.getpid(),
            "op": op,
            "type": type_,
            "file": file,
            "fence": fence,
        }
        if rows is not None:
            entry["rows"] = rows
        if error is not None:
            entry["error"] = error
        os.write(self._fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
