"""Test-run wiring: real servers (see servers.py), parametrization of the contract suite."""

from __future__ import annotations

import uuid

import pytest

# Each backend's test server registers itself (servers.register) when imported. Plain imports: a backend
# whose server cannot be set up must fail the run, never drop out of the contract suite unseen.
from servers import BACKENDS, redis_debian_server, redis_embedded_server, valkey  # noqa: F401
from srv_postgres import postgres_server  # noqa: F401
from srv_sqlite import sqlite_server  # noqa: F401
from srv_zookeeper import zookeeper_server  # noqa: F401


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stress", "randomized stress test (tests/stress)")
    group.addoption("--stress-seed", type=int, default=None, help="replay one seed of the stress test")
    group.addoption("--stress-long", action="store_true", help="run the long tier: many seeds until the time is up")
    group.addoption("--stress-minutes", type=float, default=10.0, help="long tier: minutes in total (all backends)")
    group.addoption("--stress-duration", type=float, default=None, help="seconds of workload per run")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(*caps): run only against backends with these capabilities")
    config.addinivalue_line("markers", "backends(*names): restrict a contract test to these backends")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "lock_server" not in metafunc.fixturenames:
        return
    needs: set[str] = set()
    for mark in metafunc.definition.iter_markers("needs"):
        needs.update(mark.args)
    only: set[str] | None = None
    for mark in metafunc.definition.iter_markers("backends"):
        only = set(mark.args)
    names = [n for n in BACKENDS if only is None or n in only]
    if needs:
        from servers import capabilities_of

        names = [n for n in names if needs <= capabilities_of(n)]
    if not names:
        # pytest would skip a test with an empty parameter set: a test no backend runs has not passed
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid} needs {sorted(needs)} (backends {sorted(only or [])}), "
            "which no registered backend offers: fix the mark or register a server that has it"
        )
    metafunc.parametrize("backend_name", names, scope="session")


@pytest.fixture
def lock_server(request: pytest.FixtureRequest, backend_name: str):  # type: ignore[no-untyped-def]
    return request.getfixturevalue(BACKENDS[backend_name])


@pytest.fixture
def name() -> str:
    """A fresh lock name per test: tests share servers, never locks."""
    return f"test:{uuid.uuid4().hex[:12]}"
