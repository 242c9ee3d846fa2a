"""The registry is the only list of backends, and optional abilities are asked one way.

``fencelock.backends.REGISTRY`` drives every list of backends (URL messages, CLI help, lazy
exports); ``fencelock.backends.base.OPTIONAL`` names every optional ability, asked with
``isinstance`` on its protocol. These tests read the source: a list kept by hand, or an ability
asked with ``getattr``/``hasattr``, is found before it goes stale.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import fencelock
from fencelock import aio
from fencelock.backends import REGISTRY, url_help
from fencelock.backends.base import OPTIONAL

SRC = Path(__file__).resolve().parent.parent / "src"
ABILITIES = {attr for _, attr in OPTIONAL}
BACKEND_PACKAGES = {SRC / "fencelock" / "backends" / spec.name for spec in REGISTRY}
GENERATED = {SRC / "fencelock" / "_sync" / "lock.py", SRC / "fencelock" / "_sync" / "primitives.py"}

DATABASE_URLS = {SRC / "fencelock_demo" / "store.py", SRC / "fencelock_demo" / "consumer.py"}
"""The demo's own database URLs (sqlite:/// or postgresql://): not lock backends."""


def _sources() -> list[Path]:
    return sorted(
        p for p in SRC.rglob("*.py")
        if not any(pkg in p.parents for pkg in BACKEND_PACKAGES) and p not in GENERATED
    )


def test_no_optional_ability_is_asked_with_getattr_or_hasattr() -> None:
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and node.args[1].value in ABILITIES
            ):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert not found, "ask optional abilities with isinstance on their protocol (base.OPTIONAL):\n" + "\n".join(found)


def _scheme_pattern() -> re.Pattern[str]:
    schemes = sorted((s for spec in REGISTRY for s in spec.schemes), key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(map(re.escape, schemes)) + r")://")


def test_no_list_of_backends_is_kept_by_hand() -> None:
    """No line outside the registry and the backends' own packages names the URL schemes of two
    backends or more (such a list is stale as soon as a backend is added: use url_help())."""
    scheme_of = {s: spec.name for spec in REGISTRY for s in spec.schemes}
    pattern = _scheme_pattern()
    registry = SRC / "fencelock" / "backends" / "__init__.py"
    found = []
    for path in _sources():
        if path == registry or path in DATABASE_URLS:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if '"--db"' in line:
                continue  # the demo's database option: sqlite:/// or postgresql:// databases
            backends = {scheme_of[m] for m in pattern.findall(line)}
            if len(backends) >= 2:
                found.append(f"{path.relative_to(SRC)}:{lineno}: {line.strip()}")
    assert not found, "hand-kept lists of backends (use fencelock.backends.url_help()):\n" + "\n".join(found)


def _lock_option_helps() -> list[tuple[str, str]]:
    import click

    from fencelock.cli import main
    from fencelock_demo.cli import consume, demo

    with click.Context(main) as ctx:
        commands = [main.get_command(ctx, n) for n in ("run", "status", "release")]
    helps = []
    for command in [*commands, consume, demo]:
        assert command is not None
        for param in command.params:
            if isinstance(param, click.Option) and "--lock" in param.opts:
                helps.append((str(command.name), param.help or ""))
    assert len(helps) == 5, helps
    return helps


@pytest.mark.parametrize("spec", REGISTRY, ids=lambda s: s.name)
def test_every_registered_backend_is_in_the_message_the_exports_and_the_help(spec: object) -> None:
    assert spec.title in url_help() and spec.url_example in url_help()  # type: ignore[attr-defined]
    # exported by name always; by `import *` when that needs no optional library
    assert getattr(fencelock, spec.export) is spec.load(asyncio=False)  # type: ignore[attr-defined]
    assert getattr(aio, spec.export) is spec.load(asyncio=True)  # type: ignore[attr-defined]
    starred = spec.extra is None  # type: ignore[attr-defined]
    assert (spec.export in fencelock.__all__) is starred and (spec.export in aio.__all__) is starred  # type: ignore[attr-defined]
    with pytest.raises(fencelock.ConfigurationError) as err:
        fencelock.Lock("x", "nosuch://host")
    assert spec.url_example in str(err.value)  # type: ignore[attr-defined]
    for command, text in _lock_option_helps():
        assert spec.schemes[0] + "://" in text, f"--lock of {command} does not name {spec.name}: {text}"  # type: ignore[attr-defined]


def test_a_test_server_is_put_in_the_suites_with_one_call() -> None:
    # docs/architecture.md, "Adding a backend": one register() call, not two dicts kept in step
    import servers

    assert set(servers.BACKENDS) == set(servers.CAPABILITIES)

    class Toy(servers.LockServer):
        capabilities = frozenset({"counted"})

    servers.register("toy", "toy_server", Toy)
    try:
        assert servers.BACKENDS["toy"] == "toy_server"
        assert servers.capabilities_of("toy") == {"counted"}
    finally:
        del servers.BACKENDS["toy"], servers.CAPABILITIES["toy"]


@pytest.mark.parametrize("module", ["fencelock", "fencelock.aio"])
def test_a_star_import_works_without_the_optional_client_libraries(module: str) -> None:
    # The base install has no kazoo or psycopg: `from fencelock import *` must not need them
    # (the backends that do stay reachable by name, with the message naming their extra).
    import subprocess
    import sys

    optional = sorted({r for spec in REGISTRY for r in spec.requires})
    assert optional, "some backend needs an optional library"
    code = (
        f"import sys\nfor m in {optional!r}: sys.modules[m] = None\n"
        f"from {module} import *\nimport {module} as m\n"
        "print(m.Lock.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for spec in REGISTRY:
        if spec.extra is None:
            continue
        # by name: the class (a backend that imports its library lazily), or the extra to install
        code = (
            f"import sys\nfor m in {optional!r}: sys.modules[m] = None\nimport {module} as m\n"
            f"try:\n    m.{spec.export}\nexcept m.ConfigurationError as err:\n"
            f"    assert 'fencelock[{spec.extra}]' in str(err), err\n"
        ).replace("m.ConfigurationError", "__import__('fencelock').ConfigurationError")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
