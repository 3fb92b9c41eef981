"""Optax optimizers from config: AdamW or LAMB, warmup + decay schedules, decay masks, clipping."""

from __future__ import annotations

import re

import jax
import optax

from perceiver_jax.errors import UserError

OPTIMIZERS = ('adamw', 'lamb')
SCHEDULES = ('cosine', 'constant_cosine', 'constant', 'linear')


def make_schedule(opt_config, num_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then the configured decay until `num_steps`.

  'constant_cosine' holds the peak until `decay_start_fraction` of training, then cosine
  decays (the Perceiver papers' ImageNet schedule).
  """
  peak = float(opt_config.learning_rate)
  warmup = int(opt_config.warmup_steps)
  end = peak * float(opt_config.end_lr_factor)
  name = opt_config.schedule
  if name not in SCHEDULES:
    raise UserError(f'Unknown schedule {name!r} (config.optimizer.schedule); '
                    f'use one of {SCHEDULES}.')
  decay_steps = max(num_steps - warmup, 1)
  alpha = end / peak if peak else 0.0
  if name == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=alpha)
  elif name == 'linear':
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif name == 'constant':
    decay = optax.constant_schedule(peak)
  else:
    hold = int(decay_steps * float(opt_config.decay_start_fraction))
    decay = optax.join_schedules(
        [optax.constant_schedule(peak),
         optax.cosine_decay_schedule(peak, max(decay_steps - hold, 1), alpha=alpha)],
        [hold])
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
  """True for weights that get weight decay: matrices, not biases, norms or 1-D vectors."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _path_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def trust_ratio_mask(exclude: str):
  """params -> True where LAMB scales the update by the trust ratio: every parameter but
  those whose '/'-joined path fully matches the regex `exclude`."""
  field = 'config.optimizer.trust_ratio_exclude'
  try:
    regex = re.compile(exclude)
  except re.error as e:
    raise UserError(f'{field} {exclude!r} is not a regular expression ({e}); give one that '
                    "matches '/'-joined parameter paths, e.g. 'decoder/logits/.*'.") from None

  def mask(params):
    adapt = jax.tree_util.tree_map_with_path(
        lambda path, _: not regex.fullmatch(_path_name(path)), params)
    leaves = jax.tree.leaves(adapt)
    if leaves and all(leaves):
      raise UserError(f'{field} {exclude!r} matches no parameter path; paths look like '
                      f"'{_path_name(jax.tree_util.tree_flatten_with_path(params)[0][0][0])}'.")
    return adapt
  return mask


def lamb(schedule, *, b1, b2, eps, weight_decay, mask, exclude: str = ''
         ) -> optax.GradientTransformation:
  """optax.lamb, whose trust ratio leaves out the parameters that fully match `exclude`.

  The trust ratio sizes a step by the parameter's norm. A zero-initialised one (the
  original Perceiver's head) gets one unscaled first step and can then grow by at most a
  factor 1 + lr per step: frozen near zero in a short run (docs/results.md, small-model
  stability). Left out, such a parameter takes AdamW's step.
  """
  if not exclude:
    return optax.lamb(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
  return optax.chain(  # optax.lamb's chain and state, the trust ratio for some parameters
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask),
      _trust_ratio_where(trust_ratio_mask(exclude)),
      optax.scale_by_learning_rate(schedule))


def _trust_ratio_where(mask) -> optax.GradientTransformation:
  """optax.scale_by_trust_ratio on the parameters where mask(params) is True.

  Not optax.masked: that wraps the state, and LAMB checkpoints written without the mask
  would no longer restore.
  """
  inner = optax.scale_by_trust_ratio()

  def init(params):
    mask(params)  # a pattern that matches nothing fails here, as the run is set up
    return inner.init(params)

  def update(updates, state, params=None):
    scaled, state = inner.update(updates, state, params)
    return jax.tree.map(lambda adapt, s, u: s if adapt else u, mask(updates), scaled,
                        updates), state
  return optax.GradientTransformation(init, update)


def make_optimizer(opt_config, num_steps: int,
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer chain (clip -> adamw|lamb with masked weight decay) and its LR schedule."""
  schedule = make_schedule(opt_config, num_steps)
  name = opt_config.name
  kwargs = dict(b1=float(opt_config.b1), b2=float(opt_config.b2), eps=float(opt_config.eps),
                weight_decay=float(opt_config.weight_decay), mask=decay_mask)
  if name == 'adamw':
    opt = optax.adamw(schedule, **kwargs)
  elif name == 'lamb':
    # '' in run.default_config; set by configs whose zero-initialised head needs it.
    opt = lamb(schedule, exclude=opt_config.get('trust_ratio_exclude', ''), **kwargs)
  else:
    raise UserError(f'Unknown optimizer {name!r} (config.optimizer.name); use one of {OPTIMIZERS}.')
  chain = [opt]
  if opt_config.clip_norm and float(opt_config.clip_norm) > 0:
    chain.insert(0, optax.clip_by_global_norm(float(opt_config.clip_norm)))
  return optax.chain(*chain), schedule
