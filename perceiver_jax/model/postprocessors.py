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


def _hk_linear_init(fan_in: int):
  # hk.Linear's default initialiser: truncated normal with stddev 1/sqrt(fan_in).
  return jax.nn.initializers.truncated_normal(stddev=1.0 / fan_in ** 0.5)


class ProjectionPostprocessor(nnx.Module):
  """Linear map of every decoder output: [batch, M, C] -> [batch, M, num_outputs]
  (e.g. the RGB values of decoded video pixels)."""
  HAIKU_NAMES = {'linear': 'projection_postprocessor/linear'}

  def __init__(self, num_input_channels: int, num_outputs: int, *,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.linear = dense(num_input_channels, num_outputs, ('embed', 'classes'),
                        kernel_init=_hk_linear_init(num_input_channels), rngs=rngs,
                        dtype=dtype, param_dtype=param_dtype)

  def __call__(self, outputs: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    return self.linear(outputs)


class AudioPostprocessor(nnx.Module):
  """Decoded audio patches -> raw samples: [batch, M, C] -> [batch, M * samples_per_patch]."""
  HAIKU_NAMES = {'linear': 'audio_postprocessor/linear'}

  def __init__(self, num_input_channels: int, samples_per_patch: int, *,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.samples_per_patch = samples_per_patch
    self.linear = dense(num_input_channels, samples_per_patch, ('embed', None),
                        kernel_init=_hk_linear_init(num_input_channels), rngs=rngs,
                        dtype=dtype, param_dtype=param_dtype)

  def __call__(self, outputs: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    return self.linear(outputs).reshape(outputs.shape[0], -1)


def split_modalities(x: jax.Array, modality_sizes: dict[str, int]) -> dict[str, jax.Array]:
  """[batch, sum(sizes), ...] -> {modality: [batch, size, ...]}, slicing the index axis
  in sorted modality order (the order in which modalities are concatenated)."""
  if x.shape[1] != sum(modality_sizes.values()):
    raise ValueError(f'Cannot split an index axis of {x.shape[1]} entries into modalities '
                     f'of sizes {dict(sorted(modality_sizes.items()))}.')
  out, start = {}, 0
  for modality in sorted(modality_sizes):
    out[modality] = x[:, start:start + modality_sizes[modality]]
    start += modality_sizes[modality]
  return out


class MultimodalPostprocessor(nnx.Module):
  """Splits the flat decoder output by modality and postprocesses each one.

  outputs [batch, sum(modality_sizes), C] -> {modality: postprocessed output}. A
  modality without a postprocessor returns its slice unchanged.
  """
  HAIKU_NAMES = {'modalities': 'the per-modality postprocessors, at the top level'}

  def __init__(self, modalities: dict[str, nnx.Module]):
    self.modalities = nnx.Dict(modalities)

  def __call__(self, outputs: jax.Array | dict[str, jax.Array], *,
               modality_sizes: dict[str, int] | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    if not isinstance(outputs, dict):
      if modality_sizes is None:
        raise ValueError('MultimodalPostprocessor needs modality_sizes to split a flat '
                         'decoder output; pass a dict of per-modality outputs otherwise.')
      outputs = split_modalities(outputs, modality_sizes)
    result = {}
    for modality, value in outputs.items():
      if modality in self.modalities:
        value = self.modalities[modality](value, deterministic=deterministic, rngs=rngs)
      result[modality] = value
    return result


class FlowPostprocessor(nnx.Module):
  """Flow [batch, H, W, 2] -> flow * `flow_scale` (DeepMind's optical-flow colab multiplies
  the model output by FLOW_SCALE_FACTOR = 20 to get pixels; HF returns it unscaled, = 1)."""

  def __init__(self, flow_scale: float = 1.0):
    self.flow_scale = float(flow_scale)

  def __call__(self, outputs: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    if outputs.ndim != 4:
      raise ValueError(f'FlowPostprocessor expects flow [batch, H, W, channels] but got '
                       f'{list(outputs.shape)}.')
    return outputs * self.flow_scale
