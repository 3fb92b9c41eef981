"""Output postprocessors (after DeepMind's `io_processors.py`): decoder outputs -> task outputs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from perceiver_jax.model.attention import dense

Dtype = Any


class IdentityPostprocessor(nnx.Module):
  """Returns the decoder output unchanged."""

  def __call__(self, outputs: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    return outputs


class ClassificationPostprocessor(nnx.Module):
  """[batch, 1, C] decoder output -> [batch, num_classes] logits (the first query).

  With `num_input_channels` it first applies a linear C -> num_classes, as DeepMind's
  ClassificationPostprocessor; without it the decoder must already emit classes.
  """

  def __init__(self, num_classes: int, *, num_input_channels: int | None = None,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs | None = None):
    self.num_classes = num_classes
    self.linear = nnx.data(None)
    if num_input_channels is not None:
      self.linear = dense(num_input_channels, num_classes, ('embed', 'classes'), rngs=rngs,
                          dtype=dtype, param_dtype=param_dtype)

  def __call__(self, outputs: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    if self.linear is not None:
      outputs = self.linear(outputs)
    if outputs.ndim != 3 or outputs.shape[-1] != self.num_classes:
      raise ValueError(f'ClassificationPostprocessor expects [batch, queries, '
                       f'{self.num_classes}] but got {list(outputs.shape)}.')
    return outputs[:, 0, :]
