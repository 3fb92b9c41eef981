"""Graceful stop on SIGTERM/SIGINT: finish the step, save a checkpoint, exit 0, resume later.

Cluster schedulers (SLURM, Kubernetes, preemptible VMs) send SIGTERM some seconds before
they kill a job; Ctrl-C sends SIGINT. The handler only records the signal: the training
loop asks `StopRequest.should_stop(step)` between steps, so the state is never saved in the
middle of an update.

Multi-process runs must all stop at the same step (they save one checkpoint together), but
a signal may reach only some processes. There `should_stop` is collective: every process
calls it at the same steps (the loop's sync points: log and checkpoint steps, when the host
waits for the device anyway) and they stop if any process was signalled. A single process
checks its own flag at every step at no cost.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Context manager: while open, SIGTERM/SIGINT set a flag instead of killing the process.

  On exit the previous handlers come back, so a second Ctrl-C after the run (or in a test
  harness) behaves as before.
  """

  def __init__(self, signals=SIGNALS):
    self.signals = tuple(signals)
    self.received: str | None = None  # name of the first signal received
    self._previous = {}

  def __enter__(self) -> StopRequest:
    # Handlers can only be installed from the main thread (e.g. not inside a worker thread).
    if threading.current_thread() is threading.main_thread():
      for sig in self.signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    if self.received is not None:
      # A second signal means "now": behave as if we had never caught it.
      previous = self._previous.get(signum, signal.SIG_DFL)
      signal.signal(signum, previous)
      if callable(previous):
        previous(signum, frame)
      else:
        os.kill(os.getpid(), signum)
      return
    self.received = signal.Signals(signum).name
    # Logging from a signal handler is safe enough here: it runs between bytecodes.
    logging.warning('Received %s; stopping after the current step and saving a checkpoint '
                    '(send it again to stop at once, without one).', self.received)

  def should_stop(self, at_sync_point: bool) -> bool:
    """Whether to stop after this step; collective across processes at sync points.

    Every process must pass the same `at_sync_point` for the same step (the loop's log and
    checkpoint steps qualify: they are a function of the step number alone).
    """
    if jax.process_count() == 1:
      return self.received is not None
    if not at_sync_point:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    if self.received is None and np.any(flags):
      self.received = 'a signal on another process'
    return bool(np.any(flags))


def stopped_message(received: str, step: int, directory: str) -> str:
  """What a preempted run says as it exits."""
  return (f'Received {received} at step {step}; saved checkpoint {step} in {directory}; '
          f'rerun the same command to resume.')
