"""Misuse is refused at once, before any I/O, with a message that says what to do."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fencelock
from fencelock import aio
from fencelock._core.params import backoff, lease_deadline

NOWHERE = "redis://127.0.0.1:1"  # nothing listens on port 1: constructing must not connect


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"ttl": 0}, "ttl must be a positive"),
        ({"ttl": -1}, "ttl must be a positive"),
        ({"ttl": math.nan}, "ttl must be a positive"),
        ({"ttl": math.inf}, "ttl must be a positive"),
        ({"ttl": 0.001}, "below 10 ms"),
        ({"ttl": 3, "renew": 3}, "leaves no margin"),
        ({"ttl": 3, "renew": 5}, "leaves no margin"),
        ({"ttl": 1, "renew": 0.99}, "at most ttl/2"),  # would lose every lease at its first renewal
        ({"ttl": 3, "renew": -1}, "positive interval"),
        ({"ttl": 1e17}, "longer than 30 days"),  # reached the server before, and failed there
        ({"ttl": 30 * 86400 + 1}, "longer than 30 days"),
        ({"label": object()}, "label must be a string"),
        ({"label": "a\x00b"}, "label must not contain NUL"),
        ({"label": "x\udc80"}, "not valid Unicode"),
        ({"timeout": -1}, ">= 0 seconds"),
        ({"timeout": math.inf}, "must be finite"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(kwargs: dict[str, float], words: str) -> None:
    with pytest.raises(fencelock.ConfigurationError, match=words):
        fencelock.Lock("x", NOWHERE, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=words):  # also a ValueError, for callers that catch that
        aio.Lock("x", NOWHERE, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", None, 42, "a\x00b", "file:\ud800.tsv"])  # the last: a lone surrogate
def test_bad_names_are_rejected(name: object) -> None:
    with pytest.raises(fencelock.ConfigurationError, match="name"):
        fencelock.Lock(name, NOWHERE)  # type: ignore[arg-type]


def test_the_longest_ttl_and_a_half_ttl_renewal_are_accepted() -> None:
    fencelock.Lock("x", NOWHERE, ttl=30 * 86400)
    fencelock.Lock("x", NOWHERE, ttl=1, renew=0.5)


def test_bad_acquire_timeouts_are_rejected_before_io() -> None:
    lock = fencelock.Lock("x", NOWHERE)
    with pytest.raises(fencelock.ConfigurationError, match="finite"):
        lock.acquire(timeout=math.inf)
    with pytest.raises(fencelock.ConfigurationError, match=">= 0"):
        lock.acquire(timeout=-0.5)


@pytest.mark.parametrize(
    "url", ["http://localhost:6379", "mongodb://x", "localhost:6379", "redis+sentinel://x", ":pw@x"]
)
def test_unknown_urls_are_rejected_and_never_echo_a_password(url: str) -> None:
    with pytest.raises(fencelock.ConfigurationError) as info:
        fencelock.Lock("x", "http://user:hunter2@host" if url == ":pw@x" else url)
    assert "hunter2" not in str(info.value)
    assert "redis://" in str(info.value)  # says what would work


def test_wrong_client_kind_is_explained() -> None:
    import redis
    import redis.asyncio

    with pytest.raises(fencelock.ConfigurationError, match=r"fencelock\.aio\.Lock"):
        fencelock.Lock("x", redis.asyncio.Redis())
    with pytest.raises(fencelock.ConfigurationError, match=r"fencelock\.Lock"):
        aio.Lock("x", redis.Redis())
    with pytest.raises(fencelock.ConfigurationError, match="cannot use"):
        fencelock.Lock("x", object())


def test_prefix_with_braces_is_rejected() -> None:
    with pytest.raises(fencelock.ConfigurationError, match="brace"):
        fencelock.Lock("x", NOWHERE + "?prefix=a{b}")


def test_server_down_is_an_error_within_bounded_time_never_false() -> None:
    lock = fencelock.Lock("x", NOWHERE)
    started = time.monotonic()
    with pytest.raises(fencelock.BackendUnavailable):
        lock.acquire(timeout=1)
    with pytest.raises(fencelock.BackendUnavailable):
        lock.try_acquire()  # not None: a dead server is not contention
    assert time.monotonic() - started < 60  # bounded (the pytest timeout would catch a hang too)


def test_missing_unix_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(fencelock.BackendUnavailable):
        fencelock.Lock("x", f"unix://{tmp_path}/nope.sock").acquire(timeout=0)


async def test_async_server_down_is_an_error() -> None:
    lock = aio.Lock("x", NOWHERE)
    with pytest.raises(fencelock.BackendUnavailable):
        await lock.acquire(timeout=0.5)
    await lock.aclose()


def test_exceptions_pickle_with_their_fields() -> None:
    for err in [
        fencelock.LockTimeout("n", 1.5),
        fencelock.LeaseLost("n", 7, "why"),
        fencelock.StaleFence("r", 3, 9),
        fencelock.NotHeld("msg"),
        fencelock.BackendUnavailable("down"),
    ]:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert isinstance(back, fencelock.FenceLockError)


def test_lease_deadline_is_shortened_for_drift_never_lengthened() -> None:
    assert lease_deadline(100.0, 10.0) < 110.0
    assert lease_deadline(100.0, 10.0) > 109.0


def test_backoff_is_bounded_and_jittered() -> None:
    values = {backoff(n) for n in range(40) for _ in range(3)}
    assert all(0 <= v <= 0.25 for v in values)
    assert len(values) > 10


def test_generated_sync_code_is_up_to_date() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "unasync.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
