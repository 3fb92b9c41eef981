"""Small models train under the ModelNet40 recipe (issue 17, section 5): LAMB's trust ratio
leaves out the zero-initialised head, which it would otherwise hold near zero."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import modelnet40_perceiver
from perceiver_jax import trainer
from perceiver_jax.data import shape_synthesis
from perceiver_jax.errors import UserError
from perceiver_jax.optim import lamb, trust_ratio_mask
from tests.helpers import abstract_run, set_dotted

POINTS = 64
PER_CLASS = 4  # 8 shapes x 4 clouds: one fixed batch of 32


def shape_batch(seed: int = 0) -> dict:
  """PER_CLASS clouds of each synthetic shape, [32, POINTS, 3], with their labels."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(len(shape_synthesis.SHAPES)), PER_CLASS)
  clouds = [shape_synthesis.random_shape_cloud(rng, shape_synthesis.SHAPES[i], POINTS)
            for i in labels]
  return {'inputs': np.stack(clouds).astype(np.float32), 'label': labels.astype(np.int32)}


def small_model_losses(num_steps: int, **overrides) -> list[float]:
  """Training losses of a 16 x 32 latent, 1 self-attend model on shape_batch() under the
  ModelNet40 recipe (LAMB 1e-3, clip 10) with the cosine schedule and warmup a new user
  tried, every step on the same batch."""
  config = modelnet40_perceiver.get_config('runlocal')
  set_dotted(config, {'optimizer.schedule': 'cosine', 'optimizer.warmup_steps': 10,
                      'train.num_steps': num_steps, **overrides})
  run = abstract_run(config, (POINTS, 3), training=True)
  state, train_step = run.init_state(), trainer.make_train_step(run)
  batch = run.to_global(shape_batch())
  losses = []
  for _ in range(num_steps):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics['loss']))
  return losses


def test_a_small_model_learns_under_the_modelnet40_recipe():
  losses = small_model_losses(40)
  assert losses[0] == pytest.approx(math.log(8.0), abs=1e-3)  # the head starts at zero
  # Before the head left the trust ratio it stayed near zero and the loss near ln 8
  # (2.0794 -> 2.0753 over these 40 steps).
  assert np.mean(losses[-5:]) < 0.8 * math.log(8.0), losses


@pytest.mark.parametrize('exclude, head_step', [('', 1e-4), ('head/.*', 1e-2)])
def test_a_left_out_parameter_takes_adamw_steps(exclude, head_step):
  # Gradients of 1 make every Adam update 1 per entry. Step 1 moves the zero head by lr = 1e-2
  # (a zero norm has no trust ratio); step 2's trust ratio |w| / |update| is then 1e-2, so
  # under it the head moves by 1e-4 per entry; left out, by lr as in AdamW.
  params = {'head': {'kernel': jnp.zeros((4, 3))}, 'body': {'kernel': jnp.ones((4, 3))}}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = lamb(1e-2, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0, mask=None, exclude=exclude)
  updates, state = tx.update(grads, tx.init(params), params)
  params = optax.apply_updates(params, updates)
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(updates['head']['kernel'], -head_step, rtol=1e-4)
  # The rest keeps LAMB's step: lr x |w| / |update| = 1e-2 x 0.99.
  np.testing.assert_allclose(updates['body']['kernel'], -0.99e-2, rtol=1e-4)


def test_trust_ratio_exclude_must_be_a_regex_that_matches():
  params = {'decoder': {'logits': {'kernel': jnp.zeros((2, 2))}}}
  with pytest.raises(UserError, match='is not a regular expression'):
    trust_ratio_mask('decoder/(')
  with pytest.raises(UserError, match="matches no parameter path; paths look like "
                                      "'decoder/logits/kernel'"):
    trust_ratio_mask('head/.*')(params)
  assert trust_ratio_mask('decoder/.*')(params) == {'decoder': {'logits': {'kernel': False}}}


def test_the_optimizer_state_is_optax_lambs():
  # So a LAMB checkpoint written without trust_ratio_exclude resumes with it.
  params = {'decoder': {'logits': {'kernel': jnp.zeros((2, 2))}}, 'w': jnp.ones((2, 2))}
  kw = dict(b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.1, mask=None)
  ours = lamb(1e-3, exclude='decoder/.*', **kw).init(params)
  assert jax.tree.structure(ours) == jax.tree.structure(optax.lamb(1e-3, **kw).init(params))
