"""What each backend primitive promises (fencelock.backends.base), checked directly on every backend.

The contract suite (test_contract.py) tests whole locks; this one talks to a backend's primitives
with no handle in between, so a backend author learns which primitive breaks its promise before the
policy on top hides it. Same servers, same capability marks as the contract suite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fencelock._core.params import new_token
from fencelock.backends import open_async_backend, open_backend
from fencelock.backends.base import AsyncBackend, Attempt, Backend, LockInfo

TTL_MS = 30_000
LABEL = "primitive-test"


@pytest.fixture
def backend(lock_server: Any) -> Iterator[Backend]:
    b, _ = open_backend(lock_server.url)
    try:
        yield b
    finally:
        b.close()


def grant(backend: Backend, name: str, token: str | None = None, ttl_ms: int = TTL_MS) -> tuple[str, int]:
    token = token or new_token()
    attempt = backend.try_acquire(name, token, ttl_ms, LABEL, False)
    assert isinstance(attempt, Attempt) and attempt.fence is not None, attempt
    return token, attempt.fence


def test_try_acquire_grants_a_free_lock_and_refuses_a_held_one(backend: Backend, name: str) -> None:
    token, fence = grant(backend, name)
    other = backend.try_acquire(name, new_token(), TTL_MS, LABEL, False)
    assert other.fence is None
    assert other.retry_after is None or other.retry_after >= 0
    info = backend.inspect(name)
    assert isinstance(info, LockInfo) and info.fence == fence and info.holder == LABEL
    assert backend.release(name, token) is True


def test_try_acquire_again_with_the_holders_token_answers_its_fence(backend: Backend, name: str) -> None:
    # a repeated request (its first answer was lost) must not mint a second fence
    token, fence = grant(backend, name)
    again = backend.try_acquire(name, token, TTL_MS, LABEL, False)
    assert again.fence == fence
    assert backend.release(name, token) is True


def test_fences_strictly_increase_across_grants(backend: Backend, name: str) -> None:
    fences = []
    for _ in range(5):
        token, fence = grant(backend, name)
        fences.append(fence)
        assert backend.release(name, token) is True
    assert fences == sorted(set(fences)) and len(fences) == 5


def test_release_of_a_token_that_does_not_hold_changes_nothing_and_says_so(backend: Backend, name: str) -> None:
    token, fence = grant(backend, name)
    assert backend.release(name, new_token()) is False
    info = backend.inspect(name)
    assert info is not None and info.fence == fence, "a stranger's release must leave the holder alone"
    assert backend.release(name, token) is True
    assert backend.release(name, token) is False, "a second release finds nothing of ours"
    assert backend.inspect(name) is None


def test_extend_of_a_token_that_does_not_hold_changes_nothing_and_says_so(backend: Backend, name: str) -> None:
    assert backend.extend(name, new_token(), TTL_MS) is False, "extend of a free lock"
    token, fence = grant(backend, name)
    assert backend.extend(name, new_token(), 60_000) is False
    assert backend.extend(name, token, 60_000) is True
    info = backend.inspect(name)
    assert info is not None and info.fence == fence
    assert backend.release(name, token) is True


def test_abandon_is_idempotent_and_safe_at_any_time(backend: Backend, name: str) -> None:
    stranger = new_token()
    backend.abandon(name, stranger)  # never queued, lock free
    token, fence = grant(backend, name)
    waiter = new_token()
    assert backend.try_acquire(name, waiter, TTL_MS, LABEL, True).fence is None  # queued
    backend.abandon(name, waiter)
    backend.abandon(name, waiter)
    backend.abandon(name, stranger)  # a stranger's abandon leaves the holder alone
    info = backend.inspect(name)
    assert info is not None and info.fence == fence
    assert backend.release(name, token) is True
    # the abandoned waiter was not handed the lock: it is free for anyone now
    newcomer, _ = grant(backend, name)
    assert backend.release(name, newcomer) is True


def test_abandon_passes_on_a_grant_whose_answer_was_never_read(backend: Backend, name: str) -> None:
    token, _ = grant(backend, name)  # pretend the caller never saw this answer
    backend.abandon(name, token)
    assert backend.inspect(name) is None, "abandon must drop (or pass on) a lock held by its token"


def test_wait_returns_within_its_timeout_when_nothing_happens(backend: Backend, name: str) -> None:
    holder, _ = grant(backend, name)
    waiter = new_token()
    assert backend.try_acquire(name, waiter, TTL_MS, LABEL, True).fence is None
    try:
        for timeout in (0.0, 0.05, 0.3):
            started = time.monotonic()
            got = backend.wait(name, waiter, timeout)
            took = time.monotonic() - started
            assert got is None, "nothing was released: nothing can have been handed over"
            assert took <= timeout + 1.5, f"wait({timeout}) took {took:.2f} s"  # 1.5: a loaded machine
    finally:
        backend.abandon(name, waiter)
        backend.release(name, holder)


def test_a_release_lets_the_first_waiter_in(backend: Backend, name: str) -> None:
    # Either the release hands the lock over (wait answers the fence) or wait answers None and the
    # waiter's next try_acquire gets it; the newcomer behind it must not.
    holder, fence = grant(backend, name)
    waiter = new_token()
    assert backend.try_acquire(name, waiter, TTL_MS, LABEL, True).fence is None
    assert backend.release(name, holder) is True
    handed = backend.wait(name, waiter, 2.0)
    if handed is None:
        attempt = backend.try_acquire(name, waiter, TTL_MS, LABEL, True)
        assert attempt.fence is not None, "the first waiter must get a freed lock"
        handed = attempt.fence
    assert handed > fence
    assert backend.release(name, waiter) is True


def test_inspect_of_a_free_lock_is_none(backend: Backend, name: str) -> None:
    assert backend.inspect(name) is None


@pytest.mark.needs("expire_key")
def test_release_and_extend_after_the_server_expired_the_lock_say_so(
    lock_server: Any, backend: Backend, name: str
) -> None:
    token, _ = grant(backend, name)
    lock_server.expire_lock(name)
    time.sleep(0.05)
    assert backend.extend(name, token, TTL_MS) is False
    assert backend.release(name, token) is False


async def test_the_asyncio_primitives_keep_the_same_promises(lock_server: Any, name: str) -> None:
    b: AsyncBackend
    b, _ = open_async_backend(lock_server.url)
    try:
        token = new_token()
        got = await b.try_acquire(name, token, TTL_MS, LABEL, False)
        assert got.fence is not None
        assert (await b.try_acquire(name, new_token(), TTL_MS, LABEL, False)).fence is None
        assert (await b.try_acquire(name, token, TTL_MS, LABEL, False)).fence == got.fence
        assert await b.release(name, new_token()) is False
        assert await b.extend(name, new_token(), TTL_MS) is False
        assert await b.extend(name, token, TTL_MS) is True
        waiter = new_token()
        assert (await b.try_acquire(name, waiter, TTL_MS, LABEL, True)).fence is None
        started = time.monotonic()
        assert await b.wait(name, waiter, 0.2) is None
        assert time.monotonic() - started <= 0.2 + 1.5
        await b.abandon(name, waiter)
        await b.abandon(name, waiter)
        info = await b.inspect(name)
        assert info is not None and info.fence == got.fence
        assert await b.release(name, token) is True
        assert await b.inspect(name) is None
        # a cancelled wait leaves nothing behind either
        holder = new_token()
        assert (await b.try_acquire(name, holder, TTL_MS, LABEL, False)).fence is not None
        assert (await b.try_acquire(name, waiter, TTL_MS, LABEL, True)).fence is None
        task = asyncio.create_task(b.wait(name, waiter, 5))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await b.abandon(name, waiter)
        assert await b.release(name, holder) is True
        assert await b.inspect(name) is None
    finally:
        await b.aclose()
