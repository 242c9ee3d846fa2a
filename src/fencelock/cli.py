"""``fencelock``: the command line.

Commands come from the ``fencelock.commands`` entry-point group, so the library itself imports
nothing from the demo or the fault harness: ``fencelock_demo`` adds ``produce``, ``consume`` and
``demo``; ``fencelock_chaos`` adds ``chaos``; ``fencelock._cli_ops`` adds ``run``, ``status`` and
``release``. Each entry point names a list of click commands.
"""

from __future__ import annotations

import logging
import sys
from importlib import metadata
from typing import Any

import click

from . import __version__

GROUP = "fencelock.commands"

EXIT_USAGE = 64
"""Bad usage, for every subcommand: sysexits.h's EX_USAGE (click's own default is 2, which
``fencelock run`` cannot use: it passes on its command's exit status, and 2 is a common one)."""


class _Group(click.Group):
    """The ``fencelock`` group: every usage error, in the group or in any subcommand (options,
    arguments, bad values, a ``UsageError`` raised by a command itself) exits with ``EXIT_USAGE``."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:
            err.exit_code = EXIT_USAGE  # type: ignore[misc]  # click reads it per instance
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            err.exit_code = EXIT_USAGE  # type: ignore[misc]
            raise


@click.group(
    cls=_Group,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="\b\nExit status: 64 bad usage (any subcommand: unknown option, missing argument, bad value\n"
    "or URL); each subcommand's --help lists its other codes.",
)
@click.version_option(__version__, prog_name="fencelock")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """fencelock: a distributed lock with leases and fencing tokens, and the file-ingest demo
    system built on it.

    \b
    Start here:
      fencelock demo                   producer + competing consumers on embedded defaults
      fencelock run NAME --lock URL -- CMD...   run a command under a lock
      fencelock status NAME --lock URL          who holds a lock
      fencelock chaos                  the demo under injected faults, checked

    Lock URLs: see --lock in each command's --help.
    """
    if ctx.invoked_subcommand is None:  # bare `fencelock`: a question, not a mistake
        click.echo(ctx.get_help())
        ctx.exit(0)
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if verbose == 0:
        # kazoo warns on every dropped connection; fencelock reports what matters (doubt, loss)
        logging.getLogger("kazoo").setLevel(logging.ERROR)


def _load_commands() -> None:
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        try:
            commands = ep.load()
        except ImportError as err:  # an optional part whose dependencies are missing
            print(f"fencelock: commands {ep.name!r} unavailable: {err}", file=sys.stderr)
            continue
        for command in commands:
            main.add_command(command)


_load_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
