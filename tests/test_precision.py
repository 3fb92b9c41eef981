"""Mixed precision, loss scaling, rematerialisation and gradient accumulation.

One small digits Perceiver throughout; each configuration's train step is compiled once
and shared by the tests that need it (compiling dominates the cost of this file).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from configs import digits
from perceiver_jax import checkpoint as ckpt
from perceiver_jax import precision
from perceiver_jax import sharding as shd
from perceiver_jax import evaluator, trainer
from perceiver_jax.data import pipeline
from perceiver_jax.errors import UserError
from perceiver_jax.model.build import build_model
from perceiver_jax.run import Run
from perceiver_jax.validate import validate_config
from tests.helpers import prepared_data_dir, set_dotted, xla_default_optimisations

NUM_STEPS = 200  # convergence runs
SMALL = {
    'model.preprocessor.num_channels': 32,
    'model.preprocessor.position_encoding.num_bands': 4,
    'model.encoder.num_latents': 16,
    'model.encoder.num_latent_channels': 32,
    'model.encoder.num_blocks': 1,
    'model.encoder.num_self_attends_per_block': 1,
    'model.encoder.cross_attend_every_block': False,
    'model.encoder.num_self_attend_heads': 2,
    'model.encoder.dropout_prob': 0.0,
    'train.batch_size': 32,
    'train.num_steps': NUM_STEPS,
    'optimizer.learning_rate': 3e-3,
    'optimizer.warmup_steps': 20,
    # float16: start far too high so the scaler must back off, and let it grow again.
    'train.loss_scale_init': 2.0**20,
    'train.loss_scale_period': 50,
}


def small_config(data_dir, **overrides):
  return set_dotted(digits.get_config(), {**SMALL, 'data.data_dir': data_dir, **overrides})


def single_device_mesh():
  return shd.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, devices=jax.devices()[:1])


def copy_tree(tree):
  return jax.tree.map(jnp.copy, tree)


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory, 'digits')


@pytest.fixture(scope='module')
def batches(data_dir):
  """The first NUM_STEPS training batches (numpy), the same for every run."""
  config = small_config(data_dir)
  it = pipeline.make_train_iterator(config.data, global_batch_size=32, seed=0)
  return [next(it) for _ in range(NUM_STEPS)]


class Setup:
  """A config's initial state and compiled train step on a mesh.

  `like` (another Setup of the same model and optimizer) lends its initial weights, placed
  on this mesh: the same starting point, without compiling another initialisation.
  """

  def __init__(self, config, mesh, like=None):
    self.config, self.mesh = config, mesh
    self.input_shape = tuple(pipeline.dataset_info(config.data).input_shape)
    run = Run.from_input_shape(config, self.input_shape, mesh)
    self.shardings, self.spec, self.abstract = run.state_shardings, run.model, run.abstract_state()
    if like is None:
      self.initial = run.init_state()
    else:
      self.initial = jax.device_put(like.initial.replace(
          loss_scale=precision.make_loss_scale(config)), self.shardings)
    self.train_run = run
    self.step = trainer.make_train_step(run)

  def fresh_state(self):
    return copy_tree(self.initial)  # the step donates its input

  def run(self, state, host_batches):
    """Steps through `host_batches`; returns (state, list of metric dicts)."""
    history = []
    for batch in host_batches:
      state, metrics = self.step(state, pipeline.to_global(batch,
                                                           shd.batch_sharding(self.mesh)))
      history.append(metrics)
    return state, [{k: float(v) for k, v in m.items()} for m in jax.device_get(history)]

  def evaluate(self, state):
    eval_step = evaluator.make_eval_step(self.train_run)
    eval_batches = pipeline.make_eval_iterator(self.config.data, 'test', global_batch_size=360)
    return evaluator.evaluate_split(
        eval_step, state.params, state.model_state,
        (pipeline.to_global(b, shd.batch_sharding(self.mesh)) for b in eval_batches))


@pytest.fixture(scope='module')
def trained(data_dir, batches):
  """dtype -> (Setup, final state, per-step metrics, eval metrics), built on first use."""
  cache = {}

  def get(dtype):
    if dtype not in cache:
      # float16 initialises its own state (with its loss scale); bfloat16 starts from float32's.
      like = get('float32')[0] if dtype == 'bfloat16' else None
      # The convergence runs compile with XLA's default optimisations, as when the margins
      # below were set: 200 half-precision steps move with float32 rounding (with the tests'
      # jax_disable_most_optimizations, tests/conftest.py, bfloat16 ends at 94.4% accuracy
      # instead of 92.2%, float16 at 92.2% instead of 89.7%). The other tests here compare
      # programs compiled alike.
      with xla_default_optimisations():
        setup = Setup(small_config(data_dir, **{'model.dtype': dtype}), single_device_mesh(),
                      like)
        state, history = setup.run(setup.fresh_state(), batches)
        cache[dtype] = (setup, state, history, setup.evaluate(state))
    return cache[dtype]
  return get


# ------------------------------------------------------------------------------------------
# Config: names and divisibility are one clear sentence, before anything is built.
# ------------------------------------------------------------------------------------------

def test_bad_precision_fields_are_one_clear_sentence(data_dir):
  cases = [({'model.dtype': 'fp16'}, "config.model.dtype='fp16' is not a compute dtype; use "
                                     "one of float32, bfloat16, float16"),
           ({'model.encoder.remat': 'some'}, "config.model.encoder: remat='some' is unknown; "
                                             "use one of 'none', 'full', 'dots_saveable'."),
           ({'train.grad_accum_steps': 0}, 'config.train.grad_accum_steps must be a positive int')]
  for overrides, message in cases:
    with pytest.raises(UserError, match=message.replace('(', r'\(')):
      config = small_config(data_dir, **overrides)
      validate_config(config)
      Run.create(config)  # the abstract build: the constructors' own checks
  mesh = shd.make_mesh({'data': 4, 'fsdp': 2, 'tensor': 1})
  config = small_config(data_dir, **{'train.batch_size': 24, 'train.grad_accum_steps': 2})
  with pytest.raises(UserError, match='batch_size=24 does not split into train.grad_accum_steps'
                                      '=2 micro-batches over the data-parallel size 8 .* use a '
                                      'multiple of 16'):
    validate_config(config, mesh=mesh)
  validate_config(small_config(data_dir, **{'train.grad_accum_steps': 2}), mesh=mesh)


# ------------------------------------------------------------------------------------------
# Mixed precision: float32 parameters, half-precision matmuls, float32 outputs.
# ------------------------------------------------------------------------------------------

def _dot_operand_dtypes(jaxpr) -> set:
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      found.add(tuple(str(v.aval.dtype) for v in eqn.invars))
    for param in eqn.params.values():
      inner = getattr(param, 'jaxpr', param)
      if hasattr(inner, 'eqns'):
        found |= _dot_operand_dtypes(inner)
  return found


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_half_precision_model_keeps_float32_params_and_outputs(data_dir, dtype):
  config = small_config(data_dir, **{'model.dtype': dtype})
  model = build_model(config.model, input_shape=(8, 8, 1), rngs=nnx.Rngs(params=0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('float32')}
  jaxpr = jax.make_jaxpr(lambda p, x: nnx.merge(graphdef, p, rest)(x))(
      params, jnp.ones((2, 8, 8, 1)))
  # Every matmul (projections, MLPs, attention) runs in the compute dtype...
  assert _dot_operand_dtypes(jaxpr.jaxpr) == {(dtype, dtype)}
  # ...and the logits come back float32 for the loss.
  assert jaxpr.out_avals[0].dtype == jnp.float32


def test_bfloat16_training_converges_like_float32(trained):
  _, state32, history32, eval32 = trained('float32')
  _, state16, history16, eval16 = trained('bfloat16')
  print(f'digits after {NUM_STEPS} steps: float32 {eval32}, bfloat16 {eval16}')
  assert eval32['accuracy'] > 0.85  # chance is 0.1
  assert eval16['accuracy'] > 0.85
  assert abs(eval16['accuracy'] - eval32['accuracy']) <= 0.03
  assert abs(eval16['loss'] - eval32['loss']) <= 0.1
  assert history16[-1]['loss'] < 0.3 * history16[0]['loss']
  # Parameters and optimizer moments stay float32.
  for tree in (state16.params, state16.opt_state):
    assert {x.dtype for x in jax.tree.leaves(tree) if x.ndim} == {jnp.dtype('float32')}
  assert state16.loss_scale is None and state32.loss_scale is None


# ------------------------------------------------------------------------------------------
# float16 with dynamic loss scaling.
# ------------------------------------------------------------------------------------------

def test_loss_scale_halves_on_overflow_and_doubles_after_period():
  scale = precision.LossScale(scale=jnp.float32(8.0), good_steps=jnp.int32(0), period=3)
  trace = []
  for finite in (True, True, True, True, False, True):
    scale = scale.adjust(jnp.array(finite))
    trace.append((float(scale.scale), int(scale.good_steps)))
  assert trace == [(8, 1), (8, 2), (16, 0), (16, 1), (8, 0), (8, 1)]
  tiny = precision.LossScale(scale=jnp.float32(1.0), good_steps=jnp.int32(2), period=3)
  assert float(tiny.adjust(jnp.array(False)).scale) == 1.0  # never below 1


def test_float16_training_adapts_its_scale_and_converges(trained):
  _, state, history, result = trained('float16')
  _, _, _, eval32 = trained('float32')
  scales = [m['loss_scale'] for m in history]
  skipped = [m['skipped'] for m in history]
  print(f'float16: {result}; loss scale {scales[0]:g} -> {scales[-1]:g}, '
        f'{int(sum(skipped))} of {len(skipped)} steps skipped')
  assert all(math.isfinite(m['loss']) for m in history)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(host(state.params)))
  # Started at 2^20, where float16 gradients overflow: the first steps are skipped and the
  # scale halves until they fit; 50 finite steps in a row then double it again.
  assert skipped[0] == 1.0 and scales[0] == 2.0**19
  assert min(scales) < 2.0**19
  assert any(b > a for a, b in zip(scales, scales[1:]))
  assert sum(skipped) < 0.2 * len(skipped)
  assert result['accuracy'] > 0.85
  assert abs(result['accuracy'] - eval32['accuracy']) <= 0.03


def with_loss_scale(state, scale, good_steps):
  """`state` with its loss scale set, placed like the old one (so nothing recompiles)."""
  old = state.loss_scale
  new = old.replace(scale=jnp.float32(scale), good_steps=jnp.int32(good_steps))
  return state.replace(loss_scale=jax.device_put(new, jax.tree.map(lambda x: x.sharding, old)))


def test_float16_step_with_overflowing_gradients_changes_only_the_scale(trained, batches):
  setup, final, _, _ = trained('float16')
  state = with_loss_scale(copy_tree(final), 2.0**40, 7)
  before = host(state)
  state, (metrics,) = setup.run(state, batches[:1])
  after = host(state)
  assert metrics['skipped'] == 1.0 and not math.isfinite(metrics['grad_norm'])
  assert math.isfinite(metrics['loss'])
  jax.tree.map(np.testing.assert_array_equal, (after.params, after.opt_state),
               (before.params, before.opt_state))
  assert float(after.loss_scale.scale) == 2.0**39 and int(after.loss_scale.good_steps) == 0
  assert int(after.step) == int(before.step) + 1
  # At a sane scale the same batch updates the weights again.
  state, (metrics,) = setup.run(with_loss_scale(state, 2.0**10, 0), batches[:1])
  assert metrics['skipped'] == 0.0 and int(state.loss_scale.good_steps) == 1
  assert not np.array_equal(host(state.params['encoder']['z_pos_enc']['pos_embs']),
                            after.params['encoder']['z_pos_enc']['pos_embs'])


def test_float16_checkpoint_resumes_exactly(trained, batches, tmp_path):
  setup, _, _, _ = trained('float16')
  steps_before, steps_after = batches[:4], batches[4:8]
  state, _ = setup.run(setup.fresh_state(), steps_before)
  manager = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(
      enable_async_checkpointing=False))
  ckpt.save(manager, 4, state)
  saved_scale = host(state.loss_scale)
  straight, history = setup.run(state, steps_after)

  restored = ckpt.restore(manager, 4, setup.abstract)
  manager.close()
  # The scale was mid-adjustment (the first steps overflow at 2^20); it comes back as saved.
  assert float(restored.loss_scale.scale) == float(saved_scale.scale) < 2.0**20
  assert int(restored.loss_scale.good_steps) == int(saved_scale.good_steps)
  resumed, resumed_history = setup.run(restored, steps_after)
  assert resumed_history == history
  jax.tree.map(np.testing.assert_array_equal, host(resumed), host(straight))


# ------------------------------------------------------------------------------------------
# Rematerialisation: same gradients, fewer saved activations.
# ------------------------------------------------------------------------------------------

def _remat_model_config(data_dir, remat, num_self_attends, **overrides):
  return small_config(data_dir, **{'model.encoder.remat': remat,
                                   'model.encoder.num_latents': 8,
                                   'model.encoder.num_self_attends_per_block': num_self_attends,
                                   **overrides}).model


def _loss_fn(model_config, x, labels):
  """(params, loss(params)): the model on `x`, dropout on with a fixed dropout key."""
  model = build_model(model_config, input_shape=x.shape[1:], rngs=nnx.Rngs(params=0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    logits = nnx.merge(graphdef, params, rest)(
        x, deterministic=False, rngs=nnx.Rngs(dropout=jax.random.key(3)))
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
  return params, loss


def test_remat_policies_give_the_same_gradients(data_dir):
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
  labels = jnp.arange(8) % 10
  grads = {}
  for remat in ('none', 'full', 'dots_saveable'):
    # Dropout on: the recomputed forward must draw the same masks.
    config = _remat_model_config(data_dir, remat, 1, **{'model.encoder.dropout_prob': 0.2})
    params, loss = _loss_fn(config, x, labels)
    grads[remat] = host(jax.jit(jax.value_and_grad(loss))(params))
  want_loss, want = grads['none']
  # Relative to the whole gradient: some leaves' true gradient is 0 (e.g. key biases, to
  # which softmax is invariant) and holds only rounding noise.
  scale = np.sqrt(sum(np.sum(w**2) for w in jax.tree.leaves(want)))
  for remat in ('full', 'dots_saveable'):
    got_loss, got = grads[remat]
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    error = max(np.linalg.norm(g - w) for g, w in zip(jax.tree.leaves(got),
                                                      jax.tree.leaves(want)))
    assert error <= 1e-6 * scale, remat


def _saved_residual_bytes(model_config, batch_shape) -> int:
  """Bytes the forward pass keeps for the backward pass (what remat trades for FLOPs)."""
  abstract = nnx.eval_shape(lambda: build_model(model_config, input_shape=batch_shape[1:],
                                                rngs=nnx.Rngs(params=0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  loss = lambda p: nnx.merge(graphdef, p, rest)(jnp.zeros(batch_shape)).sum()
  residuals = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params)
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(residuals)) - param_bytes


def test_remat_keeps_fewer_activations_for_a_deep_encoder(data_dir):
  # XLA:CPU drops the optimisation barriers remat relies on and re-fuses the recomputation
  # (jax-ml/jax#19822), so compiled temp memory on CPU is identical with and without it;
  # what the program saves for the backward pass is measured at the JAX level instead.
  sizes = {}
  for remat in ('none', 'full', 'dots_saveable'):
    for depth in (2, 6):
      config = _remat_model_config(data_dir, remat, depth, **{
          'model.encoder.num_latents': 64, 'model.encoder.num_latent_channels': 64})
      sizes[remat, depth] = _saved_residual_bytes(config, (16, 8, 8, 1))
  print({k: f'{v / 2**20:.2f} MiB' for k, v in sizes.items()})
  per_block = {r: (sizes[r, 6] - sizes[r, 2]) / 4 for r in ('none', 'full', 'dots_saveable')}
  # 'full' keeps only each block's input ([16, 64, 64] float32 = 256 KiB) and its params' use.
  assert per_block['full'] <= 1.1 * 16 * 64 * 64 * 4
  assert per_block['full'] < per_block['dots_saveable'] < per_block['none'] / 2
  assert sizes['full', 6] < sizes['dots_saveable', 6] < sizes['none', 6] / 2


# ------------------------------------------------------------------------------------------
# Gradient accumulation: k micro-batches of b == one batch of k*b.
# ------------------------------------------------------------------------------------------

def _relative_error(got, want) -> float:
  """|got - want| / |want| over all leaves together.

  Not leaf by leaf: a leaf whose true gradient is 0 (key biases: softmax ignores them)
  gets rounding noise that Adam normalises to a full-size step, different in each run.
  """
  pairs = list(zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  diff = sum(np.sum((np.float64(g) - w) ** 2) for g, w in pairs)
  return float(np.sqrt(diff / sum(np.sum(np.float64(w) ** 2) for _, w in pairs)))


@pytest.mark.parametrize('accum,mesh_axes', [(4, None), (2, {'data': 4, 'fsdp': 2, 'tensor': 1})])
def test_accumulated_micro_batches_equal_one_big_batch(trained, data_dir, batches, accum,
                                                       mesh_axes):
  reference, *_ = trained('float32')  # one batch of 32 per update, one device
  want_state, want = reference.run(reference.fresh_state(), batches[:3])
  mesh = shd.make_mesh(mesh_axes) if mesh_axes else single_device_mesh()
  with xla_default_optimisations():  # compiled like the reference (trained above)
    setup = Setup(small_config(data_dir, **{'train.grad_accum_steps': accum}), mesh, reference)
    got_state, got = setup.run(setup.fresh_state(), batches[:3])
  for g, w in zip(got, want):
    assert g['loss'] == pytest.approx(w['loss'], rel=1e-5)
    assert g['accuracy'] == w['accuracy']
    assert g['grad_norm'] == pytest.approx(w['grad_norm'], rel=1e-5)
  error = _relative_error(host(got_state.params), host(want_state.params))
  print(f'grad_accum_steps={accum} mesh={mesh_axes}: params rel error {error:.2e}')
  assert error <= 1e-5
  assert _relative_error(host(got_state.opt_state), host(want_state.opt_state)) <= 1e-5
