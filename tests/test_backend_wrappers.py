"""The backend wrappers of the CLI and the demo pass for backends on every supported Python.

Since Python 3.12, ``isinstance(x, Backend)`` (a runtime-checkable Protocol) looks members up
statically: a wrapper that serves them through ``__getattr__`` is refused there ("cannot use
RecordingBackend as a lock backend"), which stopped every demo consumer on 3.12 and 3.13. The check
below is the static one, so it fails on any Python when a member is missing."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from fencelock._cli_ops import _GrantWatch
from fencelock.backends.base import Backend
from fencelock.backends.sqlite import SqliteBackend
from fencelock_demo.consumer import RecordingBackend
from fencelock_demo.history import History

MEMBERS = [m for m in dir(Backend) if not m.startswith("_") and m != "name"]


@pytest.mark.parametrize("wrapper", [RecordingBackend, _GrantWatch], ids=lambda c: c.__name__)
def test_every_backend_member_is_defined_on_the_wrapper_itself(wrapper: type) -> None:
    assert MEMBERS, "the protocol has members"
    missing = [m for m in MEMBERS if not callable(inspect.getattr_static(wrapper, m, None))]
    assert not missing, f"{wrapper.__name__} serves {missing} only through __getattr__"


def test_the_wrapped_backends_are_accepted_and_work(tmp_path: Path) -> None:
    import fencelock

    inner = SqliteBackend(str(tmp_path / "locks.db"))
    recording = RecordingBackend(inner, History(None, "t"))
    granted = [False]
    watched = _GrantWatch(inner, granted)
    for backend in (recording, watched):
        assert isinstance(backend, Backend)
        with fencelock.Lock("x", backend, ttl=5) as lease:
            assert lease.fence > 0
    assert granted == [True]
    inner.close()
