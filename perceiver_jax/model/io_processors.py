"""Input preprocessors (after DeepMind's `io_processors.py`).

A preprocessor is built for one per-example input shape `(*index_dims, channels)` and
maps inputs [batch, *index_dims, channels] to a `PreprocessorOutput` whose `inputs`
are [batch, N, num_channels] (index flattened, position features added). Its
`num_channels` and `index_dims` are known at construction, so the encoder can be
sized before any data is seen.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perceiver_jax.model import checks
from perceiver_jax.model import position_encoding as pe
from perceiver_jax.model.attention import dense

Dtype = Any
COMBINE_MODES = ('concat', 'add')


class PreprocessorOutput(NamedTuple):
  """inputs: [batch, N, C'] (network input); inputs_without_pos: [batch, N, C];
  pos_enc: [batch, N, P] or None; modality_sizes: per-modality N (multimodal only)."""
  inputs: jax.Array
  inputs_without_pos: jax.Array
  pos_enc: jax.Array | None
  modality_sizes: dict[str, int] | None = None


def space_to_depth(x: jax.Array, patch_size: Sequence[int]) -> jax.Array:
  """[batch, *index_dims, C] -> [batch, *(index_dims / patch), prod(patch) * C].

  Channels are ordered (patch offsets..., C) like DeepMind's
  'b (h dh) (w dw) c -> b h w (dh dw c)'.
  """
  batch, *index_dims, channels = x.shape
  d = len(index_dims)
  split = [batch]
  for n, p in zip(index_dims, patch_size):
    split += [n // p, p]
  x = x.reshape(split + [channels])
  # Grid axes first (1, 3, 5, ...), then patch offsets (2, 4, ...), then channels.
  perm = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [2 * d + 1]
  x = x.transpose(perm)
  grid = [n // p for n, p in zip(index_dims, patch_size)]
  return x.reshape([batch] + grid + [int(np.prod(patch_size)) * channels])


def window_grid(index_dims: Sequence[int], window: Sequence[int], stride: Sequence[int],
                padding: Sequence[int]) -> tuple[int, ...]:
  """The grid of `window`-sized patches taken every `stride` positions over index dims
  zero-padded by `padding` on each side (a VALID convolution's output size)."""
  return tuple((n + 2 * q - k) // s + 1
               for n, k, s, q in zip(index_dims, window, stride, padding))


def extract_windows(x: jax.Array, window: Sequence[int], stride: Sequence[int],
                    padding: Sequence[int]) -> jax.Array:
  """[batch, *index_dims, C] -> [batch, *grid, prod(window) * C]: the (possibly
  overlapping) window at every stride, zero padded by `padding` each side; channels ordered
  (window offsets..., C) like `space_to_depth`, which this equals when stride == window
  and padding is 0."""
  index_dims = x.shape[1:-1]
  grid = window_grid(index_dims, window, stride, padding)
  x = jnp.pad(x, [(0, 0)] + [(q, q) for q in padding] + [(0, 0)])
  pieces = []
  for offsets in np.ndindex(*window):
    index = tuple(slice(o, o + s * (g - 1) + 1, s)
                  for o, s, g in zip(offsets, stride, grid))
    pieces.append(x[(slice(None),) + index])
  return jnp.concatenate(pieces, axis=-1)


class _PositionalPreprocessor(nnx.Module):
  """Shared logic: flatten the index dims and concat/add position features."""

  def _init_position(self, index_dims: Sequence[int], features: int, position_encoding,
                     combine: str, rngs: nnx.Rngs, dtype: Dtype, param_dtype: Dtype, *,
                     n_extra_pos_mlp: int = 0):
    """n_extra_pos_mlp: residual linear layers (ReLU between) on the position encoding,
    DeepMind's `n_extra_pos_mlp` (Haiku names linear, linear_1, ...)."""
    if combine not in COMBINE_MODES:
      raise ValueError(f"Unknown position combine mode {combine!r}; valid modes are "
                       f"'concat' and 'add'.")
    self.index_dims = tuple(int(n) for n in index_dims)
    self.num_index = int(np.prod(self.index_dims))
    self.combine = combine
    self.dtype = dtype
    self.pos_enc = pe.build_position_encoding(
        position_encoding, self.index_dims, rngs=rngs, dtype=dtype,
        param_dtype=param_dtype) if position_encoding is not None else None
    pos_channels = 0 if self.pos_enc is None else self.pos_enc.num_channels
    if n_extra_pos_mlp and self.pos_enc is None:
      raise ValueError('n_extra_pos_mlp needs a position encoding; set '
                       'position_encoding.name or n_extra_pos_mlp=0.')
    # hk.Linear's default init: truncated normal with stddev 1/sqrt(fan_in).
    init = jax.nn.initializers.truncated_normal(stddev=1.0 / max(pos_channels, 1) ** 0.5)
    self.extra_pos_mlp = nnx.List([
        dense(pos_channels, pos_channels, (None, 'pos_channels'), kernel_init=init,
              rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        for _ in range(n_extra_pos_mlp)])
    if combine == 'add' and self.pos_enc is not None and pos_channels != features:
      raise ValueError(
          f"combine='add' needs position encoding channels ({pos_channels}) equal to the "
          f"input channels ({features}); set position_encoding.project_pos_dim={features}.")
    self.num_channels = features + pos_channels if combine == 'concat' else features

  def _build_network_inputs(self, x: jax.Array, pos: jax.Array | None
                            ) -> PreprocessorOutput:
    batch = x.shape[0]
    x = x.reshape(batch, self.num_index, x.shape[-1]).astype(self.dtype)
    if self.pos_enc is None:
      return PreprocessorOutput(x, x, None)
    pos_enc = self.pos_enc(batch, pos).astype(self.dtype)
    for i, linear in enumerate(self.extra_pos_mlp):
      pos_enc = pos_enc + linear(pos_enc)
      if i < len(self.extra_pos_mlp) - 1:
        pos_enc = jax.nn.relu(pos_enc)
    if self.combine == 'concat':
      with_pos = jnp.concatenate([x, pos_enc], axis=-1)
    else:
      with_pos = x + pos_enc
    return PreprocessorOutput(with_pos, x, pos_enc)

  def _check_input(self, inputs: jax.Array, expected: tuple[int, ...]):
    if tuple(inputs.shape[1:]) != expected:
      raise ValueError(f'{type(self).__name__} was built for inputs of shape '
                       f'[batch, {", ".join(map(str, expected))}] but got '
                       f'{list(inputs.shape)}.')


class GenericPreprocessor(_PositionalPreprocessor):
  """[batch, *index_dims, C] -> [batch, prod(index_dims), C (+ pos channels)].

  Flattens the index dims and concatenates (or adds) position features over them.
  """

  def __init__(self, input_shape: Sequence[int], *, position_encoding=None,
               combine: str = 'concat', dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.input_shape = tuple(int(n) for n in input_shape)
    if len(self.input_shape) < 2:
      raise ValueError(f'input_shape must be (*index_dims, channels), got '
                       f'{self.input_shape}; add a trailing channel axis of 1.')
    self._init_position(self.input_shape[:-1], self.input_shape[-1], position_encoding,
                        combine, rngs, dtype, param_dtype)

  def __call__(self, inputs: jax.Array, *, pos: jax.Array | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None
               ) -> PreprocessorOutput:
    self._check_input(inputs, self.input_shape)
    return self._build_network_inputs(inputs, pos)


class PatchesPreprocessor(_PositionalPreprocessor):
  """Space-to-depth patches, optional linear, then position features on the patch grid.

  [batch, *index_dims, C] -> [batch, prod(grid), num_channels (+ pos)].
  Works for 1-D (audio, sequences) and 2-D (images) windows; `num_channels=0` keeps
  the raw prod(patch_size) * C patch features. By default the windows tile the input
  (grid = index_dims / patch_size). `patch_stride` (< patch_size: overlapping windows)
  and `patch_padding` (zeros on each side of every index dim) take a window every
  stride positions instead, e.g. 3x3 windows at stride 2 with padding 1 on an 8x8 image
  give a 4x4 grid; every input position must fall in some window. Each takes one entry
  per index dim, or one for all; () means stride = patch_size and no padding.
  """
  HAIKU_NAMES = {'patches_linear': 'patches_linear'}

  def __init__(self, input_shape: Sequence[int], patch_size: int | Sequence[int] = (4,), *,
               num_channels: int = 0, patch_stride: Sequence[int] = (),
               patch_padding: Sequence[int] = (), position_encoding=None,
               combine: str = 'concat', dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.input_shape = tuple(int(n) for n in input_shape)
    index_dims, channels = self.input_shape[:-1], self.input_shape[-1]
    self.patch_size = self._per_dim('patch_size', patch_size, index_dims)
    checks.at_least_zero(num_channels=num_channels)
    self.patch_stride = self._per_dim('patch_stride', patch_stride or self.patch_size,
                                      index_dims)
    self.patch_padding = self._per_dim('patch_padding', patch_padding or (0,), index_dims,
                                       allow_zero=True)
    self.overlapping = (self.patch_stride != self.patch_size or any(self.patch_padding))
    if not self.overlapping:
      if any(n % p for n, p in zip(index_dims, self.patch_size)):
        raise ValueError(f'Index dims {index_dims} are not divisible by patch_size '
                         f'{self.patch_size}; choose windows that tile the input exactly '
                         f'(or set patch_stride / patch_padding).')
      grid = tuple(n // p for n, p in zip(index_dims, self.patch_size))
    else:
      grid = window_grid(index_dims, self.patch_size, self.patch_stride,
                         self.patch_padding)
      for n, k, s, q, g in zip(index_dims, self.patch_size, self.patch_stride,
                               self.patch_padding, grid):
        # Windows must leave no gap (stride <= window), start no later than the first
        # input position and reach the last one.
        if n + 2 * q < k or s > k or q >= k or (g - 1) * s - q + k < n:
          raise ValueError(
              f'patch_size {self.patch_size} with patch_stride {self.patch_stride} and '
              f'patch_padding {self.patch_padding} does not cover index dims {index_dims} '
              f'(each input position needs to fall in a window; stride <= window, '
              f'padding < window).')
    patch_features = int(np.prod(self.patch_size)) * channels
    self.patches_linear = nnx.data(None)
    if num_channels > 0:
      self.patches_linear = dense(patch_features, num_channels, (None, 'input_channels'),
                                  rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    features = num_channels if num_channels > 0 else patch_features
    self._init_position(grid, features, position_encoding, combine, rngs, dtype,
                        param_dtype)

  def _per_dim(self, name: str, value, index_dims, allow_zero: bool = False
               ) -> tuple[int, ...]:
    if isinstance(value, int):
      value = (value,)
    if not allow_zero:
      checks.positive_ints(name, value)
    elif (not isinstance(value, (tuple, list)) or not value or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
      raise ValueError(f'{name}={value!r} is invalid; use a tuple of ints >= 0, e.g. (1,).')
    value = tuple(int(v) for v in value)
    if len(value) == 1:  # (p,): the same on every index dim
      value = value * len(index_dims)
    if len(value) != len(index_dims):
      raise ValueError(f'{name} {value} needs one entry per index dim of input_shape '
                       f'{self.input_shape} (last entry is channels).')
    return value

  def __call__(self, inputs: jax.Array, *, pos: jax.Array | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None
               ) -> PreprocessorOutput:
    self._check_input(inputs, self.input_shape)
    x = inputs.astype(self.dtype)
    if self.overlapping:
      x = extract_windows(x, self.patch_size, self.patch_stride, self.patch_padding)
    else:
      x = space_to_depth(x, self.patch_size)
    if self.patches_linear is not None:
      x = self.patches_linear(x)
    return self._build_network_inputs(x, pos)
