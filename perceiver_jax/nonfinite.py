"""NaN/Inf guard for the training loop: stop naming the step, or skip bad steps by config.

Each train step returns `metrics['finite']` (loss and gradients finite), computed on the
device. Reading it every step would make the host wait for the device every step, so the
loop keeps the flags and reads them at its sync points: log steps, eval steps and before
every checkpoint save. A non-finite state is therefore never saved: the run stops with the
last good checkpoint in place, whichever step the NaN appeared at.

With train.skip_nonfinite (and always for float16, whose loss scaling skips overflowing
steps) a non-finite step leaves the state unchanged instead (trainer.make_train_step); the run stops only
after train.max_consecutive_skips such steps in a row.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from perceiver_jax.errors import UserError


class NonFiniteError(UserError):
  """Training produced NaN or Inf; the last good checkpoint is kept."""


class NonFiniteWatch:
  """Collects per-step `finite` flags (device scalars) and checks them at sync points."""

  def __init__(self, config):
    self.skip = bool(config.train.get('skip_nonfinite', False))
    self.max_consecutive = int(config.train.get('max_consecutive_skips', 10))
    if config.model.get('dtype', 'float32') == 'float16':
      self.skip = True
      # Overflow skips are normal until the loss scale has come down: allow for the halvings.
      self.max_consecutive += int(math.log2(max(float(config.train.loss_scale_init), 1.0)))
    self.skipped = 0        # non-finite steps skipped in this run (since start or resume)
    self.consecutive = 0    # of which, in a row up to the last checked step
    self._pending: list[tuple[int, jax.Array]] = []

  def add(self, step: int, metrics: dict) -> dict:
    """Records the flag of `step` (the step count after it); returns the other metrics."""
    metrics = dict(metrics)
    self._pending.append((step, metrics.pop('finite')))
    return metrics

  def check(self, manager) -> None:
    """Reads the pending flags; raises NonFiniteError at the first step that must stop.

    manager: the run's CheckpointManager; its last good checkpoint is finished and named.
    """
    if not self._pending:
      return
    steps, flags = zip(*self._pending)
    self._pending = []
    for step, ok in zip(steps, np.asarray(jax.device_get(list(flags)))):
      if ok:
        self.consecutive = 0
        continue
      manager.wait_until_finished()  # an earlier, good save in flight completes
      last_checkpoint, where = manager.latest_step(), manager.directory
      kept = (f'the last good checkpoint (step {last_checkpoint}) is kept in {where}'
              if last_checkpoint else f'no checkpoint was saved before it in {where}')
      if not self.skip:
        raise NonFiniteError(
            f'The loss or gradients became NaN or Inf at step {step}; {kept}: lower '
            f'optimizer.learning_rate or check the data, or set train.skip_nonfinite=True '
            f'to skip such steps.')
      self.skipped += 1
      self.consecutive += 1
      if self.consecutive >= self.max_consecutive:
        raise NonFiniteError(
            f'The loss or gradients were NaN or Inf for {self.consecutive} steps in a row, up '
            f'to step {step} (train.max_consecutive_skips={self.max_consecutive}); {kept}: '
            f'lower optimizer.learning_rate or check the data.')
