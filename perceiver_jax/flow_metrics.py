"""Optical-flow metrics: end-point error (EPE) and the zero-flow baseline.

Flows are [batch, H, W, 2] in pixels, channels (dx, dy) (see
`perceiver_jax.data.flow_synthesis`). EPE at a pixel is the Euclidean norm of
predicted minus true flow; a split's EPE pools every counted pixel of every
example equally (as Sintel/KITTI report it), so aggregate the (sum, count)
pairs of `end_point_error_sums` over batches rather than averaging batch means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def _pixel_weights(mask, batch_shape: tuple[int, ...]) -> jax.Array:
  """mask None, [batch] (per example) or [batch, H, W] -> float32 [batch, H, W]."""
  if mask is None:
    return jnp.ones(batch_shape, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  if mask.ndim == 1:  # e.g. the eval pipeline's padding mask
    mask = mask[:, None, None]
  if mask.ndim != 3:
    raise ValueError(f'mask must be [batch] or [batch, H, W], got shape {mask.shape}.')
  return jnp.broadcast_to(mask, batch_shape)


def end_point_error_sums(pred, true, mask=None) -> tuple[jax.Array, jax.Array]:
  """Sum of per-pixel EPE over counted pixels, and the number counted.

  Args:
    pred, true: float [batch, H, W, 2] flows (pixels).
    mask: None (all pixels), [batch] or [batch, H, W]; nonzero = counted
      (e.g. the dataset's `valid` times the padding mask). Fractional values
      weight pixels.

  Returns:
    (sum, count), float32 scalars; jit-friendly.
  """
  pred = jnp.asarray(pred, jnp.float32)
  true = jnp.asarray(true, jnp.float32)
  if pred.shape != true.shape or pred.ndim != 4 or pred.shape[-1] != 2:
    raise ValueError(f'pred and true must both be [batch, H, W, 2], got '
                     f'{pred.shape} and {true.shape}.')
  epe = jnp.sqrt(jnp.sum(jnp.square(pred - true), axis=-1))  # [batch, H, W]
  weights = _pixel_weights(mask, epe.shape)
  return jnp.sum(epe * weights), jnp.sum(weights)


def end_point_error(pred, true, mask=None) -> jax.Array:
  """Mean EPE over counted pixels (float32 scalar; NaN if none counted).

  Shapes as in `end_point_error_sums`.
  """
  total, count = end_point_error_sums(pred, true, mask)
  return total / count


def zero_flow_epe(examples: Iterable[Mapping[str, np.ndarray]], *,
                  valid_only: bool) -> float:
  """EPE of predicting zero flow, i.e. the mean |flow|, over a whole split.

  Args:
    examples: per-example dicts with `flow` float32 [H, W, 2] and (if
      valid_only) `valid` bool [H, W], e.g. `builder.as_data_source('test')`
      of the `skimage_flow` dataset.
    valid_only: count only pixels whose target lies inside frame 2.
  """
  total, count = 0.0, 0.0
  for example in examples:
    norm = np.sqrt(np.sum(np.square(np.asarray(example['flow'], np.float64)), -1))
    weights = (np.asarray(example['valid'], np.float64) if valid_only
               else np.ones_like(norm))
    total += float(np.sum(norm * weights))
    count += float(np.sum(weights))
  if not count:
    raise ValueError('zero_flow_epe got no counted pixels (empty split?).')
  return total / count
