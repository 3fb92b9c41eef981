"""Run output: metrics as JSON lines in the workdir, and a progress bar or plain log lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import jax


class MetricsLog:
  """Appends {'step', 'split', ...metrics} records to WORKDIR/metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str, filename: str = 'metrics.jsonl'):
    self.path = os.path.join(workdir, filename)
    self.enabled = jax.process_index() == 0

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, 'time': round(time.time(), 3)}
    record.update({k: _plain(v) for k, v in metrics.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')


def _plain(value):
  try:
    return round(float(value), 6) if not isinstance(value, int) else value
  except (TypeError, ValueError):
    return value


def read(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def format_metrics(metrics: dict) -> str:
  parts = []
  for k, v in metrics.items():
    if isinstance(v, float):
      parts.append(f'{k}={v:.4g}' if k in ('learning_rate',) else f'{k}={v:.4f}')
    else:
      parts.append(f'{k}={v}')
  return ' '.join(parts)


class Progress:
  """A tqdm bar with ETA on an interactive terminal; log lines otherwise (CI, files)."""

  def __init__(self, start: int, total: int):
    self.interactive = sys.stderr.isatty() and jax.process_index() == 0
    self.bar = None
    if self.interactive:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)

  def update(self, step: int, metrics: dict | None = None) -> None:
    if self.bar is not None:
      self.bar.n = step
      if metrics:
        # The bar keeps to the headline numbers; metrics.jsonl has them all.
        shown = {k: f'{metrics[k]:.4g}' for k in ('loss', 'accuracy') if k in metrics}
        self.bar.set_postfix(shown, refresh=False)
      self.bar.refresh()
    elif metrics and jax.process_index() == 0:
      logging.info('step %d: %s', step, format_metrics(metrics))

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
