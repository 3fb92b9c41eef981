"""model.encoder.input_dropout_prob: inputs hidden from the cross-attends in training only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perceiver_jax.model.encoder import PerceiverEncoder


def _encoder(p):
  return PerceiverEncoder(3, num_latents=4, num_latent_channels=8, num_blocks=1,
                          num_self_attends_per_block=0, input_dropout_prob=p,
                          rngs=nnx.Rngs(0))


def test_hides_about_p_of_the_inputs_and_keeps_at_least_one():
  encoder = _encoder(0.5)
  kept = encoder._drop_inputs(None, (64, 200), nnx.Rngs(dropout=1))
  assert kept.shape == (64, 200) and kept.dtype == jnp.bool_
  assert 0.45 < float(kept.mean()) < 0.55
  # Padding stays hidden; an example whose only input was dropped keeps that input.
  mask = jnp.zeros((64, 200), bool).at[:, 0].set(True)
  kept = encoder._drop_inputs(mask, (64, 200), nnx.Rngs(dropout=1))
  np.testing.assert_array_equal(np.asarray(kept), np.asarray(mask))


def test_changes_training_outputs_only():
  x = jax.random.normal(jax.random.key(0), (2, 10, 3))
  plain, dropping = _encoder(0.0), _encoder(0.5)
  same = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  same(dropping(x), plain(x))  # evaluation: deterministic, nothing hidden
  trained = dropping(x, deterministic=False, rngs=nnx.Rngs(dropout=2))
  assert not np.allclose(np.asarray(trained), np.asarray(plain(x, deterministic=False,
                                                               rngs=nnx.Rngs(dropout=2))))
  with pytest.raises(ValueError, match='needs rngs with a dropout stream'):
    dropping(x, deterministic=False)


def test_a_probability_outside_zero_to_one_is_refused():
  with pytest.raises(ValueError, match='input_dropout_prob'):
    _encoder(1.5)
