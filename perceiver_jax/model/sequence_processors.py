"""Preprocessors for audio, 1-D signals, one-hot labels and point clouds (after DeepMind's
`io_processors.py` and Hugging Face's Perceiver).

Like the other preprocessors, each is built for one per-example input shape, knows its
output `num_channels` and `index_dims` at construction, and returns a
`PreprocessorOutput` whose `inputs` are [batch, N, num_channels].
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perceiver_jax.model import checks
from perceiver_jax.model import position_encoding as pe
from perceiver_jax.model.io_processors import PreprocessorOutput, _PositionalPreprocessor
from perceiver_jax.model.partitioning import logical_axes

Dtype = Any

AUDIO_PREP_TYPES = ('patches',)


class AudioPreprocessor(_PositionalPreprocessor):
  """Raw audio -> patches of `samples_per_patch` consecutive samples + position features.

  [batch, num_samples, channels] (or [batch, num_samples]) -> [batch, num_patches,
  samples_per_patch (+ pos channels)], num_patches = num_samples * channels /
  samples_per_patch. Samples are grouped in memory order, as the reference does, so a
  multi-channel signal interleaves its channels inside each patch.

  The position encoding is over the patch index (index_dims = (num_patches,)); for
  Fourier features `max_resolution` is usually the number of raw samples, as in the
  released multimodal model.
  """
  HAIKU_NAMES = {'pos_enc': '~_build_network_inputs/trainable_position_encoding '
                            '(fourier: no parameters)',
                 'pos_enc/linear': '~_build_network_inputs/position_encoding_projector/linear',
                 'extra_pos_mlp': '~_build_network_inputs/linear, linear_1, ...'}

  def __init__(self, input_shape: Sequence[int], *, samples_per_patch: int = 96,
               prep_type: str = 'patches', position_encoding=None,
               combine: str = 'concat', n_extra_pos_mlp: int = 0,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """n_extra_pos_mlp: residual linear layers on the position encoding (DeepMind's)."""
    if prep_type not in AUDIO_PREP_TYPES:
      raise ValueError(f"Unknown audio prep_type {prep_type!r}; the only valid one is "
                       f"'patches'.")
    self.input_shape = tuple(int(n) for n in input_shape)
    total = int(np.prod(self.input_shape))
    if samples_per_patch < 1 or total % samples_per_patch:
      raise ValueError(f'Audio input of shape {self.input_shape} ({total} values) does not '
                       f'split into patches of samples_per_patch={samples_per_patch}; '
                       f'choose a divisor of {total}.')
    self.samples_per_patch = int(samples_per_patch)
    self._init_position((total // samples_per_patch,), self.samples_per_patch,
                        position_encoding, combine, rngs, dtype, param_dtype,
                        n_extra_pos_mlp=n_extra_pos_mlp)

  def __call__(self, inputs: jax.Array, *, pos: jax.Array | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None
               ) -> PreprocessorOutput:
    self._check_input(inputs, self.input_shape)
    patches = inputs.reshape(inputs.shape[0], self.num_index, self.samples_per_patch)
    return self._build_network_inputs(patches, pos)


class Conv1DPreprocessor(_PositionalPreprocessor):
  """A small conv stem for 1-D signals: conv -> ReLU -> max-pool, then position features.

  The 1-D counterpart of the image 'conv' stem (DeepMind's Conv2DDownsample): each token
  summarises an overlapping stretch of the signal, the locality prior a Perceiver lacks.
  [batch, length, C] -> [batch, ceil(ceil(length / stride) / pool), num_channels (+ pos)].
  """
  HAIKU_NAMES = {'conv': 'conv1_d'}

  def __init__(self, input_shape: Sequence[int], *, num_channels: int = 64,
               kernel_size: int = 5, stride: int = 1, pool_size: int = 2,
               position_encoding=None, combine: str = 'concat',
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.input_shape = tuple(int(n) for n in input_shape)
    if len(self.input_shape) != 2:
      raise ValueError(f'Conv1DPreprocessor expects per-example inputs of shape (length, '
                       f'channels), got {self.input_shape}.')
    if min(num_channels, kernel_size, stride, pool_size) < 1:
      raise ValueError('Conv1DPreprocessor needs num_channels, kernel_size, stride and '
                       f'pool_size >= 1, got {num_channels}, {kernel_size}, {stride}, '
                       f'{pool_size}.')
    length, channels = self.input_shape
    self.pool_size = int(pool_size)
    self.conv = nnx.Conv(channels, num_channels, (kernel_size,), strides=(stride,),
                         padding='SAME', dtype=dtype, param_dtype=param_dtype,
                         kernel_metadata=logical_axes((None, None, 'input_channels')),
                         bias_metadata=logical_axes(('input_channels',)), rngs=rngs)
    tokens = -(-(-(-length // stride)) // self.pool_size)
    self._init_position((tokens,), num_channels, position_encoding, combine, rngs, dtype,
                        param_dtype)

  def __call__(self, inputs: jax.Array, *, pos: jax.Array | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None
               ) -> PreprocessorOutput:
    self._check_input(inputs, self.input_shape)
    x = jax.nn.relu(self.conv(inputs.astype(self.dtype)))
    if self.pool_size > 1:
      x = nnx.max_pool(x, (self.pool_size,), strides=(self.pool_size,), padding='SAME')
    return self._build_network_inputs(x, pos)


class OneHotPreprocessor(nnx.Module):
  """A vector per example (e.g. a one-hot label) as a single input token.

  [batch, num_classes] -> [batch, 1, num_classes]; no position features, so `inputs`
  and `inputs_without_pos` are the same array.
  """

  def __init__(self, input_shape: Sequence[int], *, dtype: Dtype = jnp.float32):
    self.input_shape = tuple(int(n) for n in input_shape)
    if len(self.input_shape) != 1:
      raise ValueError(f'OneHotPreprocessor expects per-example inputs of shape '
                       f'(num_classes,), got {self.input_shape}.')
    self.index_dims = (1,)
    self.num_index = 1
    self.num_channels = self.input_shape[0]
    self.dtype = dtype

  def __call__(self, inputs: jax.Array, *, pos: jax.Array | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None
               ) -> PreprocessorOutput:
    if tuple(inputs.shape[1:]) != self.input_shape:
      raise ValueError(f'OneHotPreprocessor was built for inputs of shape '
                       f'[batch, {self.input_shape[0]}] but got {list(inputs.shape)}.')
    x = inputs.astype(self.dtype)[:, None, :]
    return PreprocessorOutput(x, x, None)


class PointCloudPreprocessor(nnx.Module):
  """Points -> per-point features + Fourier features of their xyz coordinates.

  DeepMind released no point-cloud preprocessor; this follows the Perceiver paper's
  ModelNet40 setup: each point's coordinates are encoded with Fourier features (the
  points themselves are the positions, there is no grid).

  [batch, num_points, 3 + F] -> [batch, num_points, F + fourier channels], where the
  first 3 input channels are xyz (expected in [-1, 1], e.g. normalised to the unit
  sphere) and the F remaining channels (normals, colours, ...) pass through. With
  `concat_pos` the raw xyz are part of the Fourier features.
  """

  def __init__(self, input_shape: Sequence[int], *, num_bands: int = 64,
               max_resolution: int | Sequence[int] = 64, concat_pos: bool = True,
               sine_only: bool = False, dtype: Dtype = jnp.float32):
    self.input_shape = tuple(int(n) for n in input_shape)
    if len(self.input_shape) != 2 or self.input_shape[1] < 3:
      raise ValueError(f'PointCloudPreprocessor expects per-example inputs of shape '
                       f'(num_points, 3 + features) with xyz first, got '
                       f'{self.input_shape}.')
    if isinstance(max_resolution, (int, np.integer)):
      max_resolution = (int(max_resolution),) * 3
    self.max_resolution = tuple(float(r) for r in max_resolution)
    if len(self.max_resolution) != 3:
      raise ValueError(f'max_resolution needs one value per coordinate (x, y, z) or a '
                       f'single value, got {tuple(max_resolution)}.')
    checks.positive(num_bands=num_bands)
    self.num_bands = int(num_bands)
    self.concat_pos = concat_pos
    self.sine_only = sine_only
    self.dtype = dtype
    self.index_dims = (self.input_shape[0],)
    self.num_index = self.input_shape[0]
    self.num_pos_channels = pe.fourier_num_channels(3, self.num_bands,
                                                    concat_pos=concat_pos,
                                                    sine_only=sine_only)
    self.num_channels = self.input_shape[1] - 3 + self.num_pos_channels

  def __call__(self, inputs: jax.Array, *, pos: jax.Array | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None
               ) -> PreprocessorOutput:
    """pos: optional [batch, num_points, 3] coordinates to encode instead of inputs' xyz."""
    if tuple(inputs.shape[1:]) != self.input_shape:
      raise ValueError(f'PointCloudPreprocessor was built for inputs of shape [batch, '
                       f'{", ".join(map(str, self.input_shape))}] but got '
                       f'{list(inputs.shape)}.')
    x = inputs.astype(jnp.float32)
    xyz = x[..., :3] if pos is None else pos.astype(jnp.float32)
    fourier = lambda p: pe.generate_fourier_features(
        p, self.num_bands, self.max_resolution, concat_pos=self.concat_pos,
        sine_only=self.sine_only)
    pos_enc = jax.vmap(fourier)(xyz).astype(self.dtype)
    features = jnp.concatenate([x[..., 3:].astype(self.dtype), pos_enc], axis=-1)
    return PreprocessorOutput(features, x.astype(self.dtype), pos_enc)
