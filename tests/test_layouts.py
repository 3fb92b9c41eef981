"""Sharding layouts on 8 fake CPU devices: data parallel, FSDP, tensor parallel, and mixes.

Each layout trains the same 3 steps as one device (same losses to 1e-5, same final
parameters to float32 rounding: tests/helpers.assert_params_close), places every
parameter's shard as its logical names ask, and keeps activations batch-sharded (no
all-gather of activations over the batch in the compiled step).
"""

import re

import jax
import numpy as np
import pytest

from perceiver_jax import sharding as shd
from perceiver_jax import trainer
from perceiver_jax.errors import UserError
from perceiver_jax.model.partitioning import constrain, logical_sharding
from perceiver_jax.optim import make_optimizer
from perceiver_jax.run import Run
from tests.helpers import assert_params_close, tiny_mnist1d_config

# 56 = 8 x 7: the per-device batch (7 with fsdp=8, 14 with data x fsdp = 4) is a factor no
# model dim has, so an all-gather over the batch shows up as a multiple of it.
BATCH = 56
NUM_STEPS = 3
INPUT_SHAPE = (40, 1)

# Per-device shard shape of a few parameters in each layout. The TINY model: 32 latent
# channels, 2 self-attend heads, MLP hidden 32, 1 cross-attend head over 25 input channels
# (16 conv + 9 Fourier), 8 latents, 10 classes.
PARAMS = {
    'encoder/self_attends/0/mlp/dense_in/kernel': (32, 32),       # (embed, mlp)
    'encoder/self_attends/0/mlp/dense_out/kernel': (32, 32),      # (mlp, embed)
    'encoder/self_attends/0/attention/query/kernel': (32, 32),    # (embed, heads)
    'encoder/self_attends/0/attention/value/bias': (32,),         # (heads,)
    'encoder/self_attends/0/attention/output/kernel': (32, 32),   # (heads, embed)
    'encoder/cross_attend/attention/query/kernel': (32, 25),      # (embed, head_dim)
    'encoder/cross_attend/attention/key/kernel': (25, 25),        # (input_channels, head_dim)
    'decoder/decoder/output/kernel': (32, 10),                    # (embed, classes)
    'encoder/z_pos_enc/pos_embs': (8, 32),                        # (latents, embed)
}
LAYOUTS = {
    # name: (layout, config.mesh, expected shard shape of each of PARAMS)
    'dp=8': ('dp', {}, list(PARAMS.values())),
    'fsdp=8': ('fsdp', {}, [(4, 32), (32, 4), (4, 32), (32,), (32, 4), (4, 25),
                            (25, 25),  # 25 channels do not split 8 ways: replicated
                            (4, 10), (8, 4)]),
    'tensor=8': ('tp', {}, [(32, 4), (4, 32), (32, 4), (4,), (4, 32), (32, 25), (25, 25),
                            (32, 10),  # 10 classes do not split 8 ways: replicated
                            (8, 32)]),
    'fsdp=4 x tensor=2': ('fsdp_tp', {'tensor': 2},
                          [(8, 16), (16, 8), (8, 16), (16,), (16, 8), (8, 25),
                           (25, 25), (8, 5), (8, 8)]),
    'dp=2 x fsdp=2 x tensor=2': ('dp_fsdp_tp', {'fsdp': 2, 'tensor': 2},
                                 [(16, 16), (16, 16), (16, 16), (16,), (16, 16),
                                  (16, 25),  # one head: its channels stay whole
                                  (25, 25), (16, 5), (8, 16)]),
}


def _config(layout='', **mesh):
  config = tiny_mnist1d_config(**{'train.batch_size': BATCH, 'model.encoder.num_blocks': 1})
  config.sharding.layout = layout
  config.mesh.update(mesh)
  return config


def _batches():
  rng = np.random.default_rng(0)
  return [{'inputs': rng.normal(size=(BATCH,) + INPUT_SHAPE).astype(np.float32),
           'label': rng.integers(0, 10, BATCH).astype(np.int32)} for _ in range(NUM_STEPS)]


def _train(config, mesh, initial):
  """(losses of NUM_STEPS steps, final state, compiled step's HLO text), starting from
  `initial` (a host copy of a state) placed as this mesh shards it."""
  run = Run.from_input_shape(config, INPUT_SHAPE, mesh)
  state = jax.device_put(initial, run.state_shardings)  # one initialisation for all layouts
  train_step = trainer.make_train_step(run)
  batches = [jax.device_put(b, shd.batch_sharding(mesh)) for b in _batches()]
  compiled = train_step.lower(state, batches[0]).compile()
  losses = []
  for batch in batches:
    state, metrics = compiled(state, batch)
    losses.append(float(metrics['loss']))
  return np.array(losses), state, compiled.as_text()


def _by_name(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope='module')
def single_device_run():
  """The reference of every layout: (initial state, losses, final parameters) of one
  device, on the host, and the summed learning rate of its steps.

  Sharded initialisation itself is compared with one device in tests/test_training.py.
  """
  config = _config()
  mesh = shd.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, devices=jax.devices()[:1])
  initial = Run.from_input_shape(config, INPUT_SHAPE, mesh).init_state()
  initial = jax.device_get(initial)
  losses, state, _ = _train(config, mesh, initial)
  assert losses[-1] < losses[0]  # it trains, so equal losses say something
  _, schedule = make_optimizer(config.optimizer, int(config.train.num_steps))
  lr_sum = sum(float(schedule(step)) for step in range(NUM_STEPS))
  return initial, losses, jax.device_get(state.params), lr_sum


@pytest.mark.parametrize('name', list(LAYOUTS))
def test_layout_matches_one_device_and_shards_as_named(name, single_device_run):
  layout, mesh_sizes, want_shards = LAYOUTS[name]
  config = _config(layout, **mesh_sizes)
  mesh = shd.mesh_from_config(config)
  assert mesh.size == 8
  initial, want_losses, want_params, lr_sum = single_device_run
  losses, state, hlo = _train(config, mesh, initial)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  # Every parameter, not only the loss: an update wrong on some shards shows here first.
  assert_params_close(jax.device_get(state.params), want_params, lr_sum)

  params = _by_name(state.params)
  mu = _by_name(state.opt_state)  # AdamW moments: sharded like their parameters
  for (path, shape), want in zip(PARAMS.items(), want_shards):
    leaf = params[path]
    assert leaf.shape == shape, path
    assert leaf.sharding.shard_shape(leaf.shape) == want, (name, path, leaf.sharding.spec)
    moments = [v for k, v in mu.items() if k.endswith(path)]
    assert len(moments) == 2 and all(m.sharding == leaf.sharding for m in moments), path

  # Activations stay split over the batch: no all-gather yields a batch of more than one
  # device's rows (without the constraints XLA gathers decoder queries and logits).
  local_batch = BATCH // shd.data_parallel_size(mesh)
  # Result shapes (one, or a tuple of them) of every all-gather instruction.
  results = re.findall(r' = ([^=\n]*?) all-gather(?:-start)?\(', hlo)
  gathered = [dims for r in results for dims in re.findall(r'\[([0-9,]*)\]', r)]
  dims = {int(d) for shape in gathered for d in shape.split(',') if d}
  assert not {d for d in dims if d > local_batch and d % local_batch == 0}, (name, gathered)
  if mesh.shape['fsdp'] > 1:
    assert gathered  # FSDP gathers the weights it needs


def test_fsdp_holds_a_fraction_of_the_state_per_device():
  def per_device_fraction(layout, **mesh_sizes):
    config = _config(layout, **mesh_sizes)
    mesh = shd.mesh_from_config(config)
    run = Run.from_input_shape(config, INPUT_SHAPE, mesh)
    abstract, shardings = run.abstract_train_state, run.state_shardings
    total = local = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract.params), jax.tree.leaves(shardings.params)):
      total += np.prod(leaf.shape)
      local += np.prod(sharding.shard_shape(leaf.shape))
    return local / total
  assert per_device_fraction('dp') == 1.0
  # Only small or indivisible tensors (cross-attend k/v over 25 channels) stay whole.
  assert 0.125 < per_device_fraction('fsdp') < 0.25
  assert 0.25 < per_device_fraction('dp_fsdp_tp', fsdp=2, tensor=2) < 0.4


def test_layout_shortcut_writes_the_mesh():
  mesh = {'data': -1, 'fsdp': 1, 'tensor': 1}  # the default config.mesh
  assert shd.layout_mesh_config('', mesh) == mesh
  assert shd.layout_mesh_config('dp', mesh) == {'data': -1, 'fsdp': 1, 'tensor': 1}
  assert shd.layout_mesh_config('fsdp', mesh) == {'data': 1, 'fsdp': -1, 'tensor': 1}
  assert shd.layout_mesh_config('tp', mesh) == {'data': 1, 'fsdp': 1, 'tensor': -1}
  assert shd.layout_mesh_config('fsdp_tp', {**mesh, 'tensor': 2}) == {
      'data': 1, 'fsdp': -1, 'tensor': 2}
  assert shd.make_mesh(shd.layout_mesh_config('fsdp_tp', {**mesh, 'tensor': 2})).shape == {
      'data': 1, 'fsdp': 4, 'tensor': 2}
  with pytest.raises(UserError, match=r"needs the size of 'tensor'.*--config.mesh.tensor=2"):
    shd.layout_mesh_config('fsdp_tp', mesh)
  with pytest.raises(UserError, match=r"puts no devices on 'fsdp' but config.mesh.fsdp=2"):
    shd.layout_mesh_config('dp', {**mesh, 'fsdp': 2})
  with pytest.raises(UserError, match=r"layout='zero3' is unknown"):
    shd.layout_mesh_config('zero3', mesh)


def test_constrain_is_a_no_op_outside_a_step_and_maps_names_inside():
  x = jax.numpy.ones((8, 4, 6))
  names = ('batch', 'latents', 'act_embed')
  assert constrain(x, names) is x  # eager, no context: model unit tests are unaffected
  mesh = shd.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  rules = shd.rules_dict(_config().sharding.rules)

  @jax.jit
  def f(x):
    with logical_sharding(mesh, rules):
      return constrain(x, names) * 2, constrain(x, ('batch', 'length', 'act_mlp'))
  a, b = f(x)
  want = lambda *spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  assert a.sharding.is_equivalent_to(want(('data', 'fsdp'), None, None), 3)
  assert b.sharding.is_equivalent_to(want(('data', 'fsdp'), None, 'tensor'), 3)
  assert not a.sharding.is_equivalent_to(want(), 3)
  with pytest.raises(ValueError, match='2 names'):
    with logical_sharding(mesh, rules):
      constrain(x, ('batch', 'length'))
  with pytest.raises(TypeError, match='rules dict'):  # the config's list, not yet a dict
    with logical_sharding(mesh, _config().sharding.rules):
      pass
