"""sqlite:// lock URLs, checked before any I/O."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, unquote

from ..._errors import ConfigurationError

__all__ = ["DEFAULT_BUSY_TIMEOUT", "check_busy_timeout", "parse_sqlite_url"]

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds one call may wait for another connection's write transaction before it raises."""


def parse_sqlite_url(url: str) -> tuple[str, float]:
    """``sqlite:///rel/path.db`` or ``sqlite:////abs/path.db`` [``?busy_timeout=SECONDS``] ->
    (absolute path, busy timeout). Raises ``ConfigurationError`` before any I/O."""
    if not url.startswith("sqlite://"):
        raise ConfigurationError(f"not a SQLite URL: {url!r} (use sqlite:///path/to/locks.db)")
    rest, _, query = url[len("sqlite://") :].partition("?")
    if not rest.startswith("/") or rest in ("/", "//"):
        raise ConfigurationError(
            f"SQLite lock URL {url!r} needs a file path: sqlite:///relative/locks.db or "
            "sqlite:////absolute/locks.db (three slashes, then the path; no host)"
        )
    path = unquote(rest[1:])
    if path in (":memory:", "") or path.startswith("file:"):
        raise ConfigurationError(
            f"SQLite lock URL {url!r}: an in-memory or URI database is private to one connection and "
            "cannot lock anything between processes; give a file path"
        )
    busy = DEFAULT_BUSY_TIMEOUT
    params = parse_qs(query, keep_blank_values=True)
    unknown = set(params) - {"busy_timeout"}
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {sorted(unknown)} in SQLite lock URL; the only option is busy_timeout=SECONDS"
        )
    if "busy_timeout" in params:
        busy = check_busy_timeout(params["busy_timeout"][-1])
    return os.path.abspath(path), busy


def check_busy_timeout(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds < 3600:
        raise ConfigurationError(
            f"busy_timeout must be a number of seconds between 0 and 3600, got {value!r}; it bounds how "
            "long a call waits for another process's write transaction"
        )
    return seconds
