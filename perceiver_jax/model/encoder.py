"""The Perceiver encoder: a latent array that cross-attends to the inputs, then a
stack of latent self-attention blocks whose weights are shared across repeats.

Two forms:
  * Perceiver IO (default): one cross-attend, then `num_blocks` x the block of
    `num_self_attends_per_block` self-attends (DeepMind's `PerceiverEncoder`).
  * original Perceiver (`cross_attend_every_block=True`): a cross-attend before every
    block. With `share_cross_attend_weights` every cross-attend after the first shares
    one set of weights (the first has its own), as in the Perceiver paper.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from perceiver_jax.model import checks
from perceiver_jax.model.attention import CrossAttention, SelfAttention
from perceiver_jax.model.partitioning import constrain
from perceiver_jax.model.position_encoding import TrainablePositionEncoding
from perceiver_jax.model.settings import DEFAULT, ModelSettings

Dtype = Any

# What a rematerialised block keeps from its forward pass; everything else is recomputed in
# the backward pass. 'dots_saveable' keeps the projection/MLP matmul outputs and recomputes
# the attention logits (dots with batch dimensions), the largest activations of a block.
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class PerceiverEncoder(nnx.Module):
  """inputs [batch, N, input_channels] -> latents [batch, num_latents, num_latent_channels]."""
  HAIKU_NAMES = {'z_pos_enc': 'trainable_position_encoding',
                 'cross_attend': 'cross_attention',
                 'self_attends': 'self_attention, self_attention_1, ...'}

  def __init__(self, input_channels: int, *, num_latents: int = 512,
               num_latent_channels: int = 1024, num_blocks: int = 8,
               num_self_attends_per_block: int = 6, num_cross_attend_heads: int = 1,
               num_self_attend_heads: int = 8, cross_attend_widening_factor: int = 1,
               self_attend_widening_factor: int = 1, qk_channels: int | None = None,
               v_channels: int | None = None, cross_attention_shape_for_attn: str = 'kv',
               use_query_residual: bool = True, dropout_prob: float = 0.0,
               dropout_attn_prob: float = 0.0, input_dropout_prob: float = 0.0,
               latent_init_scale: float = 0.02, cross_attend_every_block: bool = False,
               share_cross_attend_weights: bool = True,
               remat: str = 'none', scan_blocks: bool = True,
               settings: ModelSettings = DEFAULT, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    checks.positive(num_latents=num_latents, num_latent_channels=num_latent_channels,
                    num_blocks=num_blocks,
                    num_cross_attend_heads=num_cross_attend_heads,
                    num_self_attend_heads=num_self_attend_heads,
                    cross_attend_widening_factor=cross_attend_widening_factor,
                    self_attend_widening_factor=self_attend_widening_factor)
    # 0 self-attends: a cross-attend only (the benchmarks' attention-only models).
    checks.at_least_zero(num_self_attends_per_block=num_self_attends_per_block)
    checks.optional_positive(qk_channels=qk_channels, v_channels=v_channels)
    checks.probability(dropout_prob=dropout_prob, dropout_attn_prob=dropout_attn_prob,
                       input_dropout_prob=input_dropout_prob)
    # Training hides each input from every cross-attend with this probability (the same
    # inputs for all latents and blocks of an example): an augmentation a set model takes
    # without changing shape, like PatchDropout for ViTs. At least one input stays.
    self.input_dropout_prob = float(input_dropout_prob)
    checks.choice('remat', remat, REMAT_POLICIES)
    checks.choice('cross_attention_shape_for_attn', cross_attention_shape_for_attn,
                  ('q', 'kv'))
    self.remat = remat
    # Weight-shared repeats run as one jax.lax.scan: traced and compiled once, not
    # num_blocks times (compile time, HLO size); the arithmetic is the same.
    self.scan_blocks = bool(scan_blocks)
    for heads, what in ((num_self_attend_heads, 'num_self_attend_heads'),
                        (num_cross_attend_heads, 'num_cross_attend_heads')):
      if num_latent_channels % heads:
        raise ValueError(f'num_latent_channels={num_latent_channels} is not divisible by '
                         f'{what}={heads}; choose a head count that divides the channels.')
    self.num_blocks = num_blocks
    self.cross_attend_every_block = cross_attend_every_block
    self.share_cross_attend_weights = share_cross_attend_weights
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, **settings.block_kwargs())

    # The initial latent array (DeepMind: `z_pos_enc`, param `pos_embs`).
    self.z_pos_enc = TrainablePositionEncoding(
        num_latents, num_latent_channels, init_scale=latent_init_scale,
        channel_name='embed', index_name='latents', dtype=dtype, param_dtype=param_dtype,
        rngs=rngs)

    def make_cross_attend():
      return CrossAttention(
          num_latent_channels, input_channels, num_heads=num_cross_attend_heads,
          widening_factor=cross_attend_widening_factor, dropout_prob=dropout_prob,
          dropout_attn_prob=dropout_attn_prob, shape_for_attn=cross_attention_shape_for_attn,
          use_query_residual=use_query_residual, qk_channels=qk_channels,
          v_channels=v_channels, q_name='embed', kv_name='input_channels', **kw)

    self.cross_attend = make_cross_attend()
    # Cross-attends of blocks 2..num_blocks (iterative form only).
    num_extra = 0
    if cross_attend_every_block and num_blocks > 1:
      num_extra = 1 if share_cross_attend_weights else num_blocks - 1
    self.extra_cross_attends = nnx.List([make_cross_attend() for _ in range(num_extra)])

    # One block of self-attends, applied num_blocks times with the same weights.
    self.self_attends = nnx.List([
        SelfAttention(num_latent_channels, num_heads=num_self_attend_heads,
                      widening_factor=self_attend_widening_factor,
                      dropout_prob=dropout_prob, dropout_attn_prob=dropout_attn_prob,
                      qk_channels=qk_channels, v_channels=v_channels,
                      channel_name='embed', **kw)
        for _ in range(num_self_attends_per_block)])

  def latents(self, batch_size: int) -> jax.Array:
    """The initial latent array, [batch, num_latents, num_latent_channels]."""
    return self.z_pos_enc(batch_size)

  def _cross_attend_for_block(self, block: int) -> CrossAttention | None:
    if block == 0:
      return self.cross_attend
    if not self.cross_attend_every_block:
      return None
    return self.extra_cross_attends[0 if self.share_cross_attend_weights else block - 1]

  def __call__(self, inputs: jax.Array, z: jax.Array | None = None, *,
               input_mask: jax.Array | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None,
               attention_probs: list | None = None) -> jax.Array:
    """inputs: [batch, N, C]; z: initial latents (default `latents(batch)`);
    input_mask: [batch, N] booleans, True = attend. Returns [batch, num_latents, D].

    attention_probs: a list to append each cross-attend's probabilities [batch, heads,
    num_latents, N] to, in block order (telemetry.py); None computes nothing extra."""
    if z is None:
      z = self.latents(inputs.shape[0])
    # Block boundaries keep the intended layout (batch over data/fsdp; see sharding.py).
    latent_names = ('batch', 'latents', 'act_embed')
    z = constrain(z, latent_names)
    inputs = constrain(inputs, ('batch', 'length', None))
    if not deterministic and self.input_dropout_prob > 0.0:
      input_mask = self._drop_inputs(input_mask, inputs.shape[:2], rngs)
    mask = None
    if input_mask is not None:
      mask = input_mask.astype(bool)[:, None, None, :]  # -> [batch, 1, 1, N]
    # The first block has its own cross-attend.
    z = self._block(0, z, inputs, mask, deterministic=deterministic, rngs=rngs,
                    attention_probs=attention_probs)
    # Blocks 1.. share every weight (unless each has its own cross-attend); telemetry
    # collects per-block probabilities, which a scan cannot hand out.
    repeats = self.num_blocks - 1
    if not repeats:
      return z
    if (not self.scan_blocks or attention_probs is not None
        or (self.cross_attend_every_block and not self.share_cross_attend_weights)):
      for block in range(1, self.num_blocks):
        z = self._block(block, z, inputs, mask, deterministic=deterministic, rngs=rngs,
                        attention_probs=attention_probs)
      return z
    return self._scan_shared_blocks(z, inputs, mask, repeats, deterministic=deterministic,
                                    rngs=rngs)

  def _drop_inputs(self, input_mask, shape, rngs: nnx.Rngs | None) -> jax.Array:
    """input_mask with each input also hidden with probability input_dropout_prob; an
    example left with none attends to the inputs it had."""
    if rngs is None:
      raise ValueError('input_dropout_prob > 0 needs rngs with a dropout stream in training.')
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - self.input_dropout_prob, shape)
    allowed = jnp.ones(shape, bool) if input_mask is None else input_mask.astype(bool)
    kept = keep & allowed
    return jnp.where(kept.any(axis=1, keepdims=True), kept, allowed)

  def _block(self, block: int, z: jax.Array, inputs: jax.Array, mask, *,
             deterministic: bool, rngs: nnx.Rngs | None,
             attention_probs: list | None = None) -> jax.Array:
    """Block `block`: its cross-attend (if any), then the shared self-attends."""
    latent_names = ('batch', 'latents', 'act_embed')
    cross_attend = self._cross_attend_for_block(block)
    if cross_attend is not None:
      if attention_probs is not None:
        attention_probs.append(cross_attend.attention_probs(z, inputs, mask))
      z = self._call_block(cross_attend, z, inputs, mask, deterministic=deterministic,
                           rngs=rngs)
      z = constrain(z, latent_names)
    for self_attend in self.self_attends:
      z = self._call_block(self_attend, z, deterministic=deterministic, rngs=rngs)
      z = constrain(z, latent_names)
    return z

  def _scan_shared_blocks(self, z: jax.Array, inputs: jax.Array, mask, repeats: int, *,
                          deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """Blocks 1..num_blocks-1 (identical weights) as one jax.lax.scan over z."""
    graphdef, state = nnx.split(self)
    # Each repeat draws its dropout from its own key, split off the caller's stream.
    use_dropout = not deterministic and rngs is not None and 'dropout' in rngs
    keys = jax.random.split(rngs.dropout(), repeats) if use_dropout else None

    def body(z, key):
      encoder = nnx.merge(graphdef, state)
      block_rngs = nnx.Rngs(dropout=key) if key is not None else None
      return encoder._block(1, z, inputs, mask, deterministic=deterministic,
                            rngs=block_rngs), None

    z, _ = jax.lax.scan(body, z, keys, length=repeats)
    return z

  def _call_block(self, block: nnx.Module, *args, deterministic: bool,
                  rngs: nnx.Rngs | None) -> jax.Array:
    """block(*args), under the configured rematerialisation policy.

    Each block draws its dropout from one key split off the caller's stream, with or
    without rematerialisation (so every policy draws the same masks). The
    rematerialised form is a pure function of the block's parameters and that key under
    jax.checkpoint, so it also works inside the scan over shared blocks.
    """
    use_dropout = not deterministic and rngs is not None and 'dropout' in rngs
    key = rngs.dropout() if use_dropout else None
    if self.remat == 'none':
      block_rngs = nnx.Rngs(dropout=key) if key is not None else None
      return block(*args, deterministic=deterministic, rngs=block_rngs)
    graphdef, params = nnx.split(block)

    def run(params, key, *args):
      block_rngs = nnx.Rngs(dropout=key) if key is not None else None
      return nnx.merge(graphdef, params)(*args, deterministic=deterministic, rngs=block_rngs)
    return jax.checkpoint(run, policy=REMAT_POLICIES[self.remat])(params, key, *args)
