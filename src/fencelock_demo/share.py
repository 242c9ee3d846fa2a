"""The shared folder, touched only in ways that cannot escape it.

Layout: ``SHARE/<file>`` waiting files (written by the producer with an atomic rename),
``SHARE/done/`` archived files, ``SHARE/quarantine/`` refused files with ``<file>.reason.txt``
beside each, ``SHARE/.tmp/`` temporary files. Names starting with a dot are never work.

Why so careful: the share is writable by every producer and consumer host, so anything in it may
be a symlink to ``/etc/shadow`` or a FIFO that blocks a reader forever. Every file is opened relative
to a descriptor of the share directory, by a plain name (no ``/``), with ``O_NOFOLLOW`` (a symlink
fails to open) and ``O_NONBLOCK`` (a FIFO does not block), and must then be a regular file
(``fstat``). The ``done`` and ``quarantine`` folders must be real directories, not links.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DONE", "QUARANTINE", "TMP", "NotRegularFile", "Share"]

DONE = "done"
QUARANTINE = "quarantine"
TMP = ".tmp"
CHUNK = 64 * 1024


class NotRegularFile(OSError):
    """The name is a symlink, FIFO, socket or device: never read through it."""


@dataclass
class Listing:
    ready: list[str] = field(default_factory=list)
    unsafe: dict[str, str] = field(default_factory=dict)  # name -> why it is not work


def _valid_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\x00" not in name and not name.startswith(".")


class Share:
    """A share directory, with its ``done``, ``quarantine`` and ``.tmp`` folders created."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in (DONE, QUARANTINE, TMP):
            p = self.root / sub
            try:
                p.mkdir()
            except FileExistsError:
                pass
            st = os.lstat(p)
            if not stat.S_ISDIR(st.st_mode):
                raise NotRegularFile(errno.ENOTDIR, f"{p} must be a real directory (not a symlink)", str(p))
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def listing(self) -> Listing:
        """Waiting files, and the entries that look like files but must not be read."""
        out = Listing()
        with os.scandir(self.fd) as it:
            for entry in it:
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    if entry.is_symlink():
                        out.unsafe[name] = "a symbolic link (never followed)"
                    elif entry.is_dir(follow_symlinks=False):
                        continue
                    elif entry.is_file(follow_symlinks=False):
                        if not name.endswith(".reason.txt"):
                            out.ready.append(name)
                    else:
                        out.unsafe[name] = "not a regular file (FIFO, socket or device)"
                except OSError:  # vanished between readdir and stat
                    continue
        return out

    def count(self, sub: str, suffix: str = "") -> int:
        try:
            with os.scandir(self.root / sub) as it:
                return sum(1 for e in it if not e.name.startswith(".") and e.name.endswith(suffix)
                           and not e.name.endswith(".reason.txt"))
        except FileNotFoundError:
            return 0

    def open(self, name: str) -> int:
        """A read-only descriptor of the regular file ``name`` in the share. Raises
        ``FileNotFoundError`` when it vanished, ``NotRegularFile`` for links and special files."""
        if not _valid_name(name):
            raise NotRegularFile(errno.EINVAL, "not a plain file name in the share", name)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise NotRegularFile(errno.ELOOP, "a symbolic link (never followed)", name) from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotRegularFile(errno.EINVAL, "not a regular file", name)
        return fd

    @staticmethod
    def chunks(fd: int, size: int = CHUNK) -> Iterator[bytes]:
        """Read ``fd`` from its start in chunks (pread: the position is ours alone)."""
        offset = 0
        while True:
            data = os.pread(fd, size, offset)
            if not data:
                return
            offset += len(data)
            yield data

    def archive(self, name: str) -> None:
        """Move ``name`` to ``done/`` (after its rows were committed)."""
        os.rename(name, f"{DONE}/{name}", src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def remove(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)

    def reason_writer(self, name: str) -> ReasonFile:
        return ReasonFile(self, name)

    def quarantine(self, name: str, reason: ReasonFile) -> None:
        """Put the reason beside the quarantined file first, then move the file: a crash in between
        leaves the file waiting (it is refused again, and the reason rewritten)."""
        reason.close()
        os.rename(reason.tmp_name, f"{QUARANTINE}/{name}.reason.txt", src_dir_fd=self.fd, dst_dir_fd=self.fd)
        reason.count = 0  # renamed: nothing left to discard
        os.rename(name, f"{QUARANTINE}/{name}", src_dir_fd=self.fd, dst_dir_fd=self.fd)


class ReasonFile:
    """The reasons a file is refused, written to disk as they are found (never all held in memory).
    The temporary file is created at the first bad line: a good file costs nothing here."""

    def __init__(self, share: Share, name: str) -> None:
        self.name = name
        self.tmp_name = f"{TMP}/.{name}.{os.getpid()}.reason"
        self._share = share
        self._fd = -1
        self.count = 0

    def add(self, line_no: int, reason: str) -> None:
        if self._fd < 0:
            self._fd = os.open(
                self.tmp_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                dir_fd=self._share.fd,
            )
            os.write(self._fd, f"{self.name}: refused, no row of it was written. Bad lines:\n".encode())
        self.count += 1
        where = "file" if line_no == 0 else f"line {line_no}"
        os.write(self._fd, f"{where}: {reason}\n".encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        if self._fd < 0 and self.count == 0:
            return
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.tmp_name, dir_fd=self._share.fd)
        except FileNotFoundError:
            pass
