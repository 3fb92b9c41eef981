"""Mesh resolution, logical-axis rules, and the optimizer/schedule built from config."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from perceiver_jax.run import default_config
from perceiver_jax import sharding as shd
from perceiver_jax.errors import UserError
from perceiver_jax.model.partitioning import logical_to_spec
from perceiver_jax.optim import decay_mask, make_optimizer, make_schedule


def test_mesh_shape_fills_the_rest_and_rejects_mismatches():
  assert shd.mesh_shape({'data': -1, 'fsdp': 2, 'tensor': 1}, 8) == (4, 2, 1)
  assert shd.mesh_shape({'data': 2, 'fsdp': 2, 'tensor': 2}, 8) == (2, 2, 2)
  with pytest.raises(UserError, match='needs 3 devices but 8'):
    shd.mesh_shape({'data': 3, 'fsdp': 1, 'tensor': 1}, 8)
  with pytest.raises(UserError, match='do not divide'):
    shd.mesh_shape({'data': -1, 'fsdp': 3, 'tensor': 1}, 8)
  with pytest.raises(UserError, match='Only one mesh axis'):
    shd.mesh_shape({'data': -1, 'fsdp': -1, 'tensor': 1}, 8)
  with pytest.raises(UserError, match='invalid'):
    shd.mesh_shape({'data': 0, 'fsdp': 1, 'tensor': 1}, 8)


def test_logical_rules_map_names_and_replicate_indivisible_dims():
  mesh = shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  rules = shd.rules_dict(default_config().sharding.rules)
  assert logical_to_spec(('embed', 'mlp'), (64, 128), mesh, rules) == P('fsdp', 'tensor')
  # 35 input channels do not split over fsdp=2: replicated rather than failing.
  assert logical_to_spec(('input_channels', 'heads'), (35, 64), mesh, rules) == P(None, 'tensor')
  # A mesh axis is used once per array.
  assert logical_to_spec(('embed', 'embed'), (8, 8), mesh, rules) == P('fsdp', None)
  assert logical_to_spec(None, (3,), mesh, rules) == P()
  with pytest.raises(UserError, match='unknown mesh axis'):
    shd.rules_dict([('embed', 'model')])


def test_eval_batch_rounds_up_to_the_data_parallel_size():
  mesh = shd.make_mesh({'data': 4, 'fsdp': 2, 'tensor': 1})
  assert shd.eval_batch_size(500, mesh) == 504
  assert shd.eval_batch_size(8, mesh) == 8


def _opt_config(**kw):
  config = default_config().optimizer
  config.update(kw)
  return config


def test_schedule_warms_up_then_decays_to_the_end_value():
  schedule = make_schedule(_opt_config(learning_rate=1.0, warmup_steps=10, end_lr_factor=0.1), 110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.55, abs=1e-3)  # cosine midpoint
  assert float(schedule(110)) == pytest.approx(0.1)
  held = make_schedule(_opt_config(learning_rate=1.0, warmup_steps=0, schedule='constant_cosine',
                                   decay_start_fraction=0.5), 100)
  assert float(held(49)) == 1.0 and float(held(75)) == pytest.approx(0.5, abs=1e-3)


def test_weight_decay_skips_biases_and_norms():
  params = {'dense': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)},
            'norm': {'scale': jnp.ones(4)}}
  assert decay_mask(params) == {'dense': {'kernel': True, 'bias': False}, 'norm': {'scale': False}}
  tx, _ = make_optimizer(_opt_config(learning_rate=0.1, warmup_steps=0, schedule='constant',
                                     weight_decay=0.5, clip_norm=0.0), 10)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(new['dense']['kernel'][0, 0]) == pytest.approx(1 - 0.1 * 0.5)
  np.testing.assert_array_equal(new['dense']['bias'], params['dense']['bias'])
  np.testing.assert_array_equal(new['norm']['scale'], params['norm']['scale'])


@pytest.mark.parametrize('name', ['adamw', 'lamb'])
def test_optimizers_clip_the_global_norm(name):
  params = {'w': jnp.ones((4, 4))}
  tx, _ = make_optimizer(_opt_config(name=name, learning_rate=1e-3, b1=0.9, clip_norm=1.0), 100)
  _, state = tx.update({'w': jnp.full((4, 4), 1e6)}, tx.init(params), params)
  # The first moment sees the clipped gradient: global norm 1 over 16 equal entries.
  mu = optax.tree_utils.tree_get(state, 'mu')['w']
  np.testing.assert_allclose(mu, (1 - 0.9) * 0.25, rtol=1e-5)
  with pytest.raises(UserError, match='Unknown optimizer'):
    make_optimizer(_opt_config(name='sgdx'), 10)
