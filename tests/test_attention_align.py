"""Zero-padding unaligned attention widths (GPUs) changes the matrix shapes, not the results."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perceiver_jax import flops
from perceiver_jax.model import attention


def _dot_widths(fn, *args) -> set[int]:
  """Every operand dimension of the dot_generals fn traces."""
  widths = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'dot_general':
        for v in eqn.invars[:2]:
          widths.update(v.aval.shape)
      for value in eqn.params.values():
        if hasattr(value, 'eqns') or hasattr(value, 'jaxpr'):
          walk(getattr(value, 'jaxpr', value))
  # A fresh function each time: jax caches traces by function, and whether widths are
  # padded is not part of that key.
  walk(jax.make_jaxpr(lambda *a: fn(*a))(*args).jaxpr)
  return widths


@pytest.mark.parametrize('heads, qk, v, chunk', [(1, None, None, 0), (2, 10, 6, 0),
                                                 (1, None, None, 8)])
def test_aligned_widths_give_the_same_outputs_and_gradients(heads, qk, v, chunk):
  # 13 input channels, as the released models' 261: no width a multiple of 8.
  with nnx.use_eager_sharding(False):
    block = attention.CrossAttention(24, 13, num_heads=heads, qk_channels=qk, v_channels=v,
                                     rngs=nnx.Rngs(0), attention_chunk_size=chunk)
  graphdef, params = nnx.split(block)
  latents = jax.random.normal(jax.random.key(1), (2, 5, 24))
  inputs = jax.random.normal(jax.random.key(2), (2, 17, 13))
  mask = jax.random.bernoulli(jax.random.key(3), 0.7, (2, 17))[:, None, None, :]

  def loss(params, latents, inputs):
    return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(latents, inputs, mask)))

  results, widths = {}, {}
  for aligned in (False, True):
    with attention.align_widths(aligned):
      grad = jax.value_and_grad(lambda *a: loss(*a), argnums=(0, 1, 2))
      results[aligned] = grad(params, latents, inputs)
      widths[aligned] = _dot_widths(loss, params, latents, inputs)
  # The padded program multiplies 16-wide operands where the plain one has 13 (or 5/3).
  assert 13 in widths[False] and 13 not in widths[True] and 16 in widths[True]
  (want_loss, want), (got_loss, got) = results[False], results[True]
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, atol=1e-5)
  # Relative to the largest gradient: the key bias's true gradient is 0 (softmax is
  # invariant to it) and holds only rounding noise.
  scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * scale)


def test_model_flops_count_the_declared_widths():
  with nnx.use_eager_sharding(False):
    block = attention.CrossAttention(24, 13, num_heads=1, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(block)
  shapes = (jax.ShapeDtypeStruct((2, 5, 24), jnp.float32),
            jax.ShapeDtypeStruct((2, 17, 13), jnp.float32))
  fn = lambda params, a, b: nnx.merge(graphdef, params)(a, b)
  counts = {}
  for aligned in (False, True):
    with attention.align_widths(aligned):
      counts[aligned] = flops.forward_flops(fn, params, *shapes)
  # q/k/v/output projections, logits and weighted sum; MLP of widening 1 (24 -> 24 -> 24).
  q, kv, d = 2 * 5, 2 * 17, 13
  expected = 2 * (q * 24 * d + 2 * kv * 13 * d + 2 * 2 * 5 * 17 * d + q * d * 24 + 2 * q * 24 * 24)
  assert counts[False] == counts[True] == expected
