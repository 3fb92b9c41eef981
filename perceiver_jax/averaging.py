"""An exponential moving average of the parameters (optimizer.ema_decay > 0), kept in the
train state beside them and used in their place by evaluation, prediction and export.

The average after step t is ema = d_t * ema + (1 - d_t) * params with
d_t = min(ema_decay, (1 + t) / (10 + t)): the ramp lets the first steps' weights, far from
trained, drop out of the average quickly, as TensorFlow's ExponentialMovingAverage with
num_updates and timm's ModelEmaV2 warmup do. The average starts as the initial params.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def enabled(config) -> bool:
  return float(config.optimizer.get('ema_decay', 0.0)) > 0.0


def start(config, params):
  """The average at step 0 (a copy of `params`, abstract or not), or None when off."""
  if not enabled(config):
    return None
  if isinstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct):
    return params
  # A separate buffer: the state is donated, and params and average must not alias.
  return jax.tree.map(jnp.copy, params)


def decay_at(ema_decay: float, step: jax.Array) -> jax.Array:
  """The decay used for the update after optimizer step `step` (0-based)."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(ema_decay), (1.0 + step) / (10.0 + step))


def update(config, ema_params, params, step: jax.Array):
  """The average after the update that produced `params` at optimizer step `step`."""
  if ema_params is None:
    return None
  d = decay_at(float(config.optimizer.ema_decay), step)
  return jax.tree.map(
      lambda e, p: (d * e.astype(jnp.float32) + (1.0 - d) * p.astype(jnp.float32)).astype(e.dtype),
      ema_params, params)
