"""Perceiver AR (Hawthorne et al. 2022, arXiv 2202.07765): a causal byte model whose
compute per position is set by a fixed latent budget, not by the context length.

A context of N tokens; its last M positions are the latents. One cross-attend: each
latent's query is its own token embedding, the keys and values cover all N positions
under a causal mask (the latent at position p sees positions <= p). Then L causal
self-attends over the M latents, a final LayerNorm, and each latent predicts the next
token. Positions enter only as rotary encodings on part of every head's q/k channels, so
attention depends on relative positions alone.

Training drops a random part of the prefix (the N - M positions that are not latents)
from the cross-attend's keys, as the paper does: it regularises and cuts the cost.

Generation (perceiver_jax/sampling.py) uses `encode`, `decode_step` and `slide_window`: the
cross-attend's keys/values and each self-attend's keys/values are cached in fixed-size
buffers, so a new token costs one query against the cache. Causality makes the cache
exact: a latent's output depends only on the tokens at or before it and on the latents
before it in the same window. The cross-attend's output of a latent depends on the
context alone, not on the window, so the cache keeps it for every window slot and a
window that slides recomputes only the self-attends over its M latents, whatever N is.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from perceiver_jax.model import checks
from perceiver_jax.model.attention import MLP, dense, dot_product_attention, layer_norm
from perceiver_jax.model.partitioning import constrain, logical_axes
from perceiver_jax.model.settings import DEFAULT, ModelSettings

Dtype = Any
BYTE_VOCAB_SIZE = 256


def rotary_tables(positions: jax.Array, rotary_dim: int, max_wavelength: float
                  ) -> tuple[jax.Array, jax.Array]:
  """cos and sin of every position's angles, [batch, length, 1, rotary_dim // 2]."""
  exponents = jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim
  inv_wavelengths = max_wavelength ** -exponents
  angles = positions.astype(jnp.float32)[..., None] * inv_wavelengths
  return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def apply_rotary(x: jax.Array, positions: jax.Array, rotary_dim: int,
                 max_wavelength: float) -> jax.Array:
  """Rotates the first `rotary_dim` channels of every head of x [batch, length, heads, d]
  by its position (positions [batch, length]); the other channels pass unchanged."""
  if rotary_dim == 0:
    return x
  cos, sin = rotary_tables(positions, rotary_dim, max_wavelength)
  half = rotary_dim // 2
  x1 = x[..., :half].astype(jnp.float32)
  x2 = x[..., half:rotary_dim].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return jnp.concatenate([rotated.astype(x.dtype), x[..., rotary_dim:]], axis=-1)


def causal_mask(q_positions: jax.Array, kv_positions: jax.Array,
                kv_valid: jax.Array | None = None) -> jax.Array:
  """[batch, 1, q_len, kv_len]: a query sees the valid keys at or before its position."""
  mask = kv_positions[:, None, None, :] <= q_positions[:, None, :, None]
  if kv_valid is not None:
    mask = mask & kv_valid[:, None, None, :]
  return mask


class CausalBlock(nnx.Module):
  """Pre-LayerNorm attention block with rotary q/k and a position-based causal mask,
  then an MLP: x + attend(LN(x), keys/values) ; x + MLP(LN(x)).

  cross=True: the keys/values come from other inputs (their own LayerNorm, `kv_norm`);
  cross=False: from the block's own (normalised) inputs. Keys and values are computed by
  `keys_values` and passed in, so generation can cache them.
  """

  def __init__(self, num_channels: int, *, cross: bool, num_heads: int,
               widening_factor: int, rotary_fraction: float, max_wavelength: float,
               dropout_prob: float = 0.0, dropout_attn_prob: float = 0.0,
               settings: ModelSettings = DEFAULT, rngs: nnx.Rngs):
    if num_channels % num_heads:
      raise ValueError(f'num_channels ({num_channels}) must be divisible by num_heads '
                       f'({num_heads}).')
    if not 0.0 <= rotary_fraction <= 1.0:
      raise ValueError(f'rotary_fraction must be in [0, 1], got {rotary_fraction}.')
    kw = dict(rngs=rngs, dtype=settings.dtype, param_dtype=settings.param_dtype)
    self.num_heads = num_heads
    head_dim = num_channels // num_heads
    # An even number of channels per head: they rotate in pairs.
    self.rotary_dim = 2 * int(head_dim * rotary_fraction // 2)
    self.max_wavelength = float(max_wavelength)
    self.dropout_attn_prob = dropout_attn_prob
    self.settings = settings
    self.norm = layer_norm(num_channels, 'embed', **kw)
    self.kv_norm = layer_norm(num_channels, 'embed', **kw) if cross else None
    heads = 'heads' if num_heads > 1 else 'head_dim'
    self.query = dense(num_channels, num_channels, ('embed', heads), **kw)
    self.key = dense(num_channels, num_channels, ('embed', heads), **kw)
    self.value = dense(num_channels, num_channels, ('embed', heads), **kw)
    self.output = dense(num_channels, num_channels, (heads, 'embed'), **kw)
    self.dropout = nnx.Dropout(dropout_prob)
    self.mlp_norm = layer_norm(num_channels, 'embed', **kw)
    self.mlp = MLP(num_channels, widening_factor=widening_factor, dropout_prob=dropout_prob,
                   activation=settings.mlp_activation, **kw)

  def _heads(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[:2] + (self.num_heads, -1))
    return constrain(x, ('batch', 'length', 'act_heads', 'head_dim'))

  def keys_values(self, inputs_kv: jax.Array, positions: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """Rotated keys and values [batch, kv_len, heads, head_dim] of inputs_kv."""
    normed = (self.kv_norm or self.norm)(inputs_kv)
    keys = apply_rotary(self._heads(self.key(normed)), positions, self.rotary_dim,
                        self.max_wavelength)
    return keys, self._heads(self.value(normed))

  def __call__(self, x: jax.Array, positions: jax.Array, keys: jax.Array,
               values: jax.Array, kv_positions: jax.Array,
               kv_valid: jax.Array | None = None, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None, own: tuple | None = None) -> jax.Array:
    """own: (key, value) of x's one position, with keys and values [batch, heads,
    head_dim, kv_len] a generation cache of the positions before it (see _attend_cached)."""
    dropout_rng = None
    if not deterministic and self.dropout_attn_prob > 0.0:
      dropout_rng = rngs.dropout()
    queries = apply_rotary(self._heads(self.query(self.norm(x))), positions,
                           self.rotary_dim, self.max_wavelength)
    mask = causal_mask(positions, kv_positions, kv_valid)
    if own is not None:
      out = _attend_cached(queries, keys, values, mask, *own)
    else:
      out = dot_product_attention(
          queries, keys, values, mask, dropout_rate=self.dropout_attn_prob,
          dropout_rng=dropout_rng, implementation=self.settings.attention_impl,
          chunk_size=self.settings.attention_chunk_size,
          auto_chunk_threshold=self.settings.attention_auto_chunk_threshold)
    attn = self.output(out.reshape(out.shape[:2] + (-1,)))
    x = x + self.dropout(attn, deterministic=deterministic, rngs=rngs)
    x = x + self.mlp(self.mlp_norm(x), deterministic=deterministic, rngs=rngs)
    return constrain(x, ('batch', 'length', 'act_embed'))


def _attend_cached(q: jax.Array, keys_t: jax.Array, values_t: jax.Array, mask: jax.Array,
                   own_key: jax.Array, own_value: jax.Array) -> jax.Array:
  """One new position's attention over a cache plus itself: softmax over [the cache's
  keys where `mask`, its own key] of the logits, times the values.

  q, own_key, own_value [batch, 1, heads, d]; keys_t and values_t [batch, heads, d,
  kv_len] as the cache stores them; mask [batch, 1, 1, kv_len] -> [batch, 1, heads, d].
  The cache is only read, in its own layout, by two matrix-vector products that both run
  along kv_len, its contiguous axis: at batch 1 they read it near this CPU's memory
  bandwidth (values stored [.., kv_len, d] made the second product 2.5x slower at 64k).
  Reading it only lets the step that then writes the new entries update it in place
  (reading it after the write makes XLA copy the whole cache at every step)."""
  scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
  q = jnp.swapaxes(q, 1, 2)  # [batch, heads, 1, d]
  logits = jnp.einsum('bhqd,bhdk->bhqk', q, keys_t, preferred_element_type=jnp.float32)
  logits = jnp.where(mask, logits * scale, -jnp.inf)
  own = jnp.sum(q.astype(jnp.float32) * jnp.swapaxes(own_key, 1, 2), axis=-1,
                keepdims=True) * scale  # [batch, heads, 1, 1]
  top = jnp.maximum(jnp.max(logits, axis=-1, keepdims=True), own)
  weights, own_weight = jnp.exp(logits - top), jnp.exp(own - top)
  total = jnp.sum(weights, axis=-1, keepdims=True) + own_weight
  out = jnp.einsum('bhqk,bhdk->bhqd', weights.astype(values_t.dtype), values_t)
  out = (out + own_weight * jnp.swapaxes(own_value, 1, 2)) / total
  return jnp.swapaxes(out, 1, 2).astype(values_t.dtype)


def _cache_layout(keys_or_values: jax.Array) -> jax.Array:
  """[batch, len, heads, d] -> the cache's [batch, heads, d, len]."""
  return jnp.transpose(keys_or_values, (0, 2, 3, 1))


class Cache(NamedTuple):
  """Generation state over a context buffer of N slots and a latent window of M slots.

  Positions are buffer slots (0..N-1). `length`: tokens in the buffer; `latent_start`:
  the slot of the window's first latent (latent slot j is buffer slot latent_start + j).
  """
  # The layouts a step attends in as matrix products, without moving the cache.
  cross_keys: jax.Array  # [batch, heads, head_dim, N]
  cross_values: jax.Array  # [batch, heads, head_dim, N]
  cross_outputs: jax.Array  # [batch, M, channels]: the cross-attend's output per slot
  self_keys: jax.Array  # [L, batch, heads, head_dim, M]
  self_values: jax.Array  # [L, batch, heads, head_dim, M]
  length: jax.Array  # int32 scalar
  latent_start: jax.Array  # int32 scalar


class PerceiverAR(nnx.Module):
  """Token ids [batch, n] (n <= max_context) -> next-token logits [batch, M, vocab_size]
  for the last M positions (M = num_latents, or the `num_latents` given at call time)."""

  def __init__(self, *, vocab_size: int = BYTE_VOCAB_SIZE, max_context: int = 1024,
               num_latents: int = 256, num_channels: int = 256, num_heads: int = 4,
               num_self_attends: int = 4, widening_factor: int = 4,
               rotary_fraction: float = 0.5, max_wavelength: float = 10_000.0,
               dropout_prob: float = 0.0, dropout_attn_prob: float = 0.0,
               prefix_dropout: float = 0.0, embedding_init_scale: float = 0.02,
               settings: ModelSettings = DEFAULT, rngs: nnx.Rngs):
    checks.positive(vocab_size=vocab_size, max_context=max_context, num_latents=num_latents,
                    num_channels=num_channels, num_heads=num_heads,
                    widening_factor=widening_factor)
    if num_latents > max_context:
      raise ValueError(f'num_latents ({num_latents}) cannot exceed max_context '
                       f'({max_context}): the latents are the context\'s last positions.')
    if num_self_attends < 0:
      raise ValueError(f'num_self_attends must be >= 0, got {num_self_attends}.')
    if not 0.0 <= prefix_dropout < 1.0:
      raise ValueError(f'prefix_dropout must be in [0, 1), got {prefix_dropout}.')
    self.vocab_size = int(vocab_size)
    self.max_context = int(max_context)
    self.num_latents = int(num_latents)
    self.prefix_dropout = float(prefix_dropout)
    self.dtype = settings.dtype
    self.embed = nnx.Embed(
        vocab_size, num_channels, dtype=settings.dtype, param_dtype=settings.param_dtype,
        embedding_init=nnx.initializers.truncated_normal(embedding_init_scale),
        embedding_metadata=logical_axes(('vocab', 'embed')), rngs=rngs)
    block = dict(num_heads=num_heads, widening_factor=widening_factor,
                 rotary_fraction=rotary_fraction, max_wavelength=max_wavelength,
                 dropout_prob=dropout_prob, dropout_attn_prob=dropout_attn_prob,
                 settings=settings, rngs=rngs)
    self.cross_attend = CausalBlock(num_channels, cross=True, **block)
    self.self_attends = nnx.List(
        [CausalBlock(num_channels, cross=False, **block) for _ in range(num_self_attends)])
    kw = dict(rngs=rngs, dtype=settings.dtype, param_dtype=settings.param_dtype)
    self.final_norm = layer_norm(num_channels, 'embed', **kw)
    self.logits = dense(num_channels, vocab_size, ('embed', 'vocab'), **kw)

  # -- training and evaluation ----------------------------------------------------------

  def __call__(self, inputs: jax.Array, *, num_latents: int | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
    """inputs: token ids [batch, n]."""
    batch, length = inputs.shape
    num_latents = self.num_latents if num_latents is None else int(num_latents)
    if length > self.max_context:
      raise ValueError(f'{length} tokens exceed the model\'s max_context '
                       f'({self.max_context}); shorten the input or raise max_context.')
    if not 1 <= num_latents <= length:
      raise ValueError(f'num_latents ({num_latents}) must be between 1 and the input '
                       f'length ({length}).')
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    x = constrain(self.embed(inputs), ('batch', 'length', 'act_embed'))
    latents, latent_positions = x[:, -num_latents:], positions[:, -num_latents:]
    kv, kv_positions = x, positions
    prefix = length - num_latents
    if not deterministic and self.prefix_dropout > 0.0 and prefix > 0:
      kv, kv_positions = self._drop_prefix(kv, kv_positions, prefix, rngs)
    keys, values = self.cross_attend.keys_values(kv, kv_positions)
    h = self.cross_attend(latents, latent_positions, keys, values, kv_positions,
                          deterministic=deterministic, rngs=rngs)
    for block in self.self_attends:
      keys, values = block.keys_values(h, latent_positions)
      h = block(h, latent_positions, keys, values, latent_positions,
                deterministic=deterministic, rngs=rngs)
    return self._logits(h)

  def _drop_prefix(self, kv, kv_positions, prefix: int, rngs: nnx.Rngs):
    """Keeps a random (1 - prefix_dropout) share of the prefix positions per example, in
    order, followed by all the latents' positions."""
    keep = max(1, int(round(prefix * (1.0 - self.prefix_dropout))))
    scores = jax.random.uniform(rngs.dropout(), kv_positions[:, :prefix].shape)
    kept = jnp.sort(jax.lax.top_k(scores, keep)[1], axis=-1)
    gather = lambda a: jnp.take_along_axis(a, kept.reshape(kept.shape + (1,) * (a.ndim - 2)),
                                           axis=1)
    kv = jnp.concatenate([gather(kv[:, :prefix]), kv[:, prefix:]], axis=1)
    kv_positions = jnp.concatenate([gather(kv_positions[:, :prefix]),
                                    kv_positions[:, prefix:]], axis=1)
    return kv, kv_positions

  def _logits(self, h: jax.Array) -> jax.Array:
    return self.logits(self.final_norm(h)).astype(jnp.float32)

  # -- cached generation ----------------------------------------------------------------

  def encode(self, tokens: jax.Array, length: jax.Array, latent_start: jax.Array,
             num_latents: int | None = None) -> tuple[jax.Array, Cache]:
    """Encodes a context buffer from scratch and returns its cache.

    tokens [batch, N]: the context, left-aligned; slots >= `length` are ignored. The
    latent window is slots latent_start .. latent_start + M - 1 (M = num_latents); those
    at or past `length` are empty until `decode_step` fills them. Returns the logits of
    every window slot [batch, M, vocab] (valid below length) and the cache.
    """
    batch, buffer = tokens.shape
    num_slots = self.num_latents if num_latents is None else int(num_latents)
    positions = jnp.broadcast_to(jnp.arange(buffer, dtype=jnp.int32), (batch, buffer))
    valid = positions < length
    x = self.embed(tokens)
    cross_keys, cross_values = self.cross_attend.keys_values(x, positions)
    # Window slots past the buffer's end stay empty (the context slides first); padding
    # keeps dynamic_slice from clamping the window's start.
    padded = jnp.pad(x, ((0, 0), (0, num_slots), (0, 0)))
    latents = jax.lax.dynamic_slice_in_dim(padded, latent_start, num_slots, axis=1)
    slots = latent_start + positions[:, :num_slots]
    cross_outputs = self.cross_attend(latents, slots, cross_keys, cross_values, positions,
                                      valid)
    logits, self_keys, self_values = self._latent_stack(cross_outputs, slots)
    cache = Cache(_cache_layout(cross_keys), _cache_layout(cross_values), cross_outputs,
                  self_keys, self_values, jnp.asarray(length, jnp.int32),
                  jnp.asarray(latent_start, jnp.int32))
    return logits, cache

  def _latent_stack(self, h: jax.Array, slots: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The self-attends over a window's cross-attend outputs h [batch, M, C] at buffer
    slots [batch, M]: the logits [batch, M, vocab] and the stacked self-attend keys and
    values in the cache's layouts."""
    self_keys, self_values = [], []
    for block in self.self_attends:
      keys, values = block.keys_values(h, slots)
      self_keys.append(_cache_layout(keys))
      self_values.append(_cache_layout(values))
      h = block(h, slots, keys, values, slots)
    if not self.self_attends:
      batch, num_slots, channels = h.shape
      heads = self.cross_attend.num_heads
      empty = jnp.zeros((0, batch, heads, channels // heads, num_slots), h.dtype)
      return self._logits(h), empty, empty
    return self._logits(h), jnp.stack(self_keys), jnp.stack(self_values)

  def slide_window(self, cache: Cache, latent_start: jax.Array) -> Cache:
    """The cache with its latent window moved forward to start at buffer slot
    `latent_start` (by at most M slots): the kept slots' cross-attend outputs move along,
    and the self-attends run again over the new window. The cross-attend's keys and values
    are not read, so the cost does not depend on the context length (the sampler passes
    the cache without them)."""
    num_slots = cache.cross_outputs.shape[1]
    padded = jnp.pad(cache.cross_outputs, ((0, 0), (0, num_slots), (0, 0)))
    outputs = jax.lax.dynamic_slice_in_dim(padded, latent_start - cache.latent_start,
                                           num_slots, axis=1)
    batch = outputs.shape[0]
    slots = latent_start + jnp.broadcast_to(jnp.arange(num_slots, dtype=jnp.int32),
                                            (batch, num_slots))
    _, self_keys, self_values = self._latent_stack(outputs, slots)
    return cache._replace(cross_outputs=outputs, self_keys=self_keys,
                          self_values=self_values,
                          latent_start=jnp.asarray(latent_start, jnp.int32))

  def decode_step(self, cache: Cache, token: jax.Array) -> tuple[jax.Array, Cache]:
    """Appends `token` [batch] at buffer slot cache.length (it must lie inside the
    buffer and the latent window) and returns its next-token logits [batch, vocab] and
    the cache that holds it: `attend_step` then `write_step`. (The sampler jits the two
    apart, the cache donated to the second: one program that reads and writes the cache
    makes XLA:CPU copy the whole cache at every step.)"""
    logits, entries = self.attend_step(cache, token)
    return logits, self.write_step(cache, entries)

  def attend_step(self, cache: Cache, token: jax.Array) -> tuple[jax.Array, tuple]:
    """`token`'s next-token logits [batch, vocab] given the cache (read only), and its
    cache entries: ((cross key, cross value), cross-attend output [batch, 1, channels],
    ((key, value) per self-attend)), keys and values [batch, 1, heads, head_dim]."""
    batch = token.shape[0]
    buffer = cache.cross_keys.shape[3]
    position = jnp.full((batch, 1), cache.length, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(buffer, dtype=jnp.int32), (batch, buffer))
    x = self.embed(token[:, None])
    cross = self.cross_attend.keys_values(x, position)
    # The cache holds the positions before this one; the new one attends to itself apart.
    h = self.cross_attend(x, position, cache.cross_keys, cache.cross_values, positions,
                          positions < cache.length, own=cross)
    cross_output, entries = h, []
    if self.self_attends:
      num_slots = cache.self_keys.shape[4]
      slots = cache.latent_start + positions[:, :num_slots]
      for i, block in enumerate(self.self_attends):
        own = block.keys_values(h, position)
        entries.append(own)
        h = block(h, position, cache.self_keys[i], cache.self_values[i], slots,
                  slots < cache.length, own=own)
    return self._logits(h)[:, 0], (cross, cross_output, tuple(entries))

  @staticmethod
  def write_step(cache: Cache, entries: tuple) -> Cache:
    """The cache with attend_step's entries written at slot cache.length."""
    def write(array, entry, at):
      return jax.lax.dynamic_update_slice(array, entry.astype(array.dtype), at)
    (cross_key, cross_value), cross_output, own = entries
    length, slot = cache.length, cache.length - cache.latent_start
    cross_keys = write(cache.cross_keys, _cache_layout(cross_key), (0, 0, 0, length))
    cross_values = write(cache.cross_values, _cache_layout(cross_value), (0, 0, 0, length))
    cross_outputs = write(cache.cross_outputs, cross_output, (0, slot, 0))
    self_keys, self_values = cache.self_keys, cache.self_values
    for i, (keys, values) in enumerate(own):
      self_keys = write(self_keys, _cache_layout(keys)[None], (i, 0, 0, 0, slot))
      self_values = write(self_values, _cache_layout(values)[None], (i, 0, 0, 0, slot))
    return Cache(cross_keys, cross_values, cross_outputs, self_keys, self_values, length + 1,
                 cache.latent_start)
