"""One `trackedit train` per work directory: an exclusive `fcntl.flock` on `WORKDIR/train.lock`.

The lock file holds the holder's pid and host name (for the message a second run prints). The kernel
drops a flock when its process ends however it ends (SIGKILL included), so a lock left by a killed run
is free and the next run takes it over; nothing has to guess whether a pid is still alive. flock is
exclusive between processes of one machine and on shared file systems that support it (Lustre, NFSv4);
on a file system that does not, two runs on two hosts are not kept apart.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import socket
import time

LOCK_NAME = "train.lock"


class WorkdirBusyError(OSError):
    """Another live process holds the work directory's lock."""


class WorkdirLock:
    """Hold `WORKDIR/train.lock` exclusively from construction until `release()` (or the process ends).

    Args:
      workdir: the run directory (created if missing).
    Raises:
      WorkdirBusyError if a live process holds the lock (the message names its pid and host).
    """

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise WorkdirBusyError(
                f"{self.workdir} is in use by another `trackedit train` ({self.holder()}); wait for it to end, "
                "stop it, or choose another --workdir"
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd: int | None = fd

    def holder(self) -> str:
        """'pid P on HOST since T' from the lock file (as far as it can be read)."""
        try:
            h = json.loads(self.path.read_text())
            return f"pid {h['pid']} on {h['host']} since {h['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race a waiter)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
