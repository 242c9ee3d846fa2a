"""This boot's id, which tells rows of an earlier boot (whose CLOCK_MONOTONIC deadlines mean nothing
now) from live ones; see "An unreadable boot id" in the package docstring."""

from __future__ import annotations

import logging
import sys

__all__ = ["BOOT_ID_PATH", "UNKNOWN_BOOT", "read_boot_id"]

log = logging.getLogger("fencelock")

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
UNKNOWN_BOOT = "unknown"
"""The boot id recorded by a process that cannot read one."""

_told_unknown = False


def read_boot_id(path: str | None = None) -> str:
    """This boot's id: changes at every reboot, which resets ``CLOCK_MONOTONIC``.

    ``UNKNOWN_BOOT`` where it cannot be read (not Linux, or hidden by a sandbox): then the "deadline
    at most ttl ahead" check and the deadline itself make rows of an earlier boot expire (at the
    latest ``ttl`` after the reboot), and a live row is never taken for one of another boot.
    ``path`` is for tests; the default is ``BOOT_ID_PATH``.
    """
    global _told_unknown
    source = BOOT_ID_PATH if path is None else path
    try:
        with open(source, encoding="ascii") as f:
            boot = f.read().strip()
        problem = "it is empty"
    except (OSError, UnicodeDecodeError) as err:
        boot, problem = "", f"{type(err).__name__}: {err}"
    if boot and boot != UNKNOWN_BOOT:
        return boot
    if not _told_unknown and sys.platform.startswith("linux"):
        _told_unknown = True
        log.info(
            "cannot read the boot id from %s (%s): SQLite leases are judged by their deadlines alone, "
            "so after a reboot an old lease lingers until its ttl ends (safe, only slower); "
            "show the file to this process (e.g. systemd ProcSubset=all) to expire them at once",
            source, problem,
        )
    return UNKNOWN_BOOT
