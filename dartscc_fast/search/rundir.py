"""A search's run directory, guarded: one writer at a time, and no run overwritten by accident.

:func:`claim_run_dir` takes an exclusive lock on ``<out>/.lock`` (``fcntl.flock`` on an open file,
which the kernel releases when its holder exits, however it dies), refuses a directory that already
holds a search unless told to ``resume`` it or ``force`` a new one over it, and removes the temporary
files of checkpoint writes that a killed process left behind.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

try:
    import fcntl
except ImportError:  # not on Windows: no lock there, the other guards still apply
    fcntl = None  # type: ignore[assignment]

from dartscc_fast.search.checkpoint import stale_temp_files

__all__ = ["RunDirError", "RunLock", "claim_run_dir", "LOCK_FILE", "RUN_FILES"]

LOCK_FILE = ".lock"
#: What marks a directory as holding a search (a checkpoint, or a log of one).
RUN_FILES = ("checkpoint.pt", "log.csv", "tensorboard")


class RunDirError(ValueError):
    """The run directory is in use by another process, or holds a run that was not to be touched."""


class RunLock:
    """An exclusive lock on ``<out>/.lock``; the file names its holder's process id.

    The file is left in place on release (removing it would let a waiting process lock a file that
    is no longer the one others open).
    """

    def __init__(self, out: Union[str, os.PathLike]):
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None or fcntl is None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: held by another open file (another process, or this one twice)
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{self.out} is in use by another search (process {holder} holds {self.path}); "
                              "wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def existing_run(out: Union[str, os.PathLike], names: Sequence[str] = RUN_FILES) -> List[str]:
    """The files of a previous search in ``out`` (empty if there are none)."""
    out = Path(out)
    return [n for n in names if (out / n).exists()]


def claim_run_dir(out: Union[str, os.PathLike], resume: bool = False, force: bool = False,
                  checkpoint: str = "checkpoint.pt") -> RunLock:
    """Create ``out`` if needed and lock it for this process; returns the held :class:`RunLock`.

    Args:
        resume: the caller continues the search in ``out``: its files are expected.
        force: the caller starts a new search over the one in ``out`` (whose checkpoint and log the new
            run replaces at its first checkpoint).
    Raises:
        RunDirError: another process holds the lock, or ``out`` holds a search and neither ``resume``
            nor ``force`` was given.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out).acquire()
    try:
        found = existing_run(out)
        if found and not (resume or force):
            raise RunDirError(f"{out} already holds a search ({', '.join(found)}); continue it with --resume, "
                              "replace it with --force, or choose another --out")
        for tmp in stale_temp_files(out / checkpoint):  # ours to remove: nobody else may write here now
            with contextlib.suppress(OSError):
                tmp.unlink()
    except BaseException:
        lock.release()
        raise
    return lock
