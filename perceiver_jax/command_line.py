"""What every command-line main shares: the --config / --workdir / multi-process flags, quiet
logging, and user errors printed as one sentence (exit 2) instead of a traceback.

Each main lives beside what it runs: `python -m perceiver_jax.trainer`, `.evaluator`,
`.predict_files`, `.export`, `.sampling`, `.report`, `.convert.to_checkpoint` (the root
scripts and the perceiver-* console scripts call the same `main`).
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from perceiver_jax import orbax_logs
from perceiver_jax.errors import UserError
from perceiver_jax.flag_parsing import parse_or_exit  # flag errors: one sentence, exit 2

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None,
    'Experiment config file, optionally with a variant: configs/mnist1d.py:model=raw',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and evaluations.')
# Multi-process runs (perceiver_jax/distributed.py): flags beat JAX_* variables beat cluster
# detection (SLURM, Open MPI, Cloud TPU).
flags.DEFINE_string('coordinator_address', None,
                    'Multi-process: HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS '
                    'or detected from the cluster).')
flags.DEFINE_integer('num_processes', None,
                     'Multi-process: total number of processes (default: $JAX_NUM_PROCESSES '
                     'or detected).')
flags.DEFINE_integer('process_id', None,
                     'Multi-process: this process\'s id, 0..num_processes-1 (default: '
                     '$JAX_PROCESS_ID or detected).')
flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                  'auto: initialise jax.distributed when more than one process is configured or '
                  'detected; on: always (Cloud TPU pod slices); off: never.')


def _setup_logging() -> None:
  # absl logs to stderr with a long prefix; keep lines short and readable.
  logging.getLogger().setLevel(logging.INFO)
  for noisy in ('absl', 'orbax', 'jax._src', 'tensorflow_datasets', 'grain'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  orbax_logs.silence_routine_warnings()  # Orbax's on every restore; real warnings still show


def run(body: Callable[[list[str]], None], usage: str, **parse_kwargs) -> None:
  """absl's app.run of body(argv) after our flag parsing (--help starts with `usage`,
  {prog}: the program's name; parse_kwargs: those of parse_or_exit). A UserError prints
  one sentence and exits 2."""
  def main(argv):
    _setup_logging()
    try:
      body(argv)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
  app.run(main, flags_parser=functools.partial(parse_or_exit, usage=usage, **parse_kwargs))


def start() -> None:
  """Checks --workdir and --config, then joins the other processes of a multi-process run
  (before any JAX computation; a single-process run initialises nothing)."""
  # --workdir first: eval finds the config in it.
  if not FLAGS.workdir:
    raise UserError('--workdir is required: the directory for checkpoints and metrics.')
  if FLAGS.config is None:
    raise UserError('--config is required, e.g. --config=configs/digits.py.')
  from perceiver_jax import distributed
  distributed.setup(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                    FLAGS.distributed)


def print_summary(result: dict) -> None:
  """Final metrics and where the checkpoint, eval JSON and report are (process 0)."""
  import jax
  from perceiver_jax import run_summary
  if jax.process_index() == 0:
    print(run_summary.summarize(FLAGS.workdir, result))
