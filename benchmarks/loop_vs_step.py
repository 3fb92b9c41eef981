"""Whole-loop training speed against the bare step of the same config, in one session.

  python train.py --config=C --workdir=W [flags]          # the loop (and a resume)
  python benchmarks/loop_vs_step.py --config=C --workdir=W [the same flags] [--record=F]

Run after train.py on WORKDIR: the loop's examples/s are the median of the log windows in
WORKDIR/metrics.jsonl (each the wall time between two log steps, so it includes reading
data, host-to-device copies, checkpoint saves and the sync at the log step; the trainer
starts each job's first window after the compiling first call). The bare step is the trainer's own jitted
train step (perceiver_jax/trainer.py, same model, optimizer, task and sharding) run
back-to-back on one batch already on the devices. loop_vs_step = loop / bare. With
--record the result is appended as a JSON line (benchmarks/results/gpu.jsonl fields).
Nothing is asserted.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from perceiver_jax.data import pipeline  # noqa: E402
from perceiver_jax.run import Run  # noqa: E402
from perceiver_jax.trainer import make_train_step  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config, as for train.py.')
flags.DEFINE_string('workdir', None, 'The workdir train.py wrote.')
flags.DEFINE_integer('steps', 10, 'bare steps per timed round')
flags.DEFINE_string('record', '', 'append the result as a JSON line to this file')
flags.DEFINE_string('label', '', 'a name for this measurement in the record')


def loop_windows(workdir: str) -> list[float]:
  """examples/s of every train log window (the trainer times them from the end of each
  job's first, compiling, call)."""
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [row['examples_per_sec'] for row in rows
          if row.get('split') == 'train' and 'examples_per_sec' in row]


def bare_step(config, rounds: int = 3) -> float:
  """examples/s of the trainer's train step on one device-resident batch."""
  run = Run.create(config)
  state, train_step = run.init_state(), make_train_step(run)
  batches = pipeline.make_train_iterator(config.data, global_batch_size=int(config.train.batch_size),
                                         seed=0, task=run.task)
  batch = run.to_global(next(batches))
  for _ in range(3):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  per_step = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    per_step.append((time.perf_counter() - start) / FLAGS.steps)
  return int(config.train.batch_size) / statistics.median(per_step)


def main(argv):
  del argv
  config = FLAGS.config
  windows = loop_windows(FLAGS.workdir)
  if not windows:
    raise app.UsageError(f'{FLAGS.workdir}/metrics.jsonl has no train log window; '
                         'run train.py on it first.')
  loop = statistics.median(windows)
  bare = bare_step(config)
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  result = {
      'date': datetime.date.today().isoformat(), 'device': device.device_kind,
      'jax': jax.__version__, 'config': config_flags.get_config_filename(FLAGS['config']),
      'label': FLAGS.label, 'what': 'whole loop', 'batch': int(config.train.batch_size),
      'dtype': config.model.get('dtype', 'float32'), 'examples_per_s': round(loop, 1),
      'bare_examples_per_s': round(bare, 1), 'loop_vs_step': round(loop / bare, 3),
      'loop_windows': [round(w, 1) for w in windows], 'mfu': None,
      'peak_gib': round(stats['peak_bytes_in_use'] / 2**30, 2) if 'peak_bytes_in_use' in stats
      else None,
  }
  print(f'loop {loop:.1f} examples/s (median of {len(windows)} windows: '
        f'{", ".join(f"{w:.0f}" for w in windows)}); bare step {bare:.1f} examples/s; '
        f'loop / bare = {loop / bare:.3f}')
  if FLAGS.record:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.record)), exist_ok=True)
    with open(FLAGS.record, 'a') as f:
      f.write(json.dumps(result) + '\n')
  print('RESULT ' + json.dumps(result), flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
