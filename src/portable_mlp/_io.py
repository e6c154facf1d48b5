"""The one way this package writes a file: atomically, through a temporary file beside it.

Checkpoints (:func:`portable_mlp.save`) and the command line's ``--plot`` and ``--output`` all
write through :func:`atomic_writer`. The bytes go to ``.<name>.<pid>.<random>.tmp`` in the
target's folder, are flushed and synced, and only then renamed over the target, so a reader sees
the old file or the new one, never a part. A failed write removes its temporary file; a killed
one cannot, so every write first removes the stale temporary files of earlier writes to the same
name (see :func:`_remove_stale`).

Why named temporary files rather than an invisible ``O_TMPFILE`` linked into place: linking one
needs ``/proc/self/fd`` (which refused with EXDEV on the machines this was written on) or
``linkat(AT_EMPTY_PATH)`` (which needs ``CAP_DAC_READ_SEARCH``), and the rename over an existing
file still needs a visible name for a moment; a second code path would still need this cleanup.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["atomic_writer", "write_atomic"]

# A temporary file untouched this long, whose writer is gone, is left over from a killed write.
# The wait keeps a live writer's file safe where its process id means nothing here (another
# machine on a shared folder, another PID namespace) unless it stalled for this long.
STALE_AFTER_S = 60.0
# Past this age a temporary file is stale whoever wrote it (its process id may have been reused).
ABANDONED_AFTER_S = 24 * 3600.0


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module's docstring)."""
    with atomic_writer(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new contents to; they replace ``path`` when the block
    ends without an error, and are discarded when it raises.

    Errors about the folder (missing, not writable) name ``path``, not the temporary file.
    """
    target = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(target)
    _remove_stale(directory, name)
    fd, tmp = _create_temp(os.fspath(path), directory, name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible as `path`
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_directory(directory)


def _create_temp(given: str, directory: str, name: str) -> tuple[int, str]:
    """A new, empty ``.<name>.<pid>.<random>.tmp`` in ``directory``, opened for writing.

    Not ``tempfile.mkstemp``: it creates files with mode 0600, which the rename would pass on to
    the target. Mode 0666 here is narrowed by the umask, as ``open(path, "wb")`` would be.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # a leftover with the same 64 random bits: draw again
            continue
        except OSError as exc:  # no such folder, no permission...: about `path`, not `tmp`
            raise type(exc)(exc.errno, exc.strerror, given) from None


def _remove_stale(directory: str, name: str) -> None:
    """Remove ``.<name>.<pid>.<random>.tmp`` files in ``directory`` left by killed writes.

    Stale: untouched for :data:`STALE_AFTER_S` and written by a process that no longer runs,
    or untouched for :data:`ABANDONED_AFTER_S`. Best effort: a file that vanishes meanwhile
    (another writer cleaning up) or cannot be removed is left alone.
    """
    prefix = f".{name}."
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(prefix)]
    except OSError:
        return  # the write itself reports a missing or unreadable folder
    now = time.time()
    for entry in entries:
        pid = _writer_pid(entry.name[len(prefix) :])
        if pid is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        age = now - info.st_mtime
        if age > ABANDONED_AFTER_S or (age > STALE_AFTER_S and not _running(pid)):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _writer_pid(rest: str) -> int | None:
    """The process id in ``<pid>.<16 hex digits>.tmp``, or None for any other name."""
    pid, dot, tail = rest.partition(".")
    token, _, suffix = tail.partition(".")
    if not (dot and pid.isdigit() and suffix == "tmp" and len(token) == 16):
        return None
    if any(c not in "0123456789abcdef" for c in token):
        return None
    return int(pid)


def _running(pid: int) -> bool:
    # On Windows os.kill(pid, 0) would not probe but terminate the process: only age counts there.
    if pid == os.getpid() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # exists (another user's), or cannot tell: keep the file
    return True


def _sync_directory(directory: str) -> None:
    """Make the rename itself durable, where the platform lets a folder be synced."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # Windows opens no folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
