"""Position encodings: Fourier features (paper spec), trainable, and a linear projector.

Follows DeepMind's `perceiver/position_encoding.py`. Every encoding is called as
`pos_enc(batch_size, pos=None) -> [batch, prod(index_dims), channels]` and exposes
`num_channels` so widths are known when the model is constructed.

Against HF's port (PerceiverFourierPositionEncoding): given explicit positions, HF
encodes the first example's positions for the whole batch, here each example gets its
own (as DeepMind). Grids and frequency bands come from jnp.linspace as in DeepMind;
torch.linspace rounds differently in float32, so at full size the features differ from
HF's by up to 9e-5 (224x224, 64 bands) and 1.8e-4 (368x496); at the parity fixtures'
sizes far below 1e-5.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perceiver_jax.model import checks
from perceiver_jax.model.attention import dense
from perceiver_jax.model.partitioning import logical_axes

Dtype = Any


def build_linear_positions(index_dims: Sequence[int],
                           output_range: tuple[float, float] = (-1.0, 1.0)) -> jax.Array:
  """Grid of coordinates: [*index_dims, len(index_dims)], linspace(-1, 1, n) per dim."""
  ranges = [jnp.linspace(output_range[0], output_range[1], num=n, endpoint=True,
                         dtype=jnp.float32) for n in index_dims]
  return jnp.stack(jnp.meshgrid(*ranges, indexing='ij'), axis=-1)


def fourier_num_channels(num_dims: int, num_bands: int, *, concat_pos: bool = True,
                         sine_only: bool = False) -> int:
  """Width of `generate_fourier_features`: d*K (sine_only) or 2*d*K, plus d if concat_pos."""
  return num_dims * num_bands * (1 if sine_only else 2) + (num_dims if concat_pos else 0)


def generate_fourier_features(pos: jax.Array, num_bands: int,
                              max_resolution: Sequence[int], *, concat_pos: bool = True,
                              sine_only: bool = False) -> jax.Array:
  """Fourier features of positions.

  Args:
    pos: [n, d] positions in [-1, 1].
    num_bands: K frequency bands per dim, linspace(1, max_resolution_d / 2, K).
    max_resolution: d resolutions (the Nyquist frequency is resolution / 2).
    concat_pos: prepend the raw d positions.
    sine_only: only sin(pi f x) instead of sin and cos.

  Returns:
    [n, C], ordered as [pos_1..pos_d, sin(pi f_1 pos_1)..sin(pi f_K pos_1), ...,
    sin(.. pos_d), cos(pi f_1 pos_1), ..., cos(.. pos_d)] (DeepMind's order).
  """
  if len(max_resolution) != pos.shape[-1]:
    raise ValueError(f'max_resolution {tuple(max_resolution)} needs one entry per '
                     f'position dimension ({pos.shape[-1]}).')
  freq_bands = jnp.stack([jnp.linspace(1.0, res / 2, num=num_bands, endpoint=True)
                          for res in max_resolution], axis=0)  # [d, K]
  features = (pos[:, :, None] * freq_bands[None]).reshape(pos.shape[0], -1)  # [n, d*K]
  if sine_only:
    features = jnp.sin(jnp.pi * features)
  else:
    features = jnp.concatenate(
        [jnp.sin(jnp.pi * features), jnp.cos(jnp.pi * features)], axis=-1)
  if concat_pos:
    features = jnp.concatenate([pos, features], axis=-1)
  return features


class FourierPositionEncoding(nnx.Module):
  """Fixed Fourier features over an index grid: -> [batch, prod(index_dims), num_channels]."""

  def __init__(self, index_dims: Sequence[int], num_bands: int, *,
               max_resolution: Sequence[int] | None = None, concat_pos: bool = True,
               sine_only: bool = False, dtype: Dtype = jnp.float32):
    self.index_dims = tuple(int(d) for d in index_dims)
    self.num_bands = num_bands
    # The index dims are the resolution unless told otherwise (DeepMind's default).
    self.max_resolution = tuple(max_resolution or self.index_dims)
    if len(self.max_resolution) != len(self.index_dims):
      raise ValueError(f'max_resolution {self.max_resolution} needs one entry per index '
                       f'dim of {self.index_dims} (or None to use the index dims).')
    self.concat_pos = concat_pos
    self.sine_only = sine_only
    self.dtype = dtype
    self.num_channels = fourier_num_channels(len(self.index_dims), num_bands,
                                             concat_pos=concat_pos, sine_only=sine_only)

  def __call__(self, batch_size: int, pos: jax.Array | None = None) -> jax.Array:
    """pos: optional [batch, n, d] positions; default is the full linear grid."""
    if pos is None:
      grid = build_linear_positions(self.index_dims).reshape(-1, len(self.index_dims))
      feats = generate_fourier_features(grid, self.num_bands, self.max_resolution,
                                        concat_pos=self.concat_pos, sine_only=self.sine_only)
      return jnp.broadcast_to(feats[None], (batch_size,) + feats.shape).astype(self.dtype)
    if pos.shape[-1] != len(self.index_dims):
      raise ValueError(f'pos has {pos.shape[-1]} coordinates per point; expected '
                       f'{len(self.index_dims)} for index_dims {self.index_dims}.')
    fn = lambda p: generate_fourier_features(p, self.num_bands, self.max_resolution,
                                             concat_pos=self.concat_pos,
                                             sine_only=self.sine_only)
    return jax.vmap(fn)(pos.astype(jnp.float32)).astype(self.dtype)


class TrainablePositionEncoding(nnx.Module):
  """Learned [index_dim, num_channels] table `pos_embs`, broadcast to [batch, index_dim, C].

  Also the Perceiver's latent array. `channel_name` is the logical name of the
  channel axis ('embed' for latents/queries, 'pos_channels' for input encodings).
  """
  HAIKU_NAMES = {'pos_embs': 'trainable_position_encoding/pos_embs'}

  def __init__(self, index_dim: int, num_channels: int = 128, *, init_scale: float = 0.02,
               channel_name: str | None = 'pos_channels', index_name: str | None = 'latents',
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.index_dim = int(index_dim)
    self.num_channels = int(num_channels)
    self.dtype = dtype
    init = jax.nn.initializers.truncated_normal(stddev=init_scale)
    self.pos_embs = nnx.Param(
        init(rngs.params(), (self.index_dim, self.num_channels), param_dtype),
        **logical_axes((index_name, channel_name)))

  def __call__(self, batch_size: int | None, pos: jax.Array | None = None) -> jax.Array:
    del pos  # A learned table has no notion of coordinates.
    pos_embs = self.pos_embs[...].astype(self.dtype)
    if batch_size is None:
      return pos_embs
    return jnp.broadcast_to(pos_embs[None], (batch_size,) + pos_embs.shape)


class PositionEncodingProjector(nnx.Module):
  """Linear projection of a base encoding to `output_size` channels.

  In Haiku the base encoding is a sibling module (e.g. `trainable_position_encoding`)
  and the projection is `position_encoding_projector/linear`.
  """
  HAIKU_NAMES = {'base': 'trainable_position_encoding (a sibling in Haiku)',
                 'linear': 'position_encoding_projector/linear'}

  def __init__(self, output_size: int, base_position_encoding: nnx.Module, *,
               channel_name: str | None = 'pos_channels', dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.base = base_position_encoding
    self.num_channels = int(output_size)
    # hk.Linear's default init: truncated normal with stddev 1/sqrt(fan_in).
    init = jax.nn.initializers.truncated_normal(
        stddev=1.0 / math.sqrt(base_position_encoding.num_channels))
    self.linear = dense(base_position_encoding.num_channels, output_size,
                        (None, channel_name), kernel_init=init, rngs=rngs, dtype=dtype,
                        param_dtype=param_dtype)

  def __call__(self, batch_size: int, pos: jax.Array | None = None) -> jax.Array:
    return self.linear(self.base(batch_size, pos))


def build_position_encoding(config: Any, index_dims: Sequence[int], *,
                            rngs: nnx.Rngs, channel_name: str | None = 'pos_channels',
                            dtype: Dtype = jnp.float32,
                            param_dtype: Dtype = jnp.float32) -> nnx.Module | None:
  """Position encoding from a config (a ConfigDict or dict with the fields of
  `model.preprocessor.position_encoding`).

  config.name: 'fourier' (num_bands, max_resolution, concat_pos, sine_only),
  'trainable' (num_channels, init_scale) or 'none' (returns None); then an optional
  linear projection to config.project_pos_dim channels when it is > 0.
  """
  name = config['name']
  checks.choice('position encoding name', name, POSITION_ENCODINGS)
  if name == 'none':
    return None
  if name == 'fourier':
    checks.positive(num_bands=config['num_bands'])
    pos_enc = FourierPositionEncoding(
        index_dims, config['num_bands'], max_resolution=config.get('max_resolution'),
        concat_pos=config.get('concat_pos', True), sine_only=config.get('sine_only', False),
        dtype=dtype)
  else:
    checks.positive(num_channels=config['num_channels'])
    pos_enc = TrainablePositionEncoding(
        int(np.prod(index_dims)), config['num_channels'],
        init_scale=config.get('init_scale', 0.02), channel_name=channel_name,
        dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  if config.get('project_pos_dim', -1) > 0:
    pos_enc = PositionEncodingProjector(config['project_pos_dim'], pos_enc,
                                        channel_name=channel_name, dtype=dtype,
                                        param_dtype=param_dtype, rngs=rngs)
  return pos_enc


def build_query_encoding(config: Any, index_dims: Sequence[int], num_channels: int | None,
                         init_scale: float, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                         param_dtype: Dtype = jnp.float32) -> nnx.Module | None:
  """A decoder's query encoding: a 'trainable' table is num_channels wide and starts at
  init_scale unless `config` sets num_channels / init_scale itself."""
  config = dict(config)
  if config['name'] == 'trainable':
    if config.get('num_channels') is None:
      config['num_channels'] = num_channels
    if config.get('init_scale') is None:
      config['init_scale'] = init_scale
  return build_position_encoding(config, index_dims, rngs=rngs, channel_name='embed',
                                 dtype=dtype, param_dtype=param_dtype)


# config name -> the class whose kwargs its config section holds (None: no encoding);
# every section may add project_pos_dim (> 0: a linear projection to that many channels).
POSITION_ENCODINGS = {'fourier': FourierPositionEncoding,
                      'trainable': TrainablePositionEncoding, 'none': None}
