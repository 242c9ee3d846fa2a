"""``postgres_bin_dir``: the one lookup of PostgreSQL's server binaries (tests, fault harness, bench).

Debian installs each major version in ``/usr/lib/postgresql/<major>/bin`` (15 on Debian 12, newer on
13); nothing may assume one number. Fake layouts in temp dirs: only directory listing is tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fencelock_chaos.servers import postgres_bin_dir


def _install(root: Path, major: str, binaries: tuple[str, ...] = ("initdb", "postgres")) -> Path:
    bindir = root / major / "bin"
    bindir.mkdir(parents=True)
    for name in binaries:
        (bindir / name).write_text("")
    return bindir


def test_the_newest_major_version_wins_numerically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FENCELOCK_PG_BIN", raising=False)
    _install(tmp_path, "9.6")
    _install(tmp_path, "13")
    newest = _install(tmp_path, "17")
    _install(tmp_path, "18", binaries=("psql",))  # a client-only install: no server here
    (tmp_path / "not-a-version").mkdir()
    assert postgres_bin_dir(tmp_path) == newest


def test_the_override_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = _install(tmp_path, "custom")
    monkeypatch.setenv("FENCELOCK_PG_BIN", str(chosen))
    assert postgres_bin_dir(tmp_path / "absent") == chosen
    monkeypatch.setenv("FENCELOCK_PG_BIN", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="FENCELOCK_PG_BIN"):
        postgres_bin_dir()


def test_nothing_installed_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FENCELOCK_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="apt-get install postgresql"):
        postgres_bin_dir(tmp_path / "none")


def test_this_machine_has_one() -> None:
    """The test run needs a server (scripts/test installs Debian's package when none is there)."""
    bindir = postgres_bin_dir()
    assert (bindir / "initdb").is_file() and (bindir / "postgres").is_file()
