"""Multimodal Perceiver IO: one encoder over several modalities, one shared decoder.

After DeepMind's `MultimodalPreprocessor` / `MultimodalDecoder` /
`BasicVideoAutoencodingDecoder` (and their Hugging Face ports):

* `MultimodalPreprocessor` preprocesses each modality, pads every modality's channels to
  a common width (max channels + min_padding_size) with a learned per-modality padding
  vector, optionally replaces tokens by a learned mask token (per-modality mask_probs),
  and concatenates the modalities along the index axis in sorted modality order.
* `MultimodalDecoder` builds each modality's decoder queries (`DecoderQueries`), pads
  them to a common width with learned per-modality padding, concatenates them in
  sorted order and decodes them all with one shared `BasicDecoder` cross-attend. The
  flat output is split back per modality by `MultimodalPostprocessor`.
* `VideoAutoencodingDecoder` is a `BasicDecoder` over a [T, H, W] query grid whose
  output is reshaped back to a video.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perceiver_jax.model import checks
from perceiver_jax.model import position_encoding as pe
from perceiver_jax.model.decoders import BasicDecoder
from perceiver_jax.model.io_processors import PreprocessorOutput
from perceiver_jax.model.partitioning import logical_axes
from perceiver_jax.model.settings import DEFAULT, ModelSettings

Dtype = Any


def _padding_param(rngs: nnx.Rngs, width: int, param_dtype: Dtype) -> nnx.Param:
  # DeepMind: TrainablePositionEncoding(index_dim=1, init_scale=0.02) -> pos_embs [1, width].
  init = jax.nn.initializers.truncated_normal(stddev=0.02)
  return nnx.Param(init(rngs.params(), (1, width), param_dtype), **logical_axes((None, None)))


def _num_index(preprocessor: nnx.Module) -> int:
  """Number of tokens a preprocessor emits per example."""
  if hasattr(preprocessor, 'num_index'):
    return int(preprocessor.num_index)
  return int(np.prod(preprocessor.index_dims))


class MultimodalPreprocessor(nnx.Module):
  """{modality: [batch, *shape_m]} -> inputs [batch, sum_m N_m, num_channels].

  num_channels = max_m(C_m) + min_padding_size. Modality m's tokens [batch, N_m, C_m]
  are completed with its learned `padding[m]` ([1, num_channels - C_m], broadcast to
  every token). For a modality in `mask_probs` with probability p, each token is
  replaced by the learned `mask_token[m]` ([1, num_channels]): always when p == 1 (the
  released multimodal model hides the label this way), never when p == 0, and with
  probability p per token when 0 < p < 1 and deterministic=False (training; needs
  `rngs` with a 'dropout' stream; DeepMind's code also draws random masks at evaluation).
  `modality_sizes` gives N_m.
  """
  HAIKU_NAMES = {'padding': 'multimodal_preprocessor/{modality}_padding (pos_embs)',
                 'mask_token': 'multimodal_preprocessor/{modality}_mask_token (pos_embs)',
                 'modalities': 'the per-modality preprocessors, at the top level'}

  def __init__(self, modalities: Mapping[str, nnx.Module], *,
               mask_probs: Mapping[str, float] | None = None, min_padding_size: int = 2,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    if not modalities:
      raise ValueError('MultimodalPreprocessor needs at least one modality.')
    if min_padding_size < 0:
      raise ValueError(f'min_padding_size must be >= 0, got {min_padding_size}.')
    mask_probs = dict(mask_probs or {})
    unknown = sorted(set(mask_probs) - set(modalities))
    if unknown:
      raise ValueError(f'mask_probs names modalities {unknown} that have no preprocessor; '
                       f'the modalities are {sorted(modalities)}.')
    for modality, p in mask_probs.items():
      if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f'mask_probs[{modality!r}] = {p} is not a probability in [0, 1].')
    self.modalities = nnx.Dict(dict(modalities))
    self.min_padding_size = int(min_padding_size)
    self.num_channels = max(p.num_channels for p in modalities.values()) + min_padding_size
    self.mask_probs = {m: float(p) for m, p in mask_probs.items()}
    self.modality_sizes = {m: _num_index(p) for m, p in modalities.items()}
    self.num_index = sum(self.modality_sizes.values())
    self.index_dims = (self.num_index,)
    self.dtype = dtype
    self.padding = nnx.Dict({
        m: _padding_param(rngs, self.num_channels - p.num_channels, param_dtype)
        for m, p in sorted(modalities.items())})
    self.mask_token = nnx.Dict({
        m: _padding_param(rngs, self.num_channels, param_dtype) for m in sorted(mask_probs)})

  def _mask(self, modality: str, x: jax.Array, deterministic: bool,
            rngs: nnx.Rngs | None) -> jax.Array:
    p = self.mask_probs.get(modality, 0.0)
    if p == 0.0:
      return x
    token = jnp.broadcast_to(self.mask_token[modality][...].astype(x.dtype)[None], x.shape)
    if p == 1.0:
      return token
    if deterministic:
      return x  # Random masking is a training-time corruption.
    if rngs is None:
      raise ValueError(f'Masking modality {modality!r} with probability {p} needs `rngs` '
                       f'(a dropout stream) when deterministic=False.')
    masked = jax.random.bernoulli(rngs.dropout(), p, x.shape[:2])
    return jnp.where(masked[..., None], token, x)

  def __call__(self, inputs: Mapping[str, jax.Array], *, pos: jax.Array | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None
               ) -> PreprocessorOutput:
    """inputs: {modality: [batch, *input_shape_m]} with exactly the built modalities."""
    if not isinstance(inputs, Mapping) or set(inputs) != set(self.modalities.keys()):
      given = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
      raise ValueError(f'The multimodal model needs a dict of inputs with the modalities '
                       f'{sorted(self.modalities.keys())}; got {given}.')
    padded, without_pos, sizes = [], {}, {}
    for modality in sorted(self.modalities.keys()):
      out = self.modalities[modality](inputs[modality], pos=pos, deterministic=deterministic,
                                      rngs=rngs)
      x = out.inputs.astype(self.dtype)
      batch, n, _ = x.shape
      pad = self.padding[modality][...].astype(self.dtype)
      x = jnp.concatenate([x, jnp.broadcast_to(pad[None], (batch, n, pad.shape[-1]))], -1)
      padded.append(self._mask(modality, x, deterministic, rngs))
      without_pos[modality] = out.inputs_without_pos
      sizes[modality] = n
    return PreprocessorOutput(jnp.concatenate(padded, axis=1), without_pos, None, sizes)


QUERY_KINDS = ('basic', 'video', 'classification')


class DecoderQueries(nnx.Module):
  """Decoder queries from a position encoding over `output_index_dims`, nothing else.

  The per-modality decoders of a multimodal model are used only to make queries (the
  shared decoder does the cross-attend), so they hold no attention weights.
  decoder_query(inputs) -> [batch, M, num_channels]; M = prod(output_index_dims), or
  the number of subsampled points.
  """
  HAIKU_NAMES = {'output_pos_enc': '.../~/trainable_position_encoding (fourier: none)'}

  def __init__(self, output_index_dims: Sequence[int], position_encoding, *,
               kind: str = 'basic', num_query_channels: int | None = None,
               query_init_scale: float = 0.02, num_z_channels: int | None = None,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """A trainable table is num_query_channels wide (None: num_z_channels) and starts at
    query_init_scale, unless position_encoding sets num_channels / init_scale."""
    # Which reference decoder these queries stand for ('basic', 'video',
    # 'classification'); only checkpoint conversion (module names) uses it.
    checks.choice('kind', kind, QUERY_KINDS)
    checks.positive_ints('output_index_dims', output_index_dims)
    checks.optional_positive(num_query_channels=num_query_channels)
    self.kind = kind
    self.output_index_dims = tuple(int(n) for n in output_index_dims)
    if kind == 'video' and len(self.output_index_dims) != 3:
      raise ValueError(f'Video queries need output_index_dims (T, H, W), got '
                       f'{self.output_index_dims}.')
    self.num_outputs = int(np.prod(self.output_index_dims))
    if position_encoding is None or position_encoding['name'] == 'none':
      raise ValueError("Decoder queries need a position encoding ('fourier' or "
                       "'trainable'), not 'none'.")
    self.output_pos_enc = pe.build_query_encoding(
        position_encoding, self.output_index_dims, num_query_channels or num_z_channels,
        query_init_scale, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.num_channels = self.output_pos_enc.num_channels

  def num_queries(self, subsampled_points: jax.Array | None = None) -> int:
    return self.num_outputs if subsampled_points is None else int(subsampled_points.shape[0])

  def decoder_query(self, inputs: jax.Array, modality_sizes=None, inputs_without_pos=None,
                    subsampled_points: jax.Array | None = None) -> jax.Array:
    """inputs: anything with the batch size first; subsampled_points: optional [M] flat
    indices into output_index_dims. A trainable table is indexed by the points (the
    reference returns the whole table, which only agrees for one-query decoders)."""
    batch = inputs.shape[0]
    enc = self.output_pos_enc
    if subsampled_points is None:
      return enc(batch)
    base = enc.base if isinstance(enc, pe.PositionEncodingProjector) else enc
    if isinstance(base, pe.TrainablePositionEncoding):
      table = enc(None) if base is enc else enc(1)[0]
      return jnp.broadcast_to(table[subsampled_points][None],
                              (batch, subsampled_points.shape[0], table.shape[-1]))
    # Coordinates of the chosen points mapped to [-1, 1) as the reference does (not the
    # linspace grid of the full encoding).
    coords = jnp.stack(jnp.unravel_index(subsampled_points, self.output_index_dims), axis=1)
    pos = -1 + 2 * coords / jnp.array(self.output_index_dims)[None, :]
    return enc(batch, jnp.broadcast_to(pos[None], (batch,) + pos.shape))


class MultimodalDecoder(nnx.Module):
  """Per-modality queries, padded and concatenated, decoded by one shared cross-attend.

  decoder_query(...) -> [batch, sum_m M_m, num_query_channels] (sorted modality order),
  num_query_channels = max_m(query channels) + min_padding_size;
  __call__(query, z) -> [batch, sum_m M_m, output_num_channels];
  output_sizes(subsampled_points) -> {modality: M_m}.
  """
  HAIKU_NAMES = {'modalities': 'basic_decoder / basic_video_autoencoding_decoder / '
                               'classification_decoder (their query encodings only)',
                 'padding': 'multimodal_decoder/~decoder_query/{modality}_padding',
                 'decoder': 'multimodal_decoder/~/basic_decoder'}

  def __init__(self, modalities: Mapping[str, DecoderQueries], num_z_channels: int,
               output_num_channels: int, *, min_padding_size: int = 2, num_heads: int = 1,
               qk_channels: int | None = None, v_channels: int | None = None,
               widening_factor: int = 1, use_query_residual: bool = False,
               query_chunk_size: int | None = None, settings: ModelSettings = DEFAULT,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """query_chunk_size: decode this many queries at a time (see BasicDecoder)."""
    checks.at_least_zero(min_padding_size=min_padding_size)
    if not modalities:
      raise ValueError('MultimodalDecoder needs at least one modality.')
    self.modalities = nnx.Dict(dict(modalities))
    self.output_num_channels = output_num_channels
    self.num_query_channels = (max(q.num_channels for q in modalities.values())
                               + int(min_padding_size))
    self.padding = nnx.Dict({
        m: _padding_param(rngs, self.num_query_channels - q.num_channels, param_dtype)
        for m, q in sorted(modalities.items())})
    self.dtype = dtype
    self.decoder = BasicDecoder(
        num_z_channels, output_num_channels, position_encoding=None,
        num_query_channels=self.num_query_channels, qk_channels=qk_channels,
        v_channels=v_channels, num_heads=num_heads, widening_factor=widening_factor,
        use_query_residual=use_query_residual, query_chunk_size=query_chunk_size,
        settings=settings, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def _points(self, subsampled_points) -> dict:
    points = dict(subsampled_points or {})
    unknown = sorted(set(points) - set(self.modalities.keys()))
    if unknown:
      raise ValueError(f'subsampled_output_points names modalities {unknown} the decoder '
                       f'does not have; it has {sorted(self.modalities.keys())}.')
    return points

  def output_sizes(self, subsampled_points: Mapping[str, jax.Array | None] | None = None
                   ) -> dict[str, int]:
    points = self._points(subsampled_points)
    return {m: q.num_queries(points.get(m)) for m, q in self.modalities.items()}

  def decoder_query(self, inputs: jax.Array, modality_sizes=None, inputs_without_pos=None,
                    subsampled_points: Mapping[str, jax.Array | None] | None = None
                    ) -> jax.Array:
    points = self._points(subsampled_points)
    queries = []
    for modality in sorted(self.modalities.keys()):
      q = self.modalities[modality].decoder_query(
          inputs, subsampled_points=points.get(modality)).astype(self.dtype)
      batch, m, _ = q.shape
      pad = self.padding[modality][...].astype(self.dtype)
      queries.append(jnp.concatenate(
          [q, jnp.broadcast_to(pad[None], (batch, m, pad.shape[-1]))], axis=-1))
    return jnp.concatenate(queries, axis=1)

  def output_shape(self, inputs: jax.Array):
    sizes = self.output_sizes()
    return (inputs.shape[0], sum(sizes.values()), self.output_num_channels), sizes

  def __call__(self, query: jax.Array, z: jax.Array, *,
               query_mask: jax.Array | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    return self.decoder(query, z, query_mask=query_mask, deterministic=deterministic,
                        rngs=rngs)


class VideoAutoencodingDecoder(nnx.Module):
  """A BasicDecoder over a [T, H, W] grid of queries, reshaped back to video.

  __call__ -> [batch, T, H, W, C] when the whole grid is decoded; with subsampled
  points (decoding a video in chunks) the output stays [batch, M, C].
  """
  HAIKU_NAMES = {'decoder': 'basic_video_autoencoding_decoder/~/basic_decoder'}

  def __init__(self, num_z_channels: int, output_num_channels: int, *,
               output_index_dims: Sequence[int], position_encoding, **decoder_kwargs):
    self.output_index_dims = tuple(int(n) for n in output_index_dims)
    if len(self.output_index_dims) != 3:
      raise ValueError(f'VideoAutoencodingDecoder needs output_index_dims (T, H, W), got '
                       f'{self.output_index_dims}.')
    self.decoder = BasicDecoder(num_z_channels, output_num_channels,
                                position_encoding=position_encoding,
                                output_index_dims=self.output_index_dims, **decoder_kwargs)
    self.num_outputs = self.decoder.num_outputs

  def decoder_query(self, inputs: jax.Array, modality_sizes=None, inputs_without_pos=None,
                    subsampled_points: jax.Array | None = None) -> jax.Array:
    return self.decoder.decoder_query(inputs, modality_sizes, inputs_without_pos,
                                      subsampled_points=subsampled_points)

  def output_shape(self, inputs: jax.Array):
    (batch, _, channels), _ = self.decoder.output_shape(inputs)
    return (batch,) + self.output_index_dims + (channels,), None

  def __call__(self, query: jax.Array, z: jax.Array, *,
               query_mask: jax.Array | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    out = self.decoder(query, z, query_mask=query_mask, deterministic=deterministic,
                       rngs=rngs)
    if out.shape[1] != self.num_outputs:
      return out
    return out.reshape((out.shape[0],) + self.output_index_dims + (out.shape[-1],))
