"""Perceiver decoders (after DeepMind's `perceiver.py`).

Every decoder exposes
  decoder_query(inputs, ...) -> queries [batch, M, query_channels] or None,
  output_shape(inputs)       -> (shape of __call__'s output, modality sizes or None),
  __call__(query, z, ...)    -> outputs, from latents z [batch, num_latents, D].
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perceiver_jax.model import checks
from perceiver_jax.model import position_encoding as pe
from perceiver_jax.model.attention import CrossAttention, dense, make_attention_mask
from perceiver_jax.model.partitioning import constrain
from perceiver_jax.model.settings import DEFAULT, ModelSettings

Dtype = Any


class ProjectionDecoder(nnx.Module):
  """The original Perceiver head: mean over latents, then linear -> [batch, num_classes]."""
  HAIKU_NAMES = {'logits': 'logits'}

  def __init__(self, num_z_channels: int, num_classes: int, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    checks.positive(num_classes=num_classes)
    self.num_classes = num_classes
    # DeepMind zero-initialises this layer, so training starts from uniform logits.
    self.logits = dense(num_z_channels, num_classes, ('embed', 'classes'),
                        kernel_init=nnx.initializers.zeros_init(), rngs=rngs, dtype=dtype,
                        param_dtype=param_dtype)

  def decoder_query(self, inputs: jax.Array, modality_sizes=None, inputs_without_pos=None,
                    subsampled_points=None) -> None:
    return None

  def output_shape(self, inputs: jax.Array):
    return (inputs.shape[0], self.num_classes), None

  def __call__(self, query: jax.Array | None, z: jax.Array, *,
               query_mask: jax.Array | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """z: [batch, num_latents, D] -> logits [batch, num_classes]."""
    # Mean in float32: a long latent axis in bf16 loses precision.
    pooled = jnp.mean(z.astype(jnp.float32), axis=1).astype(z.dtype)
    return self.logits(constrain(pooled, ('batch', 'act_embed')))


class BasicDecoder(nnx.Module):
  """Cross-attends output queries into the latents (Perceiver IO decoder).

  Queries come from a position encoding over `output_index_dims` ('trainable',
  'fourier'), or from the caller when `position_encoding` is None / name 'none'.
  __call__: query [batch, M, Cq], z [batch, num_latents, D] -> [batch, M, C_out],
  C_out = output_num_channels if final_project else Cq.
  """
  HAIKU_NAMES = {'output_pos_enc': 'trainable_position_encoding (or fourier)',
                 'cross_attend': 'cross_attention', 'output': 'output'}

  def __init__(self, num_z_channels: int, output_num_channels: int, *,
               position_encoding=None, output_index_dims: Sequence[int] = (1,),
               num_query_channels: int | None = None, query_init_scale: float = 0.02,
               qk_channels: int | None = None, v_channels: int | None = None,
               num_heads: int = 1, widening_factor: int = 1,
               use_query_residual: bool = False, final_project: bool = True,
               output_w_init=None, query_chunk_size: int | None = None,
               settings: ModelSettings = DEFAULT, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    """A trainable query table is num_query_channels wide (None: num_z_channels) and
    starts at query_init_scale, unless position_encoding sets num_channels / init_scale."""
    checks.positive(num_heads=num_heads, widening_factor=widening_factor,
                    output_num_channels=output_num_channels)
    checks.optional_positive(num_query_channels=num_query_channels,
                             qk_channels=qk_channels, v_channels=v_channels)
    checks.positive_ints('output_index_dims', output_index_dims)
    if query_chunk_size is not None and query_chunk_size < 0:
      raise ValueError(f'query_chunk_size must be >= 0 (0 or None = all queries at once), '
                       f'got {query_chunk_size}.')
    # Queries decoded per step; bounds decoder memory for huge outputs (0 = all at once).
    self.query_chunk_size = int(query_chunk_size or 0)
    self.output_index_dims = tuple(int(n) for n in output_index_dims)
    self.num_outputs = int(np.prod(self.output_index_dims))
    self.output_num_channels = output_num_channels
    self.final_project = final_project
    self.output_pos_enc = nnx.data(None)
    if position_encoding is not None and position_encoding['name'] != 'none':
      self.output_pos_enc = pe.build_query_encoding(
          position_encoding, self.output_index_dims, num_query_channels or num_z_channels,
          query_init_scale, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
      num_query_channels = self.output_pos_enc.num_channels
    elif num_query_channels is None:
      raise ValueError('BasicDecoder without a position encoding needs '
                       'num_query_channels (the width of the queries you will pass).')
    self.num_query_channels = num_query_channels
    # DeepMind's decoder cross-attend: no dropout, qk width from the latents ('kv').
    self.cross_attend = CrossAttention(
        num_query_channels, num_z_channels, num_heads=num_heads,
        widening_factor=widening_factor, dropout_prob=0.0, shape_for_attn='kv',
        use_query_residual=use_query_residual, qk_channels=qk_channels,
        v_channels=v_channels, q_name='embed', kv_name='embed', **settings.block_kwargs(),
        dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.output = nnx.data(None)
    if final_project:
      # hk.Linear's default init unless given one.
      init = output_w_init or jax.nn.initializers.truncated_normal(
          stddev=1.0 / math.sqrt(num_query_channels))
      self.output = dense(num_query_channels, output_num_channels, ('embed', 'classes'),
                          kernel_init=init, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

  def decoder_query(self, inputs: jax.Array, modality_sizes=None, inputs_without_pos=None,
                    subsampled_points: jax.Array | None = None) -> jax.Array:
    """inputs: [batch, N, C] (only the batch size is used) -> [batch, M, Cq].

    subsampled_points: optional [M'] flat indices into output_index_dims to decode.
    """
    if self.output_pos_enc is None:
      raise ValueError('This BasicDecoder has no position encoding; pass queries to '
                       '__call__ directly instead of calling decoder_query.')
    batch = inputs.shape[0]
    if subsampled_points is None:
      return self.output_pos_enc(batch)
    if isinstance(self.output_pos_enc, pe.TrainablePositionEncoding):
      return jnp.broadcast_to(self.output_pos_enc(None)[subsampled_points][None],
                              (batch, subsampled_points.shape[0],
                               self.output_pos_enc.num_channels))
    # Coordinates of the chosen points mapped to [-1, 1), as DeepMind does.
    coords = jnp.stack(jnp.unravel_index(subsampled_points, self.output_index_dims), axis=1)
    pos = -1 + 2 * coords / jnp.array(self.output_index_dims)[None, :]
    pos = jnp.broadcast_to(pos[None], (batch,) + pos.shape)
    return self.output_pos_enc(batch, pos)

  def output_shape(self, inputs: jax.Array):
    channels = self.output_num_channels if self.final_project else self.num_query_channels
    return (inputs.shape[0], self.num_outputs, channels), None

  def __call__(self, query: jax.Array, z: jax.Array, *,
               query_mask: jax.Array | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None,
               attention_probs: list | None = None) -> jax.Array:
    """query_mask: optional [batch, M] booleans; masked queries decode to zeros+MLP.

    With query_chunk_size = c > 0 and M > c, the queries are decoded c at a time in a
    sequential loop (jax.lax.map), so attention memory is [batch, heads, c, num_latents]
    whatever M is; each query is decoded independently, so outputs are the same.
    attention_probs: a list to append the cross-attend's probabilities [batch, heads, M,
    num_latents] to (telemetry.py); None computes nothing extra.
    """
    if attention_probs is not None:
      attention_probs.append(self.cross_attend.attention_probs(
          query, z, make_attention_mask(query_mask, None)))
    chunk = self.query_chunk_size
    if chunk and query.shape[1] > chunk:
      return self._decode_in_chunks(query, z, query_mask, chunk, deterministic)
    return self._decode(query, z, query_mask, deterministic=deterministic, rngs=rngs)

  def _decode(self, query, z, query_mask, *, deterministic, rngs):
    mask = make_attention_mask(query_mask, None)
    query = constrain(query, ('batch', 'length', 'act_embed'))
    out = self.cross_attend(query, z, mask, deterministic=deterministic, rngs=rngs)
    out = constrain(out, ('batch', 'length', 'act_embed'))
    if self.output is not None:
      out = self.output(out)
    return out

  def _decode_in_chunks(self, query, z, query_mask, chunk, deterministic):
    batch, num_queries = query.shape[:2]
    num_chunks = -(-num_queries // chunk)
    pad = num_chunks * chunk - num_queries
    if query_mask is None:
      query_mask = jnp.ones((batch, num_queries), bool)
    # Padded queries are masked and sliced off below.
    query = jnp.pad(query, ((0, 0), (0, pad), (0, 0)))
    query_mask = jnp.pad(query_mask.astype(bool), ((0, 0), (0, pad)))
    # [batch, chunks * c, ...] -> [chunks, batch, c, ...] for the loop over chunks.
    q_chunks = query.reshape(batch, num_chunks, chunk, -1).swapaxes(0, 1)
    m_chunks = query_mask.reshape(batch, num_chunks, chunk).swapaxes(0, 1)
    graphdef, state = nnx.split(self)

    def decode_chunk(args):
      q, m = args
      # The decoder cross-attend has no dropout, so no rngs are threaded into the loop.
      return nnx.merge(graphdef, state)._decode(q, z, m, deterministic=deterministic,
                                                rngs=None)

    out = jax.lax.map(decode_chunk, (q_chunks, m_chunks))  # [chunks, batch, c, C_out]
    out = out.swapaxes(0, 1).reshape(batch, num_chunks * chunk, -1)
    return out[:, :num_queries]


class ClassificationDecoder(nnx.Module):
  """BasicDecoder with a single trainable query: -> logits [batch, num_classes]."""
  HAIKU_NAMES = {'decoder': 'basic_decoder'}

  def __init__(self, num_z_channels: int, num_classes: int, *,
               num_query_channels: int | None = None, query_init_scale: float = 0.02,
               num_heads: int = 1, qk_channels: int | None = None,
               v_channels: int | None = None, widening_factor: int = 1,
               use_query_residual: bool = True, settings: ModelSettings = DEFAULT,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    checks.positive(num_classes=num_classes)
    self.num_classes = num_classes
    query_pe = dict(name='trainable', num_channels=num_query_channels or num_z_channels,
                    init_scale=query_init_scale, project_pos_dim=-1)
    self.decoder = BasicDecoder(
        num_z_channels, num_classes, position_encoding=query_pe, output_index_dims=(1,),
        qk_channels=qk_channels, v_channels=v_channels, num_heads=num_heads,
        widening_factor=widening_factor, use_query_residual=use_query_residual,
        settings=settings, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def decoder_query(self, inputs: jax.Array, modality_sizes=None, inputs_without_pos=None,
                    subsampled_points=None) -> jax.Array:
    return self.decoder.decoder_query(inputs, subsampled_points=subsampled_points)

  def output_shape(self, inputs: jax.Array):
    return (inputs.shape[0], self.num_classes), None

  def __call__(self, query: jax.Array, z: jax.Array, *,
               query_mask: jax.Array | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None,
               attention_probs: list | None = None) -> jax.Array:
    """[batch, 1, Cq] query, z [batch, num_latents, D] -> [batch, num_classes]."""
    return self.decoder(query, z, deterministic=deterministic, rngs=rngs,
                        attention_probs=attention_probs)[:, 0, :]


class FlowDecoder(nnx.Module):
  """Optical-flow decoder: the queries are the preprocessed inputs themselves (one per
  pixel), decoded to `output_num_channels` and divided by `rescale_factor`.

  __call__: query [batch, H*W, Cq], z [batch, num_latents, D] -> [batch, H, W, C_out].
  """
  HAIKU_NAMES = {'decoder': 'flow_decoder/~/basic_decoder'}

  def __init__(self, num_z_channels: int, num_query_channels: int,
               output_image_shape: Sequence[int], *, output_num_channels: int = 2,
               rescale_factor: float = 100.0, num_heads: int = 1,
               qk_channels: int | None = None, v_channels: int | None = None,
               widening_factor: int = 1, use_query_residual: bool = False,
               query_chunk_size: int | None = None, zero_init_head: bool = True,
               settings: ModelSettings = DEFAULT,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """query_chunk_size: decode this many pixels at a time (0/None = all at once); the
    released model has 368*496 = 182528 queries. zero_init_head: DeepMind's zero output
    head (True); False draws it like every other decoder head (truncated normal), so
    gradients reach the layers below it from the first step."""
    self.output_image_shape = tuple(int(n) for n in output_image_shape)
    self.output_num_channels = output_num_channels
    self.rescale_factor = float(rescale_factor)
    # DeepMind zero-initialises the flow head (output_w_init=jnp.zeros). A zero head passes
    # no gradient to the layers below it, so training starts at a saddle (zero flow).
    self.decoder = BasicDecoder(
        num_z_channels, output_num_channels, position_encoding=None,
        output_index_dims=self.output_image_shape, num_query_channels=num_query_channels,
        qk_channels=qk_channels, v_channels=v_channels, num_heads=num_heads,
        widening_factor=widening_factor, use_query_residual=use_query_residual,
        output_w_init=nnx.initializers.zeros_init() if zero_init_head else None,
        query_chunk_size=query_chunk_size,
        settings=settings, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def decoder_query(self, inputs: jax.Array, modality_sizes=None, inputs_without_pos=None,
                    subsampled_points=None) -> jax.Array:
    """inputs: the preprocessed inputs [batch, H*W, Cq] (first frame's pixels + position
    features), used as the queries as they are."""
    if subsampled_points is not None:
      raise ValueError('FlowDecoder decodes every pixel; subsampled output points are not '
                       'supported.')
    return inputs

  def output_shape(self, inputs: jax.Array):
    return (inputs.shape[0],) + self.output_image_shape + (self.output_num_channels,), None

  def __call__(self, query: jax.Array, z: jax.Array, *,
               query_mask: jax.Array | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    if query.shape[1] != math.prod(self.output_image_shape):
      raise ValueError(f'FlowDecoder got {query.shape[1]} queries for an output image of '
                       f'{self.output_image_shape}; the preprocessed input grid must match.')
    preds = self.decoder(query, z, query_mask=query_mask, deterministic=deterministic,
                         rngs=rngs) / self.rescale_factor
    return preds.reshape((preds.shape[0],) + self.output_image_shape + (preds.shape[-1],))
