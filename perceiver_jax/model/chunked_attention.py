"""Memory-efficient attention: keys and values in chunks with an online softmax.

Pure JAX (`jax.lax.scan` over key/value chunks), so it runs on CPU, GPU and TPU. The
forward pass keeps, per query, a running max, a running denominator and a running
weighted sum of values (Milakov & Gimelshein 2018; Rabe & Staats 2021). A custom VJP
recomputes each chunk's probabilities in the backward pass from the saved log-sum-exp
(FlashAttention's backward), so neither pass stores the [batch, heads, q_len, kv_len]
probabilities: memory is linear in kv_len, [batch, heads, q_len, chunk] at a time.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

# Key/value chunk length when the path is chosen automatically (model.attention_chunk_size=0).
DEFAULT_CHUNK_SIZE = 1024


def chunk_length(q_len: int, kv_len: int, chunk_size: int | None,
                 auto_threshold: int | None) -> int:
  """The key/value chunk length to use, or 0 for plain (unchunked) attention.

  With auto_threshold > 0 the chunked path is used iff q_len * kv_len > auto_threshold
  (chunks of chunk_size, or DEFAULT_CHUNK_SIZE when that is 0); otherwise iff
  chunk_size > 0. A chunk that would hold every key is plain attention.
  """
  chunk_size, auto_threshold = int(chunk_size or 0), int(auto_threshold or 0)
  if chunk_size < 0 or auto_threshold < 0:
    raise ValueError(f'Attention chunk_size ({chunk_size}) and auto_chunk_threshold '
                     f'({auto_threshold}) must be >= 0 (0 = off).')
  if auto_threshold:
    if q_len * kv_len <= auto_threshold:
      return 0
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
  return chunk_size if 0 < chunk_size < kv_len else 0


# On an accelerator, plain attention is replaced by the chunked path when one float32
# [batch, heads, q_len, kv_len] array (training keeps several: logits, probabilities and
# their gradients) would exceed this fraction of one device's memory.
MEMORY_BUDGET_FRACTION = 1 / 16


@functools.cache
def _device_memory_bytes() -> int:
  """Memory of one local device, or 0 where the backend does not say (CPU)."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  (backends without memory stats)
    return 0
  return int((stats or {}).get('bytes_limit', 0))


def exceeds_memory_budget(batch: int, heads: int, q_len: int, kv_len: int) -> bool:
  """Whether plain attention at this (global) shape should give way to the chunked path.

  The batch is divided over all devices (data parallelism is the usual case), so
  this errs towards plain attention when the model is instead split over devices.
  """
  memory = _device_memory_bytes()
  if not memory:
    return False
  per_device = 4 * batch * heads * q_len * kv_len / max(jax.device_count(), 1)
  return per_device > MEMORY_BUDGET_FRACTION * memory


def dropout_keep(key: jax.Array, chunk_index, rate: float, shape) -> jax.Array:
  """The keep-mask [batch, heads, q_len, chunk] of key/value chunk `chunk_index`."""
  return jax.random.bernoulli(jax.random.fold_in(key, chunk_index), 1.0 - rate, shape)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                      mask: jax.Array | None = None, *, chunk_size: int,
                      dropout_rate: float = 0.0,
                      dropout_rng: jax.Array | None = None,
                      scale: float | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(d)) v, `chunk_size` keys at a time.

  Args:
    q: [batch, q_len, heads, qk_head_dim].
    k: [batch, kv_len, heads, qk_head_dim].
    v: [batch, kv_len, heads, v_head_dim] (any width).
    mask: boolean [batch|1, heads|1, q_len|1, kv_len|1], True = attend.
    chunk_size: keys per chunk; the last chunk is padded with masked keys.
    dropout_rate, dropout_rng: dropout on the attention probabilities (iff rng given);
      chunk i draws its keep-mask from fold_in(dropout_rng, i) (see `dropout_keep`).
    scale: the logits' factor; None = 1 / sqrt(qk_head_dim).

  Returns:
    [batch, q_len, heads, v_head_dim] in v.dtype; rows with no valid key are 0.
  """
  if chunk_size <= 0:
    raise ValueError(f'chunk_size must be positive, got {chunk_size}.')
  if mask is not None and mask.ndim != 4:
    raise ValueError(f'mask must be 4-D [batch, heads, q_len, kv_len] (size-1 axes '
                     f'allowed), got shape {mask.shape}.')
  kv_len = k.shape[1]
  chunk = min(int(chunk_size), kv_len)
  pad = -kv_len % chunk
  if pad:
    # Padded keys are masked out inside the loop (their index is >= kv_len).
    k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    if mask is not None and mask.shape[-1] != 1:
      mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, pad)))
  if mask is not None:
    mask = mask.astype(bool)
  rate = float(dropout_rate) if dropout_rng is not None else 0.0
  key = dropout_rng if rate > 0.0 else None
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  return _attention(q, k, v, mask, key, chunk, kv_len, rate, scale)


def _chunk_logits(q, k, mask, i, chunk, kv_len, scale):
  """Scaled float32 logits [batch, heads, q_len, chunk] of chunk i and their validity."""
  start = i * chunk
  k_c = jax.lax.dynamic_slice_in_dim(k, start, chunk, axis=1)
  logits = jnp.einsum('bthd,bshd->bhts', q, k_c, preferred_element_type=jnp.float32) * scale
  valid = None
  if k.shape[1] > kv_len:  # padded: the tail of the last chunk is not a key
    valid = (start + jnp.arange(chunk)) < kv_len
  if mask is not None:
    m = mask if mask.shape[-1] == 1 else jax.lax.dynamic_slice_in_dim(mask, start, chunk, 3)
    valid = m if valid is None else valid & m
  if valid is None:
    valid = jnp.ones((1, 1, 1, 1), bool)
  return logits, valid


def _forward(q, k, v, mask, key, chunk, kv_len, rate, scale):
  batch, q_len, heads, _ = q.shape
  num_chunks = k.shape[1] // chunk

  def body(carry, i):
    m, l, acc = carry  # running max, denominator [b, h, t]; weighted sum [b, h, t, dv]
    logits, valid = _chunk_logits(q, k, mask, i, chunk, kv_len, scale)
    m_new = jnp.maximum(m, jnp.max(jnp.where(valid, logits, -jnp.inf), axis=-1))
    # Rows with no valid key yet keep m = -inf; shift them by 0 so nothing is NaN.
    shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.where(valid, jnp.exp(logits - shift[..., None]), 0.0)
    correction = jnp.exp(m - shift)
    l = l * correction + jnp.sum(p, axis=-1)
    if rate > 0.0:
      # The denominator counts every probability; dropout only thins the numerator.
      p = jnp.where(dropout_keep(key, i, rate, p.shape), p / (1.0 - rate), 0.0)
    v_c = jax.lax.dynamic_slice_in_dim(v, i * chunk, chunk, axis=1)
    acc = acc * correction[..., None] + jnp.einsum(
        'bhts,bshd->bhtd', p.astype(v.dtype), v_c, preferred_element_type=jnp.float32)
    return (m_new, l, acc), None

  stats = (batch, heads, q_len)
  init = (jnp.full(stats, -jnp.inf, jnp.float32), jnp.zeros(stats, jnp.float32),
          jnp.zeros(stats + (v.shape[-1],), jnp.float32))
  (m, l, acc), _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
  has_keys = l > 0
  l_safe = jnp.where(has_keys, l, 1.0)
  out = jnp.transpose(acc / l_safe[..., None], (0, 2, 1, 3))  # -> [b, t, h, dv]
  lse = jnp.where(has_keys, jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(l_safe), 0.0)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _attention(q, k, v, mask, key, chunk, kv_len, rate, scale):
  out, _ = _forward(q, k, v, mask, key, chunk, kv_len, rate, scale)
  return out.astype(v.dtype)


def _attention_fwd(q, k, v, mask, key, chunk, kv_len, rate, scale):
  out, lse = _forward(q, k, v, mask, key, chunk, kv_len, rate, scale)
  # Saved: the inputs, the float32 output and the log-sum-exp; O(q_len) beyond inputs.
  return out.astype(v.dtype), (q, k, v, mask, key, out, lse)


def _attention_bwd(chunk, kv_len, rate, scale, residuals, d_out):
  q, k, v, mask, key, out, lse = residuals
  d_out = d_out.astype(v.dtype)
  # rowsum(P * dP) = d_out . out, also with dropout (dP is masked by the same keep-mask).
  delta = jnp.einsum('bthd,bthd->bht', d_out.astype(jnp.float32), out)

  def body(grads, i):
    dq, dk, dv = grads
    start = i * chunk
    logits, valid = _chunk_logits(q, k, mask, i, chunk, kv_len, scale)
    p = jnp.where(valid, jnp.exp(logits - lse[..., None]), 0.0)
    k_c = jax.lax.dynamic_slice_in_dim(k, start, chunk, axis=1)
    v_c = jax.lax.dynamic_slice_in_dim(v, start, chunk, axis=1)
    dp = jnp.einsum('bthd,bshd->bhts', d_out, v_c, preferred_element_type=jnp.float32)
    p_out = p
    if rate > 0.0:
      keep = dropout_keep(key, i, rate, p.shape)
      p_out = jnp.where(keep, p / (1.0 - rate), 0.0)
      dp = jnp.where(keep, dp / (1.0 - rate), 0.0)
    ds = p * (dp - delta[..., None]) * scale
    dq = dq + jnp.einsum('bhts,bshd->bthd', ds.astype(k.dtype), k_c,
                         preferred_element_type=jnp.float32)
    dk_c = jnp.einsum('bhts,bthd->bshd', ds.astype(q.dtype), q,
                      preferred_element_type=jnp.float32)
    dv_c = jnp.einsum('bhts,bthd->bshd', p_out.astype(v.dtype), d_out,
                      preferred_element_type=jnp.float32)
    # Written in place into the full-size gradients: no stacked copy to transpose after.
    dk = jax.lax.dynamic_update_slice_in_dim(dk, dk_c.astype(k.dtype), start, axis=1)
    dv = jax.lax.dynamic_update_slice_in_dim(dv, dv_c.astype(v.dtype), start, axis=1)
    return (dq, dk, dv), None

  num_chunks = k.shape[1] // chunk
  init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros_like(k), jnp.zeros_like(v))
  (dq, dk, dv), _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
  return dq.astype(q.dtype), dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)
