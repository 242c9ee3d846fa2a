"""The documentation, as a reader uses it: every ```python block in README.md and docs/*.md runs as
written, each in its own process and fresh working directory, against real servers that the test
starts on loopback (a Redis-compatible server on 127.0.0.1, a ZooKeeper server or a PostgreSQL when
a block needs one). The examples say ``redis://localhost:6379``, ``localhost:2181`` and
``postgresql://postgres@localhost/app`` as a reader's would; the test points those at its own
servers. A block that is deliberately not runnable is marked ```python no-run; there are very few
of them.

Also: the licence is in the repository and in the built wheel, the changelog has its sections, the
README says what is supported and how to install, and no page uses tracker wording."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fencelock.embedded import find_server_binary
from servers import DEBIAN_REDIS, free_port, kill_pid, wait_ping

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.M | re.S)
MAX_NO_RUN = 2


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    info: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(Block(page, line, m.group(1).strip(), m.group(2)))
    return found


BLOCKS = python_blocks()
RUNNABLE = [b for b in BLOCKS if "no-run" not in b.info]


@pytest.fixture(scope="module")
def redis_tcp() -> Iterator[str]:
    """A Redis-compatible server on 127.0.0.1 (Debian's redis-server, else the embedded binary)."""
    binary = DEBIAN_REDIS if os.access(DEBIAN_REDIS, os.X_OK) else find_server_binary()
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="fl-docs-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_ping(proc, port, "docs redis-server")
        yield f"127.0.0.1:{port}"
    finally:
        kill_pid(proc.pid)
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_there_are_python_examples_and_almost_all_run() -> None:
    assert len(RUNNABLE) >= 6, [b.id for b in BLOCKS]
    no_run = [b.id for b in BLOCKS if "no-run" in b.info]
    assert len(no_run) <= MAX_NO_RUN, f"too many examples marked no-run: {no_run}"


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_python_example_runs_as_written(block: Block, redis_tcp: str, request: pytest.FixtureRequest,
                                        tmp_path: Path) -> None:
    code = block.code.replace("localhost:6379", redis_tcp)
    if "localhost:2181" in code:
        zk: Any = request.getfixturevalue("zookeeper_server")
        code = code.replace("localhost:2181", zk.hosts)
    if "postgresql://postgres@localhost/app" in code:
        pg: Any = request.getfixturevalue("postgres_server")
        code = code.replace("postgresql://postgres@localhost/app", pg.url)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{block.id} failed:\n{code}\n--- stderr ---\n{result.stderr}"


# -- licence, changelog, README facts -------------------------------------------------------------


def test_license_is_mit_with_the_contributors_copyright() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "fencelock contributors" in text
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.slow
def test_the_built_wheel_carries_the_license(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(tmp_path), "--no-deps", "-q"],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("fencelock-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        licences = [n for n in zf.namelist() if n.endswith("/LICENSE") and ".dist-info/" in n]
        assert licences, zf.namelist()
        assert zf.read(licences[0]).decode().startswith("MIT License")


def test_changelog_has_an_unreleased_section_and_the_first_release() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## \[?Unreleased\]?", text, re.M)
    assert re.search(r"^## \[?0\.1\.0\]?", text, re.M)
    assert text.index("Unreleased") < text.index("0.1.0")


def test_readme_says_how_to_install_and_what_is_supported() -> None:
    text = (ROOT / "README.md").read_text()
    assert "pip install ." in text
    for extra in ("embedded", "zookeeper", "postgres", "otel", "all", "dev"):
        assert f"`{extra}`" in text, extra
    assert "Python 3.10 to 3.13" in text
    for server in ("Redis 6.2", "valkey 7.2", "ZooKeeper 3.8", "PostgreSQL 15"):
        assert server in text, server
    requires = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert requires is not None and requires.group(1) == "3.10"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_no_tracker_wording(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\b(issue|item|ticket)s? #?\d", text, re.I), page


def test_the_status_example_in_operating_md_matches_what_status_prints(tmp_path: Path) -> None:
    """The ```sh example of `fencelock status` is output a reader compares with theirs: same line
    shape, same JSON keys, for a lock held by `fencelock run`'s kind of lease."""
    import json

    import fencelock

    text = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    example = text[text.index("$ fencelock status nightly-report"):]
    example = example[: example.index("```")]
    doc_line = example.splitlines()[1]
    doc_json = json.loads(" ".join(example[example.index("{"):].split()))
    url = f"sqlite:///{tmp_path}/locks.db"
    lease = fencelock.Lock("nightly-report", url, ttl=30).acquire()
    try:
        cli = [sys.executable, "-m", "fencelock.cli", "status", "nightly-report", "--lock", url]
        human = subprocess.run(cli, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        as_json = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL)
    finally:
        lease.release()
    assert human.returncode == 0 and as_json.returncode == 0, human.stderr + as_json.stderr
    shape = re.compile(r"^nightly-report: held by \S+, fence \d+ \(as an election: leader \S+, term \d+\), "
                       r"[\d.]+ s left, waiters \d+$")
    assert shape.match(doc_line), doc_line
    assert shape.match(human.stdout.splitlines()[0]), human.stdout
    printed = json.loads(as_json.stdout)
    assert set(printed) == set(doc_json), (sorted(printed), sorted(doc_json))
    assert set(printed["holders"][0]) == set(doc_json["holders"][0])
