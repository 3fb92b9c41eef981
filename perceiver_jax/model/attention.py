"""Attention building blocks: the attention kernel, MLP, Attention, Cross/SelfAttention.

Semantics follow DeepMind's reference (`perceiver/perceiver.py`): pre-LayerNorm
blocks, q/k/v/output projections as 2-D [in, out] kernels, qk_channels defaulting
to the query input width and v_channels to qk_channels.

Parameter names (ours -> DeepMind Haiku, for weight conversion) are recorded on each
class as `HAIKU_NAMES`; Linear `kernel`/`bias` map to Haiku `w`/`b`, LayerNorm
`scale`/`bias` to `scale`/`offset`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from perceiver_jax.model import chunked_attention as chunked
from perceiver_jax.model.partitioning import constrain, logical_axes
from perceiver_jax.model.settings import MLP_ACTIVATIONS

Dtype = Any

# hk.LayerNorm's default epsilon; keeps converted DeepMind weights numerically faithful.
LAYER_NORM_EPSILON = 1e-5


def linear_init(init_scale: float = 1.0):
  """DeepMind's `conv_1d` initialiser: VarianceScaling(init_scale), fan_in, truncated."""
  return nnx.initializers.variance_scaling(init_scale, 'fan_in', 'truncated_normal')


def dense(in_features: int, out_features: int, names: tuple[str | None, str | None], *,
          rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
          use_bias: bool = True, kernel_init=None) -> nnx.Linear:
  """An [in, out] linear layer whose kernel carries logical axis `names`."""
  return nnx.Linear(
      in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=kernel_init if kernel_init is not None else linear_init(),
      kernel_metadata=logical_axes(names),
      bias_metadata=logical_axes((names[1],)), rngs=rngs)


def layer_norm(num_features: int, name: str | None, *, rngs: nnx.Rngs,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nnx.LayerNorm:
  """LayerNorm over the last axis (statistics are computed in float32 by flax)."""
  return nnx.LayerNorm(
      num_features, epsilon=LAYER_NORM_EPSILON, dtype=dtype, param_dtype=param_dtype,
      use_fast_variance=False, scale_metadata=logical_axes((name,)),
      bias_metadata=logical_axes((name,)), rngs=rngs)


def make_attention_mask(query_mask: jax.Array | None, kv_mask: jax.Array | None,
                        ) -> jax.Array | None:
  """[batch, q_len] and [batch, kv_len] booleans (True = valid) -> [batch, 1, q_len, kv_len]."""
  if query_mask is None and kv_mask is None:
    return None
  if query_mask is None:
    return kv_mask.astype(bool)[:, None, None, :]
  if kv_mask is None:
    return query_mask.astype(bool)[:, None, :, None]
  return query_mask.astype(bool)[:, None, :, None] & kv_mask.astype(bool)[:, None, None, :]


def attention_weights(q: jax.Array, k: jax.Array, mask: jax.Array | None = None,
                      scale: float | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(d)) in float32: q [batch, q_len, heads, d], k [batch, kv_len,
  heads, d], mask broadcastable to [batch, heads, q_len, kv_len] -> [batch, heads, q_len,
  kv_len]. Masked keys get probability 0 (a fully masked row comes out uniform).
  scale: the logits' factor (None: 1 / sqrt(d))."""
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  logits = jnp.einsum('bthd,bThd->bhtT', q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def _attention_reference(q, k, v, mask, dropout_rate, dropout_rng, scale=None):
  """Explicit softmax(q k^T / sqrt(d)) v; used when the fused kernel cannot be."""
  probs = attention_weights(q, k, mask, scale)
  if dropout_rate > 0.0 and dropout_rng is not None:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return jnp.einsum('bhtT,bThd->bthd', probs.astype(v.dtype), v)


def _on_gpu() -> bool:
  return jax.default_backend() in ('gpu', 'cuda', 'rocm')


# Matrix units want widths that are multiples of 8 (16-bit operands: 16-byte rows). The
# released models' 1-head cross-attends are 261 (or 322) channels wide; on a GPU their
# products then run on slow unaligned kernels. Attention zero-pads such widths to a
# multiple of ALIGN_TO inside the block (the parameters keep their shapes; the results are
# the same up to rounding): see Attention._aligned_call.
ALIGN_TO = 16


def _pad_to_align(width: int) -> int:
  """Zero padding that makes `width` a multiple of ALIGN_TO, if it is not one of 8."""
  return 0 if width % 8 == 0 else -width % ALIGN_TO


_ALIGN_WIDTHS = contextvars.ContextVar('align_widths', default=None)


@contextlib.contextmanager
def align_widths(enabled: bool | None):
  """Within the context, pad unaligned attention widths (True), never (False), or on GPUs
  only (None, the default). Counting model FLOPs uses False (perceiver_jax/flops.py)."""
  token = _ALIGN_WIDTHS.set(enabled)
  try:
    yield
  finally:
    _ALIGN_WIDTHS.reset(token)


def _align_widths() -> bool:
  enabled = _ALIGN_WIDTHS.get()
  return _on_gpu() if enabled is None else enabled


def _linear(layer: nnx.Linear, x: jax.Array, kernel: jax.Array, bias: jax.Array | None
            ) -> jax.Array:
  """What `layer(x)` computes, with a (padded) kernel and bias of its own."""
  x, kernel, bias = layer.promote_dtype((x, kernel, bias), dtype=layer.dtype)
  y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                          precision=layer.precision)
  return y if bias is None else y + bias


def _fused_kernel_applies(q, k, v, mask, use_dropout: bool) -> bool:
  """Whether cuDNN's fused (flash) attention takes these operands: a GPU, 16-bit
  operands, equal q/k/v head widths that are a multiple of 8 and at most 128, no mask
  and no probability dropout (the self-attends of every released model qualify; the
  1-head cross-attends, 261 or more channels wide, do not)."""
  head_dim = q.shape[-1]
  return (_on_gpu() and q.dtype in (jnp.bfloat16, jnp.float16)
          and q.dtype == k.dtype == v.dtype and mask is None and not use_dropout
          and k.shape[-1] == v.shape[-1] == head_dim and head_dim % 8 == 0
          and head_dim <= 128)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None, *,
                          dropout_rate: float = 0.0,
                          dropout_rng: jax.Array | None = None,
                          implementation: str | None = None,
                          chunk_size: int | None = None,
                          auto_chunk_threshold: int | None = None,
                          scale: float | None = None) -> jax.Array:
  """The single attention entry point of the model.

  Args:
    q: [batch, q_len, heads, qk_head_dim].
    k: [batch, kv_len, heads, qk_head_dim].
    v: [batch, kv_len, heads, v_head_dim].
    mask: boolean, broadcastable to [batch, heads, q_len, kv_len]; True = attend.
    dropout_rate: dropout on the attention probabilities (applied iff dropout_rng).
    dropout_rng: PRNG key for that dropout; None = no dropout.
    implementation: None chooses per call: cuDNN's fused kernel on a GPU where it
      applies (`_fused_kernel_applies`), else XLA; 'xla' / 'cudnn' force one (the
      chunked path, when chosen, takes precedence).
    chunk_size: > 0 = the memory-efficient path (chunked_attention.py), this many keys
      at a time, when kv_len > chunk_size; 0 / None = plain attention.
    auto_chunk_threshold: > 0 = use the chunked path iff q_len * kv_len exceeds it
      (chunks of chunk_size, or chunked.DEFAULT_CHUNK_SIZE when that is 0). On an
      accelerator the chunked path is also taken when plain attention's probabilities
      would not fit comfortably in its memory (chunked.exceeds_memory_budget).
    scale: the logits' factor; None = 1 / sqrt(qk_head_dim) (pass the unpadded width's
      when q and k carry zero padding).

  Returns:
    [batch, q_len, heads, v_head_dim]. Query rows whose mask is all False are zero
    (as in DeepMind's `attend`), never NaN.
  """
  if mask is not None:
    # Keep size-1 axes: a full [batch, heads, q, kv] mask can be huge for big inputs.
    mask = mask.astype(bool)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  use_dropout = dropout_rate > 0.0 and dropout_rng is not None
  batch, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  chunk = chunked.chunk_length(q_len, kv_len, chunk_size, auto_chunk_threshold)
  fused = implementation == 'cudnn' or (
      implementation is None and _fused_kernel_applies(q, k, v, mask, use_dropout))
  if not chunk and not fused and chunked.exceeds_memory_budget(batch, heads, q_len, kv_len):
    chunk = chunk_size or chunked.DEFAULT_CHUNK_SIZE
    chunk = chunk if chunk < kv_len else 0
  if chunk:
    # Never materialises [batch, heads, q_len, kv_len]; fully masked rows come out 0.
    return chunked.chunked_attention(q, k, v, mask, chunk_size=chunk,
                                     dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                                     scale=scale)
  # XLA:CPU lacks the float16 x float16 -> float32 dot that jax's fused float16 path asks for.
  cpu_float16 = q.dtype == jnp.float16 and jax.default_backend() == 'cpu'
  if use_dropout or v.shape[-1] != k.shape[-1] or cpu_float16:
    # The fused kernel has no probability dropout and needs equal qk / v head dims.
    out = _attention_reference(q, k, v, mask, dropout_rate, dropout_rng, scale)
  elif fused and implementation is None:
    try:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                         implementation='cudnn')
    except (NotImplementedError, ValueError, RuntimeError):
      # This jax/cuDNN cannot take these shapes after all: XLA computes the same thing.
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                         implementation='xla')
  else:
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                       implementation='cudnn' if fused else 'xla')
  if mask is not None:
    # Softmax over an all-masked row is uniform; DeepMind forces such rows to zero.
    valid_row = jnp.any(mask, axis=-1)  # [batch|1, heads|1, q_len|1]
    out = jnp.where(jnp.transpose(valid_row, (0, 2, 1))[..., None], out, 0)  # BTNH
  return out


# DeepMind's Haiku models use the tanh approximation of GELU (jax.nn.gelu's default);
# Hugging Face's port uses the exact erf form ('gelu'). Outputs differ by ~1e-3.
class MLP(nnx.Module):
  """Transformer MLP: dense(widening*C) -> GELU -> dense(C) -> dropout. No LayerNorm.

  [batch, index, C] -> [batch, index, C]. `activation` names an entry of MLP_ACTIVATIONS.
  """
  HAIKU_NAMES = {'dense_in': 'linear', 'dense_out': 'linear_1'}

  def __init__(self, num_channels: int, *, widening_factor: int = 4,
               dropout_prob: float = 0.0, init_scale: float = 1.0,
               channel_name: str | None = 'embed', activation: str = 'gelu_tanh',
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    if activation not in MLP_ACTIVATIONS:
      raise ValueError(f'Unknown MLP activation {activation!r}; valid names are '
                       f'{", ".join(repr(a) for a in MLP_ACTIVATIONS)}.')
    self.activation = activation
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype,
              kernel_init=linear_init(init_scale))
    hidden = widening_factor * num_channels
    self.dense_in = dense(num_channels, hidden, (channel_name, 'mlp'), **kw)
    self.dense_out = dense(hidden, num_channels, ('mlp', channel_name), **kw)
    self.dropout = nnx.Dropout(dropout_prob)

  def __call__(self, x: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    x = MLP_ACTIVATIONS[self.activation](self.dense_in(x))
    x = constrain(x, ('batch', 'length', 'act_mlp'))
    return self.dropout(self.dense_out(x), deterministic=deterministic, rngs=rngs)


class Attention(nnx.Module):
  """Multi-head attention: q from inputs_q, k and v from inputs_kv.

  inputs_q [batch, q_len, q_channels], inputs_kv [batch, kv_len, kv_channels]
  -> [batch, q_len, output_channels]. qk_channels defaults to q_channels,
  v_channels to qk_channels, output_channels to v_channels (DeepMind's defaults).
  """
  HAIKU_NAMES = {'query': 'linear', 'key': 'linear_1', 'value': 'linear_2',
                 'output': 'linear_3'}

  def __init__(self, q_channels: int, kv_channels: int, *, num_heads: int = 8,
               qk_channels: int | None = None, v_channels: int | None = None,
               output_channels: int | None = None, init_scale: float = 1.0,
               with_final_bias: bool = True, final_init_scale_multiplier: float = 1.0,
               dropout_prob: float = 0.0, q_name: str | None = 'embed',
               kv_name: str | None = 'embed', output_name: str | None = 'embed',
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs, attention_impl: str | None = None,
               attention_chunk_size: int = 0, attention_auto_chunk_threshold: int = 0):
    qk_channels = q_channels if qk_channels is None else qk_channels
    v_channels = qk_channels if v_channels is None else v_channels
    output_channels = v_channels if output_channels is None else output_channels
    for what, c in (('qk_channels', qk_channels), ('v_channels', v_channels)):
      if c % num_heads:
        raise ValueError(f'{what} ({c}) must be divisible by num_heads ({num_heads}).')
    self.num_heads = num_heads
    self.dropout_prob = dropout_prob
    self.attention_impl = attention_impl
    # Memory-efficient path selection (see dot_product_attention); validated here, once.
    chunked.chunk_length(1, 1, attention_chunk_size, attention_auto_chunk_threshold)
    self.attention_chunk_size = int(attention_chunk_size or 0)
    self.attention_auto_chunk_threshold = int(attention_auto_chunk_threshold or 0)
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    init = linear_init(init_scale)
    # Tensor parallelism splits whole heads; one head's channels are left whole.
    heads = 'heads' if num_heads > 1 else 'head_dim'
    self.query = dense(q_channels, qk_channels, (q_name, heads), kernel_init=init, **kw)
    self.key = dense(kv_channels, qk_channels, (kv_name, heads), kernel_init=init, **kw)
    self.value = dense(kv_channels, v_channels, (kv_name, heads), kernel_init=init, **kw)
    self.output = dense(v_channels, output_channels, (heads, output_name),
                        use_bias=with_final_bias,
                        kernel_init=linear_init(final_init_scale_multiplier * init_scale),
                        **kw)

  def _split_heads(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[:2] + (self.num_heads, x.shape[-1] // self.num_heads))
    return constrain(x, ('batch', 'length', 'act_heads', 'head_dim'))

  def attention_probs(self, inputs_q: jax.Array, inputs_kv: jax.Array,
                      mask: jax.Array | None = None) -> jax.Array:
    """The attention probabilities [batch, heads, q_len, kv_len] (float32, no dropout).

    Always the plain softmax, whatever path __call__ takes (fused, chunked): meant for
    telemetry on a few examples, as it materialises the whole [q_len, kv_len] matrix.
    """
    if mask is not None:
      mask = mask.astype(bool)
      mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    return attention_weights(self._split_heads(self.query(inputs_q)),
                             self._split_heads(self.key(inputs_kv)), mask)

  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array,
               mask: jax.Array | None = None, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """mask: boolean broadcastable to [batch, heads, q_len, kv_len], True = attend."""
    dropout_rng = None
    if not deterministic and self.dropout_prob > 0.0:
      if rngs is None:
        raise ValueError('Attention dropout needs `rngs` when deterministic=False.')
      dropout_rng = rngs.dropout()
    qk_head = self.query.out_features // self.num_heads
    v_head = self.value.out_features // self.num_heads
    widths = (qk_head, v_head, self.key.in_features)
    if _align_widths() and any(_pad_to_align(w) for w in widths):
      return self._aligned_call(inputs_q, inputs_kv, mask, dropout_rng)
    q = self._split_heads(self.query(inputs_q))
    k = self._split_heads(self.key(inputs_kv))
    v = self._split_heads(self.value(inputs_kv))
    out = self._attend(q, k, v, mask, dropout_rng)
    return self.output(out.reshape(out.shape[:2] + (-1,)))

  def _attend(self, q, k, v, mask, dropout_rng, scale=None) -> jax.Array:
    out = dot_product_attention(q, k, v, mask, dropout_rate=self.dropout_prob,
                                dropout_rng=dropout_rng,
                                implementation=self.attention_impl,
                                chunk_size=self.attention_chunk_size,
                                auto_chunk_threshold=self.attention_auto_chunk_threshold,
                                scale=scale)
    return constrain(out, ('batch', 'length', 'act_heads', 'head_dim'))

  def _aligned_call(self, inputs_q, inputs_kv, mask, dropout_rng) -> jax.Array:
    """__call__ with the key/value inputs' channels and every head zero-padded to
    multiples of ALIGN_TO: zero rows and columns of the kernels contribute nothing, and
    the logits keep the unpadded width's 1/sqrt(d), so only the matrix shapes change."""
    heads = self.num_heads

    def head_columns(layer, in_pad):
      """The layer's kernel [in (+in_pad), heads * (d + pad)] and bias, per head padded."""
      d = layer.out_features // heads
      pad = _pad_to_align(d)
      kernel = layer.kernel[...].reshape(layer.in_features, heads, d)
      kernel = jnp.pad(kernel, ((0, in_pad), (0, 0), (0, pad))).reshape(
          layer.in_features + in_pad, heads * (d + pad))
      bias = None
      if layer.bias is not None:
        bias = jnp.pad(layer.bias[...].reshape(heads, d), ((0, 0), (0, pad))).reshape(-1)
      return kernel, bias

    kv_pad = _pad_to_align(self.key.in_features)
    kv = jnp.pad(inputs_kv, ((0, 0),) * (inputs_kv.ndim - 1) + ((0, kv_pad),))
    q = self._split_heads(_linear(self.query, inputs_q, *head_columns(self.query, 0)))
    k = self._split_heads(_linear(self.key, kv, *head_columns(self.key, kv_pad)))
    v = self._split_heads(_linear(self.value, kv, *head_columns(self.value, kv_pad)))
    qk_head = self.query.out_features // heads
    out = self._attend(q, k, v, mask, dropout_rng, scale=1.0 / math.sqrt(qk_head))
    v_head = self.value.out_features // heads
    kernel = self.output.kernel[...].reshape(heads, v_head, -1)
    kernel = jnp.pad(kernel, ((0, 0), (0, _pad_to_align(v_head)), (0, 0)))
    bias = self.output.bias[...] if self.output.bias is not None else None
    return _linear(self.output, out.reshape(out.shape[:2] + (-1,)),
                   kernel.reshape(-1, kernel.shape[-1]), bias)


class CrossAttention(nnx.Module):
  """Cross-attention block: LN(q), LN(kv) -> attention -> dropout -> (+q) -> +MLP(LN(x)).

  inputs_q [batch, q_len, q_channels], inputs_kv [batch, kv_len, kv_channels]
  -> [batch, q_len, q_channels].
  """
  HAIKU_NAMES = {'query_norm': 'layer_norm', 'kv_norm': 'layer_norm_1',
                 'attention': 'attention', 'mlp_norm': 'layer_norm_2', 'mlp': 'mlp'}

  def __init__(self, q_channels: int, kv_channels: int, *, num_heads: int = 8,
               widening_factor: int = 1, dropout_prob: float = 0.0,
               dropout_attn_prob: float = 0.0, att_init_scale: float = 1.0,
               dense_init_scale: float = 1.0, shape_for_attn: str = 'kv',
               use_query_residual: bool = True, qk_channels: int | None = None,
               v_channels: int | None = None, q_name: str | None = 'embed',
               kv_name: str | None = 'embed', dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs,
               attention_impl: str | None = None, attention_chunk_size: int = 0,
               attention_auto_chunk_threshold: int = 0, mlp_activation: str = 'gelu_tanh'):
    if shape_for_attn not in ('q', 'kv'):
      raise ValueError(f"shape_for_attn must be 'q' or 'kv', got {shape_for_attn!r}.")
    if qk_channels is None:
      qk_channels = q_channels if shape_for_attn == 'q' else kv_channels
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.use_query_residual = use_query_residual
    self.query_norm = layer_norm(q_channels, q_name, **kw)
    self.kv_norm = layer_norm(kv_channels, kv_name, **kw)
    self.attention = Attention(
        q_channels, kv_channels, num_heads=num_heads, qk_channels=qk_channels,
        v_channels=v_channels, output_channels=q_channels, init_scale=att_init_scale,
        dropout_prob=dropout_attn_prob, q_name=q_name, kv_name=kv_name,
        output_name=q_name, attention_impl=attention_impl,
        attention_chunk_size=attention_chunk_size,
        attention_auto_chunk_threshold=attention_auto_chunk_threshold, **kw)
    self.dropout = nnx.Dropout(dropout_prob)
    self.mlp_norm = layer_norm(q_channels, q_name, **kw)
    self.mlp = MLP(q_channels, widening_factor=widening_factor, dropout_prob=dropout_prob,
                   init_scale=dense_init_scale, channel_name=q_name,
                   activation=mlp_activation, **kw)

  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array,
               mask: jax.Array | None = None, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    attn = self.attention(self.query_norm(inputs_q), self.kv_norm(inputs_kv), mask,
                          deterministic=deterministic, rngs=rngs)
    attn = self.dropout(attn, deterministic=deterministic, rngs=rngs)
    # Without the residual the output need not share the queries' meaning
    # (e.g. queries are positions, outputs are pixels).
    x = inputs_q + attn if self.use_query_residual else attn
    return x + self.mlp(self.mlp_norm(x), deterministic=deterministic, rngs=rngs)

  def attention_probs(self, inputs_q: jax.Array, inputs_kv: jax.Array,
                      mask: jax.Array | None = None) -> jax.Array:
    """This block's attention probabilities, [batch, heads, q_len, kv_len] (telemetry)."""
    return self.attention.attention_probs(self.query_norm(inputs_q),
                                          self.kv_norm(inputs_kv), mask)


class SelfAttention(nnx.Module):
  """Self-attention block: x + dropout(attention(LN(x))), then x + MLP(LN(x)).

  [batch, index, channels] -> [batch, index, channels].
  """
  HAIKU_NAMES = {'norm': 'layer_norm', 'attention': 'attention',
                 'mlp_norm': 'layer_norm_1', 'mlp': 'mlp'}

  def __init__(self, num_channels: int, *, num_heads: int = 8, widening_factor: int = 4,
               dropout_prob: float = 0.0, dropout_attn_prob: float = 0.0,
               att_init_scale: float = 1.0, dense_init_scale: float = 1.0,
               qk_channels: int | None = None, v_channels: int | None = None,
               channel_name: str | None = 'embed', dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs,
               attention_impl: str | None = None, attention_chunk_size: int = 0,
               attention_auto_chunk_threshold: int = 0, mlp_activation: str = 'gelu_tanh'):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm = layer_norm(num_channels, channel_name, **kw)
    self.attention = Attention(
        num_channels, num_channels, num_heads=num_heads, qk_channels=qk_channels,
        v_channels=v_channels, output_channels=num_channels, init_scale=att_init_scale,
        dropout_prob=dropout_attn_prob, q_name=channel_name, kv_name=channel_name,
        output_name=channel_name, attention_impl=attention_impl,
        attention_chunk_size=attention_chunk_size,
        attention_auto_chunk_threshold=attention_auto_chunk_threshold, **kw)
    self.dropout = nnx.Dropout(dropout_prob)
    self.mlp_norm = layer_norm(num_channels, channel_name, **kw)
    self.mlp = MLP(num_channels, widening_factor=widening_factor, dropout_prob=dropout_prob,
                   init_scale=dense_init_scale, channel_name=channel_name,
                   activation=mlp_activation, **kw)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
    qkv = self.norm(x)
    attn = self.attention(qkv, qkv, mask, deterministic=deterministic, rngs=rngs)
    x = x + self.dropout(attn, deterministic=deterministic, rngs=rngs)
    return x + self.mlp(self.mlp_norm(x), deterministic=deterministic, rngs=rngs)
