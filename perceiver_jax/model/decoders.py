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

from perceiver_jax.model import position_encoding as pe
from perceiver_jax.model.attention import CrossAttention, dense, make_attention_mask

Dtype = Any


class ProjectionDecoder(nnx.Module):
  """The original Perceiver head: mean over latents, then linear -> [batch, num_classes]."""
  HAIKU_NAMES = {'logits': 'logits'}

  def __init__(self, num_z_channels: int, num_classes: int, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
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
    return self.logits(pooled)


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
               num_query_channels: int | None = None, qk_channels: int | None = None,
               v_channels: int | None = None, num_heads: int = 1, widening_factor: int = 1,
               use_query_residual: bool = False, final_project: bool = True,
               output_w_init=None, attention_impl: str | None = None,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.output_index_dims = tuple(int(n) for n in output_index_dims)
    self.num_outputs = int(np.prod(self.output_index_dims))
    self.output_num_channels = output_num_channels
    self.final_project = final_project
    self.output_pos_enc = nnx.data(None)
    if position_encoding is not None and position_encoding['name'] != 'none':
      self.output_pos_enc = pe.build_position_encoding(
          position_encoding, self.output_index_dims, rngs=rngs, channel_name='embed',
          dtype=dtype, param_dtype=param_dtype)
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
        v_channels=v_channels, q_name='embed', kv_name='embed',
        attention_impl=attention_impl, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
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
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """query_mask: optional [batch, M] booleans; masked queries decode to zeros+MLP."""
    mask = make_attention_mask(query_mask, None)
    out = self.cross_attend(query, z, mask, deterministic=deterministic, rngs=rngs)
    if self.output is not None:
      out = self.output(out)
    return out


class ClassificationDecoder(nnx.Module):
  """BasicDecoder with a single trainable query: -> logits [batch, num_classes]."""
  HAIKU_NAMES = {'decoder': 'basic_decoder'}

  def __init__(self, num_z_channels: int, num_classes: int, *,
               num_query_channels: int | None = None, query_init_scale: float = 0.02,
               num_heads: int = 1, qk_channels: int | None = None,
               v_channels: int | None = None, widening_factor: int = 1,
               use_query_residual: bool = True, attention_impl: str | None = None,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.num_classes = num_classes
    query_pe = dict(name='trainable', num_channels=num_query_channels or num_z_channels,
                    init_scale=query_init_scale, project_pos_dim=-1)
    self.decoder = BasicDecoder(
        num_z_channels, num_classes, position_encoding=query_pe, output_index_dims=(1,),
        qk_channels=qk_channels, v_channels=v_channels, num_heads=num_heads,
        widening_factor=widening_factor, use_query_residual=use_query_residual,
        attention_impl=attention_impl, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def decoder_query(self, inputs: jax.Array, modality_sizes=None, inputs_without_pos=None,
                    subsampled_points=None) -> jax.Array:
    return self.decoder.decoder_query(inputs, subsampled_points=subsampled_points)

  def output_shape(self, inputs: jax.Array):
    return (inputs.shape[0], self.num_classes), None

  def __call__(self, query: jax.Array, z: jax.Array, *,
               query_mask: jax.Array | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """[batch, 1, Cq] query, z [batch, num_latents, D] -> [batch, num_classes]."""
    return self.decoder(query, z, deterministic=deterministic, rngs=rngs)[:, 0, :]
