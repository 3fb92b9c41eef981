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

from perceiver_jax import precision
from perceiver_jax import sharding as shd
from perceiver_jax.errors import UserError
from perceiver_jax.model import build as model_build
from perceiver_jax.model import image_processors as img
from perceiver_jax.model import io_processors as io_proc
from perceiver_jax.model.attention import MLP_ACTIVATIONS
from perceiver_jax.model.encoder import REMAT_POLICIES
from perceiver_jax.optim import OPTIMIZERS, SCHEDULES

ATTENTION_IMPLS = (None, 'xla', 'cudnn')


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


def _positive_ints(config, path: str) -> None:
  value = _get(config, path)
  if (not isinstance(value, (tuple, list)) or not value
      or not all(_is_int(v) and v > 0 for v in value)):
    raise UserError(f'config.{path}={value!r} is invalid; use a tuple of positive ints, '
                    f'e.g. --config.{path}="(4,)".')


def _divisible(channels: int, what: str, heads: int, heads_name: str) -> None:
  if channels % heads:
    raise UserError(f'{what}={channels} is not divisible by {heads_name}={heads}; choose a '
                    'head count that divides the channels (or channels that the heads divide).')


def _check_data(config) -> None:
  from perceiver_jax.data import transforms  # pylint: disable=g-import-not-at-top
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
  """Names and sizes of config.model (see model/build.py for the schema)."""
  model, enc = config.model, config.model.encoder
  _positive(model.num_classes, 'model.num_classes')
  _choice(config, 'model.attention_impl', ATTENTION_IMPLS)
  _choice(config, 'model.mlp_activation', tuple(MLP_ACTIVATIONS))
  for name in ('attention_chunk_size', 'attention_auto_chunk_threshold'):
    value = model.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise UserError(f'config.model.{name}={value!r} is invalid; use an integer >= 0 '
                      '(0 = off).')

  pre = model.preprocessor
  _choice(config, 'model.preprocessor.name', model_build.PREPROCESSORS)
  if pre.name not in ('multimodal', 'text', 'one_hot'):
    pe = 'model.preprocessor.position_encoding'
    _choice(config, f'{pe}.name', model_build.POSITION_ENCODINGS)
    _choice(config, f'{pe}.combine', io_proc.COMBINE_MODES)
    if pre.position_encoding.name == 'fourier':
      _at_least(config, f'{pe}.num_bands', 1)
    if pre.position_encoding.name == 'trainable':
      _at_least(config, f'{pe}.num_channels', 1)
  _at_least(config, 'model.preprocessor.num_channels', 0)
  if pre.name == 'patches':
    _positive_ints(config, 'model.preprocessor.patch_size')
  if pre.name == 'image':
    _choice(config, 'model.preprocessor.prep_type', img.PREP_TYPES)
    _choice(config, 'model.preprocessor.conv_padding', img.CONV_PADDINGS)
    _at_least(config, 'model.preprocessor.spatial_downsample', 1)
  if pre.name == 'conv1d':
    for name in ('kernel_size', 'stride', 'pool_size'):
      _at_least(config, f'model.preprocessor.{name}', 1)
  if pre.name == 'audio':
    _at_least(config, 'model.preprocessor.samples_per_patch', 1)
  if pre.name == 'text':
    _at_least(config, 'model.preprocessor.vocab_size', 1)
    _at_least(config, 'model.preprocessor.max_seq_len', 1)

  for name in ('num_latents', 'num_latent_channels', 'num_blocks', 'num_self_attends_per_block',
               'num_cross_attend_heads', 'num_self_attend_heads',
               'cross_attend_widening_factor', 'self_attend_widening_factor'):
    _positive(enc[name], f'model.encoder.{name}')
  if enc.num_latent_channels % enc.num_self_attend_heads:
    raise UserError(f'model.encoder.num_latent_channels={enc.num_latent_channels} is not '
                    f'divisible by num_self_attend_heads={enc.num_self_attend_heads}; '
                    'choose a head count that divides the latent channels.')
  # The cross-attend's output projection maps heads back onto the latents, whatever its qk
  # width ('kv': from the inputs, checked by the abstract build in run.py).
  _divisible(enc.num_latent_channels, 'model.encoder.num_latent_channels',
             enc.num_cross_attend_heads, 'num_cross_attend_heads')
  _choice(config, 'model.encoder.cross_attention_shape_for_attn', ('q', 'kv'))
  for name in ('qk_channels', 'v_channels'):
    _at_least(config, f'model.encoder.{name}', 1, optional=True)
    if enc[name] is not None:
      for heads in ('num_cross_attend_heads', 'num_self_attend_heads'):
        _divisible(enc[name], f'model.encoder.{name}', enc[heads], heads)
  _in_range(config, 'model.encoder.dropout_prob', 0.0, 1.0)
  remat = enc.get('remat', 'none')
  if remat not in REMAT_POLICIES:
    raise UserError(f'config.model.encoder.remat={remat!r} is not a remat policy; use one of '
                    f'{", ".join(REMAT_POLICIES)}.')

  dec = model.decoder
  _choice(config, 'model.decoder.name', model_build.DECODERS)
  _choice(config, 'model.postprocessor.name', model_build.POSTPROCESSORS)
  if dec.name in ('projection',):
    return
  for name in ('num_heads', 'widening_factor'):
    _at_least(config, f'model.decoder.{name}', 1)
  for name in ('qk_channels', 'v_channels', 'num_query_channels', 'output_num_channels'):
    _at_least(config, f'model.decoder.{name}', 1, optional=True)
  _at_least(config, 'model.decoder.query_chunk_size', 0)
  qk = dec.qk_channels or enc.num_latent_channels  # decoders take qk width from the latents
  _divisible(qk, 'model.decoder.qk_channels' if dec.qk_channels else
             'model.encoder.num_latent_channels (the decoder\'s qk width)',
             dec.num_heads, 'model.decoder.num_heads')
  if dec.v_channels is not None:
    _divisible(dec.v_channels, 'model.decoder.v_channels', dec.num_heads,
               'model.decoder.num_heads')
  if dec.name in ('basic', 'video'):
    _positive_ints(config, 'model.decoder.output_index_dims')
    _choice(config, 'model.decoder.position_encoding.name', model_build.DECODER_QUERY_ENCODINGS)


def _check_training(config) -> None:
  _positive(config.train.num_steps, 'train.num_steps')
  _at_least(config, 'train.max_steps_per_run', 0)
  _at_least(config, 'train.eval_every_steps', 0)
  _at_least(config, 'train.log_every_steps', 0)
  _in_range(config, 'train.label_smoothing', 0.0, 1.0)
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
  _positive(config.checkpoint.every_steps, 'checkpoint.every_steps')
  _positive(config.checkpoint.keep, 'checkpoint.keep')


def _check_precision(config, training: bool) -> None:
  """Compute dtype, remat policy, gradient accumulation and loss-scale fields."""
  precision.compute_dtype(config.model.get('dtype', 'float32'))
  if not training:
    return
  _positive(config.train.get('grad_accum_steps', 1), 'train.grad_accum_steps')
  if config.model.get('dtype') == 'float16':
    _positive(config.train.loss_scale_init, 'train.loss_scale_init', float)
    _positive(config.train.loss_scale_period, 'train.loss_scale_period')


def _check_task(config) -> None:
  """config.task names a registered task; then the task checks its own fields."""
  from perceiver_jax import tasks  # pylint: disable=g-import-not-at-top
  if 'task' in config:
    _choice(config, 'task', tuple(tasks.TASKS))
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
  if not os.access(existing, os.W_OK | os.X_OK):
    what = 'the workdir' if existing == path else f'its parent {existing}'
    raise UserError(f'--workdir={workdir} is not writable ({what} denies write permission); '
                    'choose a --workdir you can write to, or fix the permissions.')
