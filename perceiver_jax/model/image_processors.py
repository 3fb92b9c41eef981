"""Image and video preprocessing (DeepMind's `ImagePreprocessor`, HF's
`PerceiverImagePreprocessor`), the conv stem `Conv2DDownsample`, and the 3x3 pixel
patches of the optical-flow model.

Inputs are channels-last: images [batch, H, W, C], videos [batch, T, H, W, C] (HF takes
channels-first; transpose before calling). `prep_type`:
  'pixels'   raw pixels, strided by spatial/temporal_downsample (the crudest downsampling);
  'patches'  space-to-depth blocks of (temporal_downsample x) spatial_downsample^2 pixels,
             optionally followed by a linear layer (`conv_after_patching`); a video
             whose time axis patches down to 1 becomes an image (the flow model's two frames);
  'conv'     log4(spatial_downsample) x [7x7/2 conv -> BatchNorm -> ReLU -> 3x3/2 max-pool];
  'conv1x1'  a 1x1 conv with stride spatial_downsample.
Position features are then built on the index grid left after preprocessing.

BatchNorm ('conv') follows the model's `deterministic` flag: deterministic=True (eval) uses
the running averages, deterministic=False (training) normalises with the batch statistics
and updates the running averages (flax momentum = Haiku decay_rate = 0.9). The running
averages are `nnx.BatchStat`s, so they live in TrainState.model_state, not in the params.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from perceiver_jax.model import checks
from perceiver_jax.model.attention import dense
from perceiver_jax.model.io_processors import PreprocessorOutput, _PositionalPreprocessor
from perceiver_jax.model.io_processors import space_to_depth
from perceiver_jax.model.partitioning import logical_axes

Dtype = Any
PREP_TYPES = ('pixels', 'patches', 'conv', 'conv1x1')
# 'same': TensorFlow/Haiku SAME padding, as DeepMind trained the released weights.
# 'transformers': HF's port (3 pixels each side for the 7x7 conv, unpadded max-pool),
#   which gives e.g. 55x55 instead of 56x56 features on 224x224 images.
CONV_PADDINGS = ('same', 'transformers')
_BATCHNORM_DEFAULTS = dict(momentum=0.9, epsilon=1e-5)


def patches_for_flow(frames: jax.Array, size: int = 3) -> jax.Array:
  """[batch, T, H, W, C] -> [batch, T, H, W, size*size*C]: the size x size neighbourhood
  of every pixel (zero padded at the border), ordered (row offset, col offset, C) like
  DeepMind's `patches_for_flow` (tf.image.extract_patches)."""
  if frames.ndim != 5:
    raise ValueError(f'patches_for_flow expects frames [batch, T, H, W, C], got shape '
                     f'{list(frames.shape)}.')
  r = size // 2
  padded = jnp.pad(frames, [(0, 0), (0, 0), (r, size - 1 - r), (r, size - 1 - r), (0, 0)])
  height, width = frames.shape[2:4]
  shifted = [padded[:, :, i:i + height, j:j + width, :]
             for i in range(size) for j in range(size)]
  return jnp.concatenate(shifted, axis=-1)


def flow_match_costs(frames: jax.Array, radius: int, window: int) -> jax.Array:
  """[batch, 2, H, W, C] -> [batch, H, W, (2*radius+1)^2]: for every frame-1 pixel and every
  displacement (dy, dx) in [-radius, radius]^2 (row-major, dy outer), the squared difference
  between frame 1 and frame 2 shifted by it, averaged over channels and over the
  window x window pixels around (a block-matching cost volume). Frame 2 repeats its border
  beyond the edge; the window average covers only pixels inside the image."""
  if frames.ndim != 5 or frames.shape[1] != 2:
    raise ValueError(f'flow_match_costs expects two frames [batch, 2, H, W, C], got shape '
                     f'{list(frames.shape)}.')
  first, second = frames[:, 0], frames[:, 1]
  height, width = first.shape[1:3]
  padded = jnp.pad(second, [(0, 0), (radius, radius), (radius, radius), (0, 0)], mode='edge')
  costs = jnp.stack([
      jnp.mean(jnp.square(first - padded[:, dy:dy + height, dx:dx + width]), axis=-1)
      for dy in range(2 * radius + 1) for dx in range(2 * radius + 1)], axis=-1)
  return _box_mean(costs, window)


def _box_mean(x: jax.Array, window: int) -> jax.Array:
  """Mean of x [batch, H, W, C] over the window x window pixels around each pixel that lie
  inside the image; as two 1-D sums (rows, then columns), window + window adds a value
  instead of window^2."""
  half = window // 2
  for axis in (1, 2):
    dims, pads = [1, 1, 1, 1], [(0, 0)] * 4
    dims[axis], pads[axis] = window, (half, window - 1 - half)
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, tuple(dims), (1, 1, 1, 1), pads)
  counts = [jnp.minimum(jnp.arange(n) + window - half, n) - jnp.maximum(jnp.arange(n) - half, 0)
            for n in x.shape[1:3]]
  return x / (counts[0][:, None, None] * counts[1][None, :, None]).astype(x.dtype)


def _conv_out(n: int) -> int:
  # 7x7 stride-2 conv: SAME gives ceil(n/2); HF pads 3+3, which gives the same size.
  return -(-n // 2)


def _pool_out(n: int, padding: str) -> int:
  # 3x3 stride-2 max-pool: SAME gives ceil(n/2); HF's unpadded pool floor((n-3)/2)+1.
  return -(-n // 2) if padding == 'same' else (n - 3) // 2 + 1


def conv_downsample_shape(height: int, width: int, num_layers: int,
                          padding: str = 'same') -> tuple[int, int]:
  """Spatial size after `num_layers` conv+max-pool layers of Conv2DDownsample."""
  for _ in range(num_layers):
    height, width = (_pool_out(_conv_out(n), padding) for n in (height, width))
  if height < 1 or width < 1:
    raise ValueError(f'The image is too small for {num_layers} conv+max-pool layers; '
                     f'use larger images or a smaller spatial_downsample.')
  return height, width


class _ConvBlock(nnx.Module):
  """7x7/2 conv (no bias) -> BatchNorm -> ReLU -> 3x3/2 max-pool: [b, H, W, C] ->
  [b, H', W', num_channels]."""
  HAIKU_NAMES = {'conv': 'conv', 'batchnorm': 'batchnorm'}

  def __init__(self, in_channels: int, num_channels: int, *, use_batchnorm: bool,
               padding: str, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    self.padding = padding
    conv_pad = 'SAME' if padding == 'same' else ((3, 3), (3, 3))
    self.conv = nnx.Conv(
        in_channels, num_channels, (7, 7), strides=(2, 2), padding=conv_pad,
        use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_metadata=logical_axes((None, None, None, 'input_channels')))
    self.batchnorm = nnx.data(None)
    if use_batchnorm:
      self.batchnorm = nnx.BatchNorm(
          num_channels, use_running_average=True, use_fast_variance=False, dtype=dtype,
          param_dtype=param_dtype, scale_metadata=logical_axes(('input_channels',)),
          bias_metadata=logical_axes(('input_channels',)), rngs=rngs,
          **_BATCHNORM_DEFAULTS)

  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    x = self.conv(x)
    if self.batchnorm is not None:
      x = self.batchnorm(x, use_running_average=deterministic)
    x = jax.nn.relu(x)
    return nnx.max_pool(x, (3, 3), strides=(2, 2),
                        padding='SAME' if self.padding == 'same' else 'VALID')


class Conv2DDownsample(nnx.Module):
  """Downsamples 4x per layer: [batch, H, W, C] -> [batch, H', W', num_channels]."""
  HAIKU_NAMES = {'layers': 'conv/batchnorm, conv_1/batchnorm_1, ...'}

  def __init__(self, in_channels: int, *, num_layers: int = 1, num_channels: int = 64,
               use_batchnorm: bool = True, padding: str = 'same',
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    if padding not in CONV_PADDINGS:
      raise ValueError(f"Unknown conv_padding {padding!r}; valid values are 'same' "
                       f"(DeepMind) and 'transformers' (HF's port).")
    self.layers = nnx.List([
        _ConvBlock(in_channels if i == 0 else num_channels, num_channels,
                   use_batchnorm=use_batchnorm, padding=padding, dtype=dtype,
                   param_dtype=param_dtype, rngs=rngs)
        for i in range(num_layers)])

  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    for layer in self.layers:
      x = layer(x, deterministic=deterministic)
    return x


class ImagePreprocessor(_PositionalPreprocessor):
  """Images [batch, H, W, C] or videos [batch, T, H, W, C] -> PreprocessorOutput with
  inputs [batch, N, num_channels] (N = prod(index_dims) after downsampling).

  `num_channels` (the constructor argument) is the width of the conv / conv1x1 /
  patches_linear output; the attribute `num_channels` afterwards is the full network
  input width (features + position channels when concatenated).
  `flow_patch_size` > 0 first replaces each pixel of a video by its
  flow_patch_size^2 neighbourhood (the optical-flow model's input mode).
  `flow_cost_radius` > 0 (not in the paper, which feeds the patches alone) adds to each
  pixel of a frame pair how well it matches frame 2 at every displacement up to that
  radius: a softmax over displacements of -cost / flow_cost_temperature, the cost being
  `flow_match_costs` over flow_cost_window^2 pixels (the temperature is in squared input
  units: frames in [-1, 1] for the flow models). It needs prep_type 'patches' with
  spatial_downsample 1 and temporal_downsample 2 on two frames, so each output token is a
  frame-1 pixel; the probabilities are concatenated before `conv_after_patching`'s linear.
  """
  HAIKU_NAMES = {'convnet': '~/conv2_d_downsample', 'convnet_1x1': '~/conv2_d',
                 'patches_linear': 'patches_linear',
                 'pos_enc': '~_build_network_inputs/(trainable|fourier)_position_encoding '
                            '(or position_encoding_projector)',
                 'extra_pos_mlp': '~_build_network_inputs/linear, linear_1, ...'}

  def __init__(self, input_shape: Sequence[int], *, prep_type: str = 'conv',
               spatial_downsample: int = 4, temporal_downsample: int = 1,
               num_channels: int = 64, conv_after_patching: bool = False,
               conv2d_use_batchnorm: bool = True, conv_padding: str = 'same',
               flow_patch_size: int = 0, flow_cost_radius: int = 0,
               flow_cost_window: int = 7, flow_cost_temperature: float = 1e-4,
               n_extra_pos_mlp: int = 0, position_encoding=None,
               combine: str = 'concat', dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.input_shape = tuple(int(n) for n in input_shape)
    if len(self.input_shape) not in (3, 4):
      raise ValueError(f'ImagePreprocessor needs input_shape (H, W, C) or (T, H, W, C), '
                       f'got {self.input_shape}.')
    if prep_type not in PREP_TYPES:
      raise ValueError(f"Unknown prep_type {prep_type!r}; valid values are "
                       f"{', '.join(repr(p) for p in PREP_TYPES)}.")
    if conv_padding not in CONV_PADDINGS:
      raise ValueError(f"Unknown conv_padding {conv_padding!r}; valid values are 'same' "
                       f"(DeepMind) and 'transformers' (HF's port).")
    checks.positive(spatial_downsample=spatial_downsample,
                    temporal_downsample=temporal_downsample)
    checks.at_least_zero(flow_patch_size=flow_patch_size, flow_cost_radius=flow_cost_radius,
                         n_extra_pos_mlp=n_extra_pos_mlp)
    checks.positive(flow_cost_window=flow_cost_window)
    if not flow_cost_temperature > 0:
      raise ValueError(f'flow_cost_temperature must be > 0, got {flow_cost_temperature!r}.')
    self.prep_type = prep_type
    self.spatial_downsample = int(spatial_downsample)
    self.temporal_downsample = int(temporal_downsample)
    self.flow_patch_size = int(flow_patch_size)
    self.flow_cost_radius = int(flow_cost_radius)
    self.flow_cost_window = int(flow_cost_window)
    self.flow_cost_temperature = float(flow_cost_temperature)
    self.is_video = len(self.input_shape) == 4
    if self.flow_patch_size and not self.is_video:
      raise ValueError('flow_patch_size needs video-shaped inputs (T, H, W, C), e.g. the '
                       'two frames of the flow model.')
    if self.temporal_downsample != 1 and not self.is_video:
      raise ValueError(f'temporal_downsample={temporal_downsample} needs video inputs '
                       f'(T, H, W, C); input_shape is {self.input_shape}.')
    pixel_pairs = (self.is_video and self.input_shape[0] == 2 and prep_type == 'patches'
                   and spatial_downsample == 1 and temporal_downsample == 2)
    if self.flow_cost_radius and not pixel_pairs:
      raise ValueError(f"flow_cost_radius needs two frames (input_shape (2, H, W, C)) and "
                       f"prep_type 'patches' with spatial_downsample=1 and "
                       f"temporal_downsample=2; got input_shape {self.input_shape}, "
                       f"prep_type {prep_type!r}, spatial_downsample {spatial_downsample}, "
                       f"temporal_downsample {temporal_downsample}.")
    needs_width = prep_type in ('conv', 'conv1x1') or (prep_type == 'patches' and
                                                        conv_after_patching)
    if needs_width and num_channels <= 0:
      raise ValueError(f"prep_type {prep_type!r} needs num_channels > 0 (the width of its "
                       f"conv or linear layer); got {num_channels}.")
    *index_dims, channels = self.input_shape
    if self.flow_patch_size:
      channels *= self.flow_patch_size ** 2
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    s, t = self.spatial_downsample, self.temporal_downsample
    self.convnet = nnx.data(None)
    self.convnet_1x1 = nnx.data(None)
    self.patches_linear = nnx.data(None)
    self.squeeze_time = False

    if prep_type == 'conv':
      num_layers = round(math.log(s, 4)) if s >= 1 else -1
      if s < 1 or 4 ** num_layers != s or t != 1:
        raise ValueError(f"prep_type 'conv' needs spatial_downsample a power of 4 and "
                         f"temporal_downsample 1; got {s} and {t}.")
      self.convnet = Conv2DDownsample(channels, num_layers=num_layers,
                                      num_channels=num_channels,
                                      use_batchnorm=conv2d_use_batchnorm,
                                      padding=conv_padding, **kw)
      index_dims[-2:] = conv_downsample_shape(*index_dims[-2:], num_layers, conv_padding)
      features = num_channels if num_layers else channels
    elif prep_type == 'conv1x1':
      if t != 1:
        raise ValueError("prep_type 'conv1x1' does not downsample in time; set "
                         "temporal_downsample=1.")
      self.convnet_1x1 = nnx.Conv(
          channels, num_channels, (1, 1), strides=(s, s), padding='VALID',
          kernel_metadata=logical_axes((None, None, None, 'input_channels')),
          bias_metadata=logical_axes(('input_channels',)), **kw)
      index_dims[-2:] = [-(-n // s) for n in index_dims[-2:]]
      features = num_channels
    elif prep_type == 'pixels':
      steps = ([t] if self.is_video else []) + [s, s]
      index_dims = [-(-n // k) for n, k in zip(index_dims, steps)]
      features = channels
    else:  # patches
      blocks = ([t] if self.is_video else []) + [s, s]
      if any(n % k for n, k in zip(index_dims, blocks)):
        raise ValueError(f'Index dims {tuple(index_dims)} are not divisible by the patch '
                         f'blocks {tuple(blocks)}; crop the inputs or change '
                         f'spatial/temporal_downsample.')
      index_dims = [n // k for n, k in zip(index_dims, blocks)]
      features = channels * math.prod(blocks)
      if self.flow_cost_radius:
        features += (2 * self.flow_cost_radius + 1) ** 2  # one match probability each
      # A video patched down to one time step is an image (DeepMind: "for flow").
      if self.is_video and index_dims[0] == 1:
        self.squeeze_time = True
        index_dims = index_dims[1:]
      if conv_after_patching:
        self.patches_linear = dense(features, num_channels, (None, 'input_channels'), **kw)
        features = num_channels

    self._init_position(index_dims, features, position_encoding, combine, rngs, dtype,
                        param_dtype, n_extra_pos_mlp=n_extra_pos_mlp)

  def _per_frame(self, fn, x: jax.Array) -> jax.Array:
    # 2-D convs see videos frame by frame (DeepMind's hk.BatchApply).
    if not self.is_video:
      return fn(x)
    b, t = x.shape[:2]
    y = fn(x.reshape((b * t,) + x.shape[2:]))
    return y.reshape((b, t) + y.shape[1:])

  def __call__(self, inputs: jax.Array, *, pos: jax.Array | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None
               ) -> PreprocessorOutput:
    """inputs: [batch, H, W, C] or [batch, T, H, W, C]; pos: optional positions
    [batch, N, d] for the Fourier features. deterministic: BatchNorm uses its running
    averages when True, batch statistics (and updates the averages) when False."""
    self._check_input(inputs, self.input_shape)
    x = inputs.astype(self.dtype)
    matches = None
    if self.flow_cost_radius:
      costs = flow_match_costs(x.astype(jnp.float32), self.flow_cost_radius,
                               self.flow_cost_window)
      matches = jax.nn.softmax(-costs / self.flow_cost_temperature, axis=-1).astype(x.dtype)
    if self.flow_patch_size:
      x = patches_for_flow(x, self.flow_patch_size)
    s, t = self.spatial_downsample, self.temporal_downsample
    if self.prep_type == 'conv':
      x = self._per_frame(lambda v: self.convnet(v, deterministic=deterministic), x)
    elif self.prep_type == 'conv1x1':
      x = self._per_frame(self.convnet_1x1, x)
    elif self.prep_type == 'pixels':
      x = x[:, ::t, ::s, ::s] if self.is_video else x[:, ::s, ::s]
    else:
      x = space_to_depth(x, ((t,) if self.is_video else ()) + (s, s))
      if self.squeeze_time:
        x = x[:, 0]
      if matches is not None:
        x = jnp.concatenate([x, matches], axis=-1)
      if self.patches_linear is not None:
        x = self.patches_linear(x)
    return self._build_network_inputs(x, pos)
