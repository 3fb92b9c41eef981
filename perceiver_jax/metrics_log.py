"""Run output: metrics as JSON lines in the workdir, and a progress bar or plain log lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import jax
import numpy as np
from tqdm import tqdm


class MetricsLog:
  """Appends {'step', 'split', ...metrics} records to WORKDIR/metrics.jsonl (process 0 only),
  and the same scalars to TensorBoard event files in WORKDIR/tensorboard/<split>/.

  One TensorBoard run per split, so train and eval curves of a tag ('loss') overlay. Events
  are written and flushed synchronously at each call: a killed run leaves readable files.
  `start_step` > 0 (a resumed run) marks the new event files so TensorBoard hides the old
  run's events after that step, which this run logs again. Usable as a context manager.

  API for other loggers (e.g. latent telemetry at eval time):
    write(step, split, {'name': float, ...})   scalars, to metrics.jsonl and TensorBoard
    write_image(step, split, tag, image)        an image [height, width, 1|3|4] (or
                                                [height, width]) uint8, to TensorBoard only
  """

  def __init__(self, workdir: str, filename: str = 'metrics.jsonl', start_step: int = 0):
    self.path = os.path.join(workdir, filename)
    self.workdir = workdir
    self.enabled = jax.process_index() == 0
    self.start_step = int(start_step)
    self._events = {}  # split -> tensorboardX EventsWriter, opened at its first event

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, 'time': round(time.time(), 3)}
    record.update({k: _plain(v) for k, v in metrics.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    # tensorboardX loads only where events are written (process 0; not perceiver-report).
    from tensorboardX.summary import scalar
    values = [scalar(k, float(v)).value[0] for k, v in metrics.items() if _is_number(v)]
    self._write_event(split, step, record['time'], values)

  def write_image(self, step: int, split: str, tag: str, image) -> None:
    """Logs `image` ([height, width, channels] with 1, 3 or 4 channels, or [height, width];
    uint8 in [0, 255] or float in [0, 1]) under `tag` in WORKDIR/tensorboard/<split>/."""
    if not self.enabled:
      return
    # On use, as in write.
    from tensorboardX.summary import image as image_summary
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
      raise ValueError(f'write_image wants [height, width(, 1|3|4)], got shape {image.shape}.')
    summary = image_summary(tag, image, dataformats='HWC' if image.ndim == 3 else 'HW')
    self._write_event(split, step, time.time(), list(summary.value))

  def write_run_info(self, start_step: int, summary: dict, mesh_shape: dict) -> None:
    """Records the model summary (parameter count, FLOPs) and this run segment's devices in
    WORKDIR/run_info.json, so `perceiver-report` needs neither the model nor a checkpoint."""
    if not self.enabled:
      return
    path = os.path.join(self.workdir, RUN_INFO)
    info = {}
    if os.path.exists(path):
      with open(path) as f:
        info = json.load(f)
    info.update(num_params=int(summary['num_params']),
                output_shape=jax.tree.map(list, summary['output_shape'],
                                          is_leaf=lambda x: isinstance(x, tuple)),
                flops_per_example=float(summary['flops_per_example']))
    device = jax.devices()[0]
    # One entry per process start: a resumed run adds a segment, so wall time adds up.
    info.setdefault('segments', []).append(dict(
        start_step=int(start_step), started=round(time.time(), 3),
        device_count=jax.device_count(), process_count=jax.process_count(),
        platform=device.platform, device_kind=device.device_kind,
        mesh={k: int(v) for k, v in mesh_shape.items()}))
    with open(path + '.tmp', 'w') as f:
      json.dump(info, f, indent=2)
    os.replace(path + '.tmp', path)  # never a half-written file

  def _write_event(self, split: str, step: int, wall_time: float, values: list) -> None:
    if not values:
      return
    # On use, as in write.
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.proto.summary_pb2 import Summary
    writer = self._events.get(split)
    if writer is None:
      from tensorboardX.event_file_writer import EventsWriter  # on use, as in write
      logdir = os.path.join(self.workdir, TENSORBOARD_DIR, split)
      os.makedirs(logdir, exist_ok=True)
      # The pid keeps a quick restart from reusing (and truncating) the file of this second.
      writer = EventsWriter(os.path.join(logdir, 'events'), filename_suffix=f'.{os.getpid()}')
      if self.start_step:
        writer.write_event(Event(wall_time=time.time(), step=self.start_step + 1,
                                 session_log=SessionLog(status=SessionLog.START)))
      self._events[split] = writer
    writer.write_event(Event(wall_time=wall_time, step=int(step),
                             summary=Summary(value=values)))
    writer.flush()

  def close(self) -> None:
    for writer in self._events.values():
      writer.close()
    self._events = {}

  def __enter__(self) -> 'MetricsLog':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


RUN_INFO = 'run_info.json'
TENSORBOARD_DIR = 'tensorboard'


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) or (
      isinstance(value, (np.ndarray, jax.Array)) and np.size(value) == 1)


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
