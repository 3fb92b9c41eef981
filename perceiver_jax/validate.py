"""Config checks that run before anything expensive (no compile, no data read).

Each failure is a `UserError` with one sentence: what is wrong and how to fix it.
"""

from __future__ import annotations

import math
import os
import re

import jax

from perceiver_jax import precision
from perceiver_jax import sharding as shd
from perceiver_jax.errors import UserError
from perceiver_jax.model.encoder import REMAT_POLICIES


def _positive(value, name: str, kind=int) -> None:
  if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
    raise UserError(f'config.{name} must be a positive {kind.__name__}, got {value!r}.')


def _check_precision(config, training: bool) -> None:
  """Compute dtype, remat policy, gradient accumulation and loss-scale fields."""
  precision.compute_dtype(config.model.get('dtype', 'float32'))
  remat = config.model.encoder.get('remat', 'none')
  if remat not in REMAT_POLICIES:
    raise UserError(f'config.model.encoder.remat={remat!r} is not a remat policy; use one of '
                    f'{", ".join(REMAT_POLICIES)}.')
  if not training:
    return
  _positive(config.train.get('grad_accum_steps', 1), 'train.grad_accum_steps')
  if config.model.get('dtype') == 'float16':
    _positive(config.train.loss_scale_init, 'train.loss_scale_init', float)
    _positive(config.train.loss_scale_period, 'train.loss_scale_period')


def validate_config(config, *, mesh=None, training: bool = True) -> None:
  """Checks the config alone, or (with `mesh`) against the devices it will run on."""
  if not config.data.name:
    raise UserError('config.data.name is empty; name a dataset, e.g. --config.data.name=digits.')
  _positive(config.train.batch_size, 'train.batch_size')
  _positive(config.eval.batch_size, 'eval.batch_size')
  if training:
    _positive(config.train.num_steps, 'train.num_steps')
    _positive(config.optimizer.learning_rate, 'optimizer.learning_rate', float)
    _positive(config.checkpoint.every_steps, 'checkpoint.every_steps')
  enc = config.model.encoder
  for name in ('num_latents', 'num_latent_channels', 'num_blocks', 'num_self_attends_per_block',
               'num_cross_attend_heads', 'num_self_attend_heads'):
    _positive(enc[name], f'model.encoder.{name}')
  if enc.num_latent_channels % enc.num_self_attend_heads:
    raise UserError(f'model.encoder.num_latent_channels={enc.num_latent_channels} is not '
                    f'divisible by num_self_attend_heads={enc.num_self_attend_heads}; '
                    'choose a head count that divides the latent channels.')
  for name in ('attention_chunk_size', 'attention_auto_chunk_threshold'):
    value = config.model.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise UserError(f'config.model.{name}={value!r} is invalid; use an integer >= 0 '
                      '(0 = off).')
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
  if mesh is None:
    return
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
