"""Advisory locks on folders that one process writes at a time (a training workdir, a ledger).

`hold_lock(path)` takes an exclusive `fcntl.flock` on the lock file `path` (created if absent)
and writes the holder's PID into it. A second process asking for the same lock is refused at
once with `LockError` naming the holder's PID and the path; it has written nothing. The kernel
releases a flock when its process dies, however it dies (SIGKILL included), so a lock left by
a killed process is taken over by the next one; the PID in the file is only for messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


class LockError(RuntimeError):
  """Another live process holds the lock; the message names its PID and the lock file."""


class FolderLock:
  """An exclusive lock held on a lock file until `release` (or the process ends)."""

  def __init__(self, path: str | os.PathLike, what: str = 'this folder'):
    """Takes the lock at `path` (its folder must exist).

    Args:
      path: the lock file, e.g. `<workdir>/train.lock`.
      what: how the refusal names the locked thing ('the training workdir runs/a').

    Raises:
      LockError: another process holds it.
    """
    self.path = os.fspath(path)
    self._fd: int | None = None
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 64).decode('ascii', 'replace').strip() or 'unknown'
      os.close(fd)
      raise LockError(f'{self.path}: {what} is in use by process {holder} (it holds this lock); '
                      'wait for it to finish or stop it, or use another folder') from None
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n'.encode())
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    """Releases the lock (the file stays; an unlocked file is free to take)."""
    if self._fd is not None:
      os.close(self._fd)  # closing the last descriptor releases the flock
      self._fd = None

  def __del__(self):
    self.release()


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, what: str = 'this folder') -> Iterator[FolderLock]:
  """`FolderLock(path, what)` for the duration of a `with` block."""
  lock = FolderLock(path, what)
  try:
    yield lock
  finally:
    lock.release()
