"""Config checks that run before anything expensive (no compile, no data read).

Each failure is a `UserError` with one sentence: what is wrong and how to fix it.

  validate_config(config[, mesh])   the config alone, or against the devices it runs on
  check_mesh(config, mesh)          the config against the mesh (batch divisibility)
  check_workdir(workdir, training)  the workdir can be written (training) or read (eval)

run.Run.create calls them first, then checks the dataset and builds the model abstractly.
"""

from __future__ import annotations

import difflib
import math
import os
import re

import jax

from perceiver_jax import sharding as shd
from perceiver_jax import tasks
from perceiver_jax.data import transforms
from perceiver_jax.errors import UserError
from perceiver_jax.model import registry
from perceiver_jax.model.settings import ModelSettings, compute_dtype
from perceiver_jax.moved_flags import MOVED_FLAGS
from perceiver_jax.optim import OPTIMIZERS, SCHEDULES


def _get(config, path: str):
  node = config
  for part in path.split('.'):
    node = node[part]
  return node


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _positive(value, name: str, kind=int) -> None:
  ok = _is_int(value) if kind is int else (isinstance(value, (int, float))
                                           and not isinstance(value, bool))
  if not ok or value <= 0:
    raise UserError(f'config.{name} must be a positive {kind.__name__}, got {value!r}; set '
                    f'it with --config.{name}=N.')


def _at_least(config, path: str, low: int, optional: bool = False) -> None:
  """An int >= low (or None when optional)."""
  value = _get(config, path)
  if optional and value is None:
    return
  if low == 1:
    return _positive(value, path)
  if not _is_int(value) or value < low:
    raise UserError(f'config.{path} must be an int >= {low}, got {value!r}; set it with '
                    f'--config.{path}=N.')


def _in_range(config, path: str, low: float, high: float, high_open: bool = True,
              low_open: bool = False) -> None:
  """A number in [low, high) (or the open/closed variant asked for)."""
  value = _get(config, path)
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  if (not number or not math.isfinite(value) or value < low or value > high
      or (low_open and value == low) or (high_open and value == high)):
    interval = f'{"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
    raise UserError(f'config.{path}={value!r} is out of range; use a number in {interval}.')


def _choice(config, path: str, choices) -> None:
  value = _get(config, path)
  if value in choices:
    return
  close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
  hint = f' (did you mean {close[0]!r}?)' if close else ''
  raise UserError(f'config.{path}={value!r} is unknown; use one of '
                  f'{", ".join(repr(c) for c in choices)}{hint}.')


def _check_data(config) -> None:
  data = config.data
  if not data.name:
    raise UserError('config.data.name is empty; name a dataset, e.g. --config.data.name=digits.')
  for split in ('train_split', 'eval_split'):
    if not isinstance(data[split], str) or not data[split]:
      raise UserError(f'config.data.{split}={data[split]!r} is invalid; name a split of the '
                      'dataset, e.g. train or test.')
  _choice(config, 'data.augment', tuple(transforms.AUGMENTATIONS))
  _at_least(config, 'data.max_shift', 0)
  for name in ('read_threads', 'worker_count', 'prefetch', 'device_prefetch'):
    if name in data:
      _at_least(config, f'data.{name}', 0)
  normalize = data.get('normalize', (0.0, 1.0))
  std = normalize[1] if isinstance(normalize, (tuple, list)) and len(normalize) == 2 else None
  stds = std if isinstance(std, (tuple, list)) else (std,)
  if std is None or not all(isinstance(s, (int, float)) and s != 0 for s in stds):
    raise UserError(f'config.data.normalize={normalize!r} is invalid; use (mean, std) with a '
                    'nonzero std (scalars or per-channel tuples), e.g. "(0.0, 1.0)".')


def _check_model(config) -> None:
  """config.model's settings and its sections' names and field names, before any data is
  read. The constructors check the values themselves when Run.create builds the
  model abstractly; registry.build_part names the config path of what they refuse."""
  _positive(config.model.num_classes, 'model.num_classes')
  ModelSettings.from_config(config.model)
  registry.check_sections(config.model)


def _check_training(config) -> None:
  _positive(config.train.num_steps, 'train.num_steps')
  _at_least(config, 'train.max_steps_per_run', 0)
  _at_least(config, 'train.eval_every_steps', 0)
  _at_least(config, 'train.log_every_steps', 0)
  opt = config.optimizer
  _choice(config, 'optimizer.name', OPTIMIZERS)
  _choice(config, 'optimizer.schedule', SCHEDULES)
  lr = opt.learning_rate
  if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
    raise UserError(f'config.optimizer.learning_rate must be a positive float, got {lr!r}; '
                    'set it with --config.optimizer.learning_rate=1e-3.')
  _at_least(config, 'optimizer.warmup_steps', 0)
  _in_range(config, 'optimizer.decay_start_fraction', 0.0, 1.0, high_open=False)
  _in_range(config, 'optimizer.end_lr_factor', 0.0, 1.0, high_open=False)
  _in_range(config, 'optimizer.b1', 0.0, 1.0)
  _in_range(config, 'optimizer.b2', 0.0, 1.0)
  _in_range(config, 'optimizer.eps', 0.0, 1.0, low_open=True)
  _in_range(config, 'optimizer.weight_decay', 0.0, math.inf)
  _in_range(config, 'optimizer.clip_norm', 0.0, math.inf)
  if 'ema_decay' in opt:
    _in_range(config, 'optimizer.ema_decay', 0.0, 1.0)
  _positive(config.checkpoint.every_steps, 'checkpoint.every_steps')
  _positive(config.checkpoint.keep, 'checkpoint.keep')


def _check_precision(config, training: bool) -> None:
  """Compute dtype, remat policy, gradient accumulation and loss-scale fields."""
  compute_dtype(config.model.get('dtype', 'float32'))
  if not training:
    return
  _positive(config.train.get('grad_accum_steps', 1), 'train.grad_accum_steps')
  if config.model.get('dtype') == 'float16':
    _positive(config.train.loss_scale_init, 'train.loss_scale_init', float)
    _positive(config.train.loss_scale_period, 'train.loss_scale_period')


def _check_task(config) -> None:
  """config.task is a registered task's section, no moved field remains in its old place,
  then the task checks its own settings."""
  for old, new in MOVED_FLAGS.items():
    parent, _, leaf = old.rpartition('.')
    if parent and leaf in config.get(parent, {}):  # a config file written before the move
      raise UserError(f'config.{old} moved to config.{new}; set it there (a config file: '
                      f"config.task = tasks.task_config(name, {leaf}=...)).")
  tasks.get_task(config).check_config(config)


def validate_config(config, *, mesh=None, training: bool = True) -> None:
  """Checks the config alone, or (with `mesh`) against the devices it will run on."""
  _check_task(config)
  _check_data(config)
  _positive(config.train.batch_size, 'train.batch_size')
  _positive(config.eval.batch_size, 'eval.batch_size')
  if 'telemetry_examples' in config.eval:
    _at_least(config, 'eval.telemetry_examples', 0)  # 0: telemetry off
  if training:
    _check_training(config)
  _check_model(config)
  for axis in shd.MESH_AXES:
    value = config.mesh[axis]
    if not _is_int(value) or (value < 1 and value != -1):
      raise UserError(f'config.mesh.{axis}={value!r} is invalid; use a positive size, or -1 '
                      'for "all remaining devices".')
  shd.rules_dict(config.sharding.rules)
  shd.layout_mesh_config(config.sharding.get('layout', '') or '', config.mesh)
  _check_precision(config, training)
  init_from = config.get('init_from')
  if training and init_from and not os.path.exists(os.path.expanduser(init_from)):
    raise UserError(f'config.init_from={init_from} does not exist; point it at a workdir '
                    'written by train.py or perceiver-convert.')
  try:
    re.compile(config.get('init_exclude', ''))
  except re.error as e:
    raise UserError(f'config.init_exclude={config.init_exclude!r} is not a valid regular '
                    f'expression ({e}); e.g. use \'decoder/.*\'.') from None
  if mesh is not None:
    check_mesh(config, mesh, training=training)


def check_mesh(config, mesh, *, training: bool = True) -> None:
  """The config against the mesh it runs on: the training batch splits over it."""
  dp = shd.data_parallel_size(mesh)
  # The eval batch needs no check: it is rounded up and padded (shd.eval_batch_size).
  batch = int(config.train.batch_size)
  if training and (batch % dp or batch % jax.process_count()):
    raise UserError(f'config.train.batch_size={batch} is not divisible by the data-parallel '
                    f'size {dp} (mesh data x fsdp) and {jax.process_count()} process(es); use a '
                    f'multiple of {math.lcm(dp, jax.process_count())}.')
  accum = int(config.train.get('grad_accum_steps', 1))
  if training and batch % (accum * dp):
    raise UserError(f'config.train.batch_size={batch} does not split into '
                    f'train.grad_accum_steps={accum} micro-batches over the data-parallel size '
                    f'{dp} (mesh data x fsdp); use a multiple of {accum * dp}.')


def check_workdir(workdir: str, *, training: bool = True) -> None:
  """Training: the workdir is a directory we can write, or can be created. Eval: it exists."""
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f'--workdir={workdir} exists and is not a directory; point --workdir at a '
                    'directory (a new one, or a previous run\'s).')
  if not training and not os.path.isdir(path):
    raise UserError(f'--workdir={workdir} does not exist; point it at a directory written by '
                    'train.py.')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError(f'--workdir={workdir} cannot be created because {existing} is a file, not '
                    'a directory; choose another --workdir.')
  _check_name_lengths(workdir, path, existing)
  if not os.access(existing, os.W_OK | os.X_OK):
    what = 'the workdir' if existing == path else f'its parent {existing}'
    raise UserError(f'--workdir={workdir} is not writable ({what} denies write permission); '
                    'choose a --workdir you can write to, or fix the permissions.')


# What Orbax adds below the workdir at most: checkpoints/<step>.orbax-checkpoint-tmp-<time>/
# state/ocdbt.process_<i>/d/<32 hex digits>.
_DEEPEST_FILE = 160


def _check_name_lengths(workdir: str, path: str, existing: str) -> None:
  """A workdir the file system cannot name fails here, not at its first write."""
  try:
    name_max = os.pathconf(existing, 'PC_NAME_MAX')
    path_max = os.pathconf(existing, 'PC_PATH_MAX')
  except (OSError, ValueError):
    name_max, path_max = 255, 4096
  for part in path.split(os.sep):
    if len(os.fsencode(part)) > name_max:
      raise UserError(f'--workdir has a folder name of {len(os.fsencode(part))} bytes '
                      f'({part[:24]}...), longer than this file system allows ({name_max}); '
                      'choose a shorter --workdir.')
  if len(os.fsencode(path)) + _DEEPEST_FILE > path_max:
    raise UserError(f'--workdir={workdir[:60]}... is {len(os.fsencode(path))} bytes long, too '
                    f'long for the checkpoint files below it (the file system allows paths of '
                    f'{path_max}); choose a shorter --workdir.')
