"""Command-line mains behind train.py / eval.py / convert.py and the perceiver-* scripts."""

from __future__ import annotations

import functools
import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from perceiver_jax import flag_parsing, orbax_logs, workdir_config
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


def _run(fn) -> None:
  """Runs fn; user errors print one sentence and exit 2 instead of a traceback."""
  try:
    fn()
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def _require_flags() -> None:
  # --workdir first: eval.py finds the config in it.
  if not FLAGS.workdir:
    raise UserError('--workdir is required: the directory for checkpoints and metrics.')
  if FLAGS.config is None:
    raise UserError('--config is required, e.g. --config=configs/digits.py.')


def _start() -> None:
  """Checks the flags, then joins the other processes of a multi-process run (before any
  JAX computation; a single-process run initialises nothing)."""
  _require_flags()
  from perceiver_jax import distributed
  distributed.setup(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                    FLAGS.distributed)


def _print_summary(result: dict) -> None:
  """Final metrics and where the checkpoint, eval JSON and report are (process 0)."""
  import jax
  from perceiver_jax import run_summary
  if jax.process_index() == 0:
    print(run_summary.summarize(FLAGS.workdir, result))


def _train(argv) -> None:
  del argv
  _setup_logging()

  def go():
    _start()
    from perceiver_jax import trainer  # heavy imports after flag parsing
    metrics = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    _print_summary(metrics)
    print(json.dumps({'final_eval': metrics}))  # the last line: for scripts
  _run(go)


def _eval(argv) -> None:
  del argv
  _setup_logging()

  def go():
    _start()
    from perceiver_jax import evaluator
    result = evaluator.evaluate(FLAGS.config, FLAGS.workdir, step=FLAGS.step, split=FLAGS.split)
    _print_summary(result)
    print(json.dumps(result))
  _run(go)


def _parser(usage: str, **kwargs):
  """A flags_parser whose --help starts with `usage` ({prog}: the program's name); kwargs:
  those of parse_or_exit."""
  return functools.partial(parse_or_exit, usage=usage, **kwargs)


def train_main() -> None:
  app.run(_train, flags_parser=_parser(
      'Trains a Perceiver; rerunning the same command resumes from the newest checkpoint.\n\n'
      'usage: {prog} --config=FILE[:VARIANT] --workdir=DIR [--config.FIELD=VALUE ...]'))


def _workdir_config(argv: list[str]) -> str | None:
  """eval.py without --config: the config the workdir was trained with, as a --config value
  (workdir_config.get_config), so that --config.x=y overrides apply to it."""
  workdir = flag_parsing.flag_value(argv, 'workdir')
  if not workdir:
    return None  # _require_flags asks for the flags
  step = flag_parsing.flag_value(argv, 'step')
  # --step=N: the config that trained that step (a resume may have changed it since).
  if step and step.isdigit():
    workdir_config.read_for_step(workdir, int(step))  # its one sentence, before parsing
    return f'{workdir_config.__file__}:{workdir}{workdir_config.STEP_MARK}{step}'
  workdir_config.read(workdir)  # missing or unreadable: its one sentence, before any parsing
  return f'{workdir_config.__file__}:{workdir}'


def eval_main() -> None:
  flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).')
  flags.DEFINE_string('split', None, 'Split to evaluate (default: config.data.eval_split).')
  app.run(_eval, flags_parser=_parser(
      'Evaluates a checkpoint of a workdir and writes WORKDIR/eval_<step>.json.\n\n'
      'usage: {prog} --workdir=DIR [--config=FILE[:VARIANT]] [--step=N] [--split=SPLIT]\n'
      'Without --config it uses the config the workdir was trained with (config.json).',
      default_config=_workdir_config))


def _convert(argv) -> None:
  del argv
  _setup_logging()

  def go():
    _start()
    if not FLAGS.input:
      raise UserError('--input is required: the released checkpoint file to convert.')
    from perceiver_jax.convert import to_checkpoint
    summary = to_checkpoint.convert_to_checkpoint(FLAGS.config, FLAGS.input, FLAGS.workdir,
                                                  FLAGS.format)
    print(json.dumps(summary))
  _run(go)


def convert_main() -> None:
  flags.DEFINE_string('input', None, 'Released weights: HF .safetensors/.bin or DeepMind .pkl.')
  flags.DEFINE_enum('format', 'auto', ['auto', 'hf', 'haiku'],
                    'Checkpoint naming: Hugging Face, DeepMind Haiku, or detect from the keys.')
  app.run(_convert, flags_parser=_parser(
      'Converts released Perceiver weights into an Orbax checkpoint in WORKDIR.\n\n'
      'usage: {prog} --config=FILE --input=WEIGHTS --workdir=DIR [--format=auto|hf|haiku]'))


def _report(argv) -> None:
  _setup_logging()

  def go():
    # perceiver-report WORKDIR, or --workdir=WORKDIR like the other mains.
    workdirs = ([FLAGS.workdir] if FLAGS.workdir else []) + list(argv[1:])
    if len(workdirs) != 1:
      raise UserError('perceiver-report takes one workdir: perceiver-report WORKDIR.')
    from perceiver_jax import report
    print(json.dumps(report.write_report(workdirs[0])))
  _run(go)


def report_main() -> None:
  app.run(_report, flags_parser=_parser(
      'Plots and summarises a run: writes WORKDIR/report/ (a PNG per metric, README.md).\n\n'
      'usage: {prog} WORKDIR', shown=('workdir',)))


def _predict(argv) -> None:
  _setup_logging()

  def go():
    if not FLAGS.workdir:
      raise UserError('--workdir is required: a training or convert workdir, e.g. '
                      'perceiver-predict --workdir=workdirs/digits IMAGE...')
    from perceiver_jax import predict_files
    print(json.dumps(predict_files.predict_files(
        FLAGS.workdir, list(argv[1:]), step=FLAGS.step, text=FLAGS.text, mask=FLAGS.mask,
        top_k=FLAGS.top_k, output=FLAGS.output)))
  _run(go)


def predict_main() -> None:
  flags.DEFINE_integer('step', None, 'Checkpoint step to predict with (default: the latest).')
  flags.DEFINE_string('text', None, "Language models: the text, '[MASK]' for each byte to fill.")
  flags.DEFINE_string('mask', None, 'Language models: mask every byte of the last occurrence '
                      'of this part of --text.')
  flags.DEFINE_integer('top_k', 5, 'Classifiers: classes printed per image.')
  flags.DEFINE_string('output', 'flow', 'Flow models: write OUTPUT.flo and OUTPUT.png.')
  app.run(_predict, flags_parser=_parser(
      'Predicts with a trained or converted workdir (its config.json; no --config).\n\n'
      'usage: {prog} --workdir=DIR IMAGE... | --text=TEXT [--mask=S] | FRAME1 FRAME2'))


def _export(argv) -> None:
  del argv
  _setup_logging()

  def go():
    if not FLAGS.workdir or not FLAGS.output:
      raise UserError('--workdir and --output are required: perceiver-export '
                      '--workdir=WORKDIR --output=DIR.')
    from perceiver_jax import export
    print(json.dumps(export.export(FLAGS.workdir, FLAGS.output, FLAGS.step)))
  _run(go)


def export_main() -> None:
  flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).')
  flags.DEFINE_string('output', None, 'Directory for model.stablehlo and spec.json.')
  app.run(_export, flags_parser=_parser(
      'Exports a workdir\'s forward pass as StableHLO (jax.export) with spec.json.\n\n'
      'usage: {prog} --workdir=DIR --output=DIR [--step=N]'))


def _sample(argv) -> None:
  del argv
  _setup_logging()

  def go():
    if not FLAGS.workdir:
      raise UserError('--workdir is required: the workdir of a Perceiver AR training run.')
    if FLAGS.prompt is None:
      raise UserError("--prompt is required: the text to continue, e.g. --prompt='def main('.")
    from perceiver_jax import sampling
    options = sampling.SamplingOptions(temperature=FLAGS.temperature, top_k=FLAGS.top_k,
                                       top_p=FLAGS.top_p)
    result = sampling.sample_text(FLAGS.workdir, FLAGS.prompt, FLAGS.num_tokens,
                                  step=FLAGS.step, options=options, seed=FLAGS.seed,
                                  cached=FLAGS.cache, num_latents=FLAGS.num_latents,
                                  stride=FLAGS.stride)
    print(json.dumps(result))
  _run(go)


def sample_main() -> None:
  flags.DEFINE_string('prompt', None, 'The text to continue (UTF-8 bytes).')
  flags.DEFINE_integer('num_tokens', 200, 'Bytes to generate.')
  flags.DEFINE_float('temperature', 1.0, 'Sampling temperature; 0 = the most likely byte.')
  flags.DEFINE_integer('top_k', 0, 'Sample among the k most likely bytes; 0 = all.')
  flags.DEFINE_float('top_p', 1.0, 'Sample among the most likely bytes holding this much '
                     'probability; 1 = all.')
  flags.DEFINE_integer('seed', 0, 'Random seed of the sampling.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to sample from (default: the latest).')
  flags.DEFINE_integer('num_latents', None, 'Latent window (default: the trained one).')
  flags.DEFINE_integer('stride', None, 'Tokens between re-encodes once the window is full '
                       '(default: half the window).')
  flags.DEFINE_bool('cache', True, 'Use the key/value cache (--nocache: re-encode the whole '
                    'context for every byte).')
  app.run(_sample, flags_parser=_parser(
      'Continues a prompt with a trained Perceiver AR model (key/value-cached sampling).\n\n'
      'usage: {prog} --workdir=DIR --prompt=TEXT [--num_tokens=N] [--temperature=T] '
      '[--top_k=K] [--top_p=P] [--seed=S]'))
