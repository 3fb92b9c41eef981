"""One trainer per workdir: an OS-level lock on WORKDIR/.lock, held while the run lives.

Two trainers writing the same checkpoints and metrics would corrupt each other's runs, so
the second one refuses with the holder's pid and host. `fcntl.flock` locks belong to the
open file, and the kernel drops them when the holder exits in any way (kill -9 included),
so there are no stale locks to clean up on a local filesystem: a restart just takes it.
On NFS, flock may be emulated with byte-range locks or be a no-op depending on the client;
the lock then protects only processes on the same host.

Only process 0 of a multi-process run takes the lock: its other processes share the
workdir by design.
"""

from __future__ import annotations

import fcntl
import os
import socket

from perceiver_jax.errors import UserError

LOCK_NAME = '.lock'


class WorkdirLock:
  """An acquired lock; `release()` (or process exit) frees it."""

  def __init__(self, fd: int | None, path: str):
    self._fd = fd
    self.path = path

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> WorkdirLock:
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def acquire(workdir: str, *, process_index: int = 0) -> WorkdirLock:
  """Locks `workdir` for this run, or raises a UserError naming the holder.

  The lock file is only read by a refused trainer, never written, so the holder's files
  stay untouched.
  """
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  if process_index != 0:
    return WorkdirLock(None, path)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'another process'
    os.close(fd)
    raise UserError(f'Another trainer ({holder}) is using workdir {os.path.dirname(path)}; '
                    f'wait for it to finish or stop it, or choose another --workdir.') from None
  # Who holds it, for the message a second trainer prints.
  os.ftruncate(fd, 0)
  os.pwrite(fd, f'pid {os.getpid()} on host {socket.gethostname()}\n'.encode(), 0)
  return WorkdirLock(fd, path)
