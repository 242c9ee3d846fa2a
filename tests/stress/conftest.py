"""Seeds for the stress test: ``--stress-seed N`` replays one (options live in tests/conftest.py,
so that they exist whichever directory pytest is started on)."""

from __future__ import annotations

import pytest

SHORT_SEEDS = (1, 2)
"""Seeds of the short tier (CI). A failing seed found by the long tier can be added here."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stress_seed" in metafunc.fixturenames:
        seed = metafunc.config.getoption("--stress-seed")
        seeds = (seed,) if seed is not None else SHORT_SEEDS
        metafunc.parametrize("stress_seed", seeds, ids=[f"seed{s}" for s in seeds])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One tier per run: the long tier only with ``--stress-long`` (then instead of the short one).
    The other tier is deselected, not skipped: a suite run has no skipped tests to explain."""
    long = bool(config.getoption("--stress-long"))
    keep, drop = [], []
    for item in items:
        name = getattr(item, "originalname", item.name)
        if name == ("test_stress" if long else "test_stress_long"):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
