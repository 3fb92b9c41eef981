"""BatchNorm of the conv stem under training: the running statistics train_step carries in
model_state, through gradient accumulation, a sharded mesh, a checkpoint and eval.

The model is configs/imagenet_perceiver_io.py:runlocal,pos=conv (the trained config with
BatchNorm) shrunk to 16 x 16 images and a 4-channel stem.

Gradient accumulation: train_step carries model_state through its micro-batch scan, so with
train.grad_accum_steps = k the running averages take k BatchNorm updates per optimizer step,
one per micro-batch in order (micro-batch j = rows j, j+k, ..., see steps.split_micro_batches),
each with that micro-batch's statistics under the step's (not yet updated) parameters. That is
what "agree" means here; it is not one update with the whole batch's statistics (the old
averages keep momentum^k, not momentum), and the tests check both.
"""

import jax
import numpy as np
import pytest

from configs import imagenet_perceiver_io
from perceiver_jax import checkpoint as ckpt
from perceiver_jax import evaluator, trainer
from perceiver_jax import sharding as shd
from perceiver_jax.run import Run

IMAGE = (16, 16, 3)
BATCH = 32  # divides by 4 micro-batches x 8 data-parallel devices
NUM_STEPS = 2
MOMENTUM = 0.9  # flax momentum of the stem's BatchNorm (Haiku decay_rate)
KERNEL = ('preprocessor', 'convnet', 'layers', 0, 'conv', 'kernel')
STATS = ('preprocessor', 'convnet', 'layers', 0, 'batchnorm')
ONE_DEVICE = {'data': 1, 'fsdp': 1, 'tensor': 1}
# The BatchNorm scale/bias and the conv's output channels (4) split 4 ways over fsdp.
SHARDED = {'data': 2, 'fsdp': 4, 'tensor': 1}


def _config(grad_accum_steps=1):
  config = imagenet_perceiver_io.get_config('runlocal,pos=conv')
  prep = config.model.preprocessor
  prep.num_channels = 4
  prep.position_encoding.num_bands = 2
  prep.position_encoding.max_resolution = (IMAGE[0] // 4, IMAGE[1] // 4)
  config.model.encoder.num_latents = 8
  config.model.encoder.num_latent_channels = 16
  config.model.encoder.num_blocks = 1
  config.model.decoder.num_query_channels = 16
  config.train.batch_size = BATCH
  config.train.grad_accum_steps = grad_accum_steps
  config.optimizer.learning_rate = 1e-2  # the kernel moves between steps
  return config


def _mesh(sizes):
  devices = jax.devices()[:1] if sizes == ONE_DEVICE else None
  return shd.make_mesh(sizes, devices=devices)


def _batches(num, batch=BATCH, seed=0):
  """Image-like batches (positive pixels) whose examples differ in contrast by row, so
  micro-batches and contiguous slices of a batch have different statistics."""
  rng = np.random.default_rng(seed)
  contrast = (1 + np.arange(batch) / batch)[:, None, None, None]
  return [{'inputs': (rng.uniform(size=(batch,) + IMAGE) * contrast).astype(np.float32),
           'label': rng.integers(0, 10, batch).astype(np.int32)} for _ in range(num)]


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _stats(model_state) -> tuple[np.ndarray, np.ndarray]:
  stats = _get(model_state, STATS)
  return np.array(stats['mean']), np.array(stats['var'])


def _conv_same(x, kernel):
  """The stem's 7x7 stride-2 conv with TF SAME padding, in float64 numpy:
  x [batch, H, W, C], kernel [7, 7, C, O] -> [batch, ceil(H/2), ceil(W/2), O]."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  size, stride = kernel.shape[0], 2
  out = [-(-n // stride) for n in x.shape[1:3]]
  pads = [max((o - 1) * stride + size - n, 0) for o, n in zip(out, x.shape[1:3])]
  x = np.pad(x, [(0, 0), (pads[0] // 2, pads[0] - pads[0] // 2),
                 (pads[1] // 2, pads[1] - pads[1] // 2), (0, 0)])
  y = 0
  for i in range(size):
    for j in range(size):
      window = x[:, i:i + stride * out[0]:stride, j:j + stride * out[1]:stride]
      y = y + window @ kernel[i, j]
  return y


def _expected_stats(mean, var, kernel, inputs, num_micro):
  """The running averages after one train step: the EMA applied once per micro-batch
  (rows j::num_micro), over that micro-batch's biased batch statistics."""
  for j in range(num_micro):
    y = _conv_same(inputs[j::num_micro], kernel)
    mean = MOMENTUM * mean + (1 - MOMENTUM) * y.mean(axis=(0, 1, 2))
    var = MOMENTUM * var + (1 - MOMENTUM) * y.var(axis=(0, 1, 2))
  return mean, var


@pytest.fixture(scope='module')
def initial_state():
  """The initial train state on the host: every run starts from it (one init compile)."""
  state = Run.from_input_shape(_config(), IMAGE, _mesh(ONE_DEVICE)).init_state()
  return jax.device_get(state)


def _train(initial_state, mesh_sizes, grad_accum_steps):
  """NUM_STEPS train steps -> (config, mesh, final state, per-step records of the kernel
  before the step, the batch's inputs and the running statistics after it)."""
  config = _config(grad_accum_steps)
  mesh = _mesh(mesh_sizes)
  run = Run.from_input_shape(config, IMAGE, mesh)
  state = jax.device_put(initial_state, run.state_shardings)
  train_step = trainer.make_train_step(run)
  records = [{'stats': _stats(state.model_state)}]
  for batch in _batches(NUM_STEPS):
    kernel = np.array(_get(state.params, KERNEL))  # the state is donated to the step
    state, _ = train_step(state, jax.device_put(batch, shd.batch_sharding(mesh)))
    records.append({'kernel': kernel, 'inputs': batch['inputs'],
                    'stats': _stats(state.model_state)})
  return config, mesh, state, records


@pytest.fixture(scope='module')
def sharded_run(initial_state):
  """Trained on data=2 x fsdp=4 with 4 micro-batches per step."""
  return _train(initial_state, SHARDED, grad_accum_steps=4)


@pytest.mark.parametrize('case', ['one device, whole batch', 'data=2 x fsdp=4, 4 micro-batches'])
def test_train_step_updates_running_stats_as_the_ema_of_micro_batch_statistics(
    case, initial_state, request):
  if case == 'one device, whole batch':
    num_micro = 1
    *_, records = _train(initial_state, ONE_DEVICE, num_micro)
  else:
    num_micro = 4
    *_, records = request.getfixturevalue('sharded_run')
  initial_mean, initial_var = records[0]['stats']
  np.testing.assert_array_equal(initial_mean, 0.0)
  np.testing.assert_array_equal(initial_var, 1.0)
  for step, (before, after) in enumerate(zip(records, records[1:]), start=1):
    mean, var = _expected_stats(*before['stats'], after['kernel'], after['inputs'], num_micro)
    got_mean, got_var = after['stats']
    # float32 conv sums of 147 products against a float64 reference.
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-6, err_msg=f'step {step}')
    np.testing.assert_allclose(got_var, var, rtol=1e-5, atol=1e-6, err_msg=f'step {step}')
    if num_micro > 1:
      # Not one update with the whole batch's statistics (which k = 1 does).
      whole_mean, whole_var = _expected_stats(*before['stats'], after['kernel'],
                                              after['inputs'], 1)
      assert not np.allclose(got_mean, whole_mean, rtol=1e-3)
      assert not np.allclose(got_var, whole_var, rtol=1e-3)


def test_running_stats_are_saved_and_restored_onto_another_mesh(sharded_run, tmp_path):
  config, _, state, records = sharded_run
  trained_mean, trained_var = records[-1]['stats']
  assert not np.allclose(trained_mean, 0.0) and not np.allclose(trained_var, 1.0)
  manager = ckpt.make_manager(str(tmp_path), config.checkpoint)
  ckpt.save(manager, NUM_STEPS, state, force=True)
  manager.wait_until_finished()
  manager.close()

  # Resume (the whole train state) and eval (weights only) restore it on one device.
  mesh = _mesh(ONE_DEVICE)
  abstract = Run.from_input_shape(config, IMAGE, mesh).abstract_state()
  manager = ckpt.make_manager(str(tmp_path), read_only=True)
  resumed = ckpt.restore(manager, NUM_STEPS, abstract)
  _, model_state = ckpt.restore_weights(ckpt.state_path(manager, NUM_STEPS), abstract.params,
                                        abstract.model_state)
  manager.close()
  for restored in (resumed.model_state, model_state):
    mean, var = _stats(restored)
    np.testing.assert_array_equal(mean, trained_mean)
    np.testing.assert_array_equal(var, trained_var)
    stats = _get(restored, STATS)
    assert all(len(a.sharding.device_set) == 1 for a in stats.values())


def _eval_fn(config, mesh):
  """The eval step on `mesh` -> fn(params, model_state, batch) -> summed metrics, with
  the state and the batch placed as train.py and eval.py place them."""
  run = Run.from_input_shape(config, IMAGE, mesh, training=False)
  eval_step = evaluator.make_eval_step(run)

  def evaluate(params, model_state, batch):
    sums = eval_step(jax.device_put(params, run.params_shardings),
                     jax.device_put(model_state, run.model_state_shardings),
                     jax.device_put(batch, shd.batch_sharding(mesh)))
    return {k: float(v) for k, v in jax.device_get(sums).items()}
  return evaluate


def test_eval_uses_the_running_stats_on_a_sharded_mesh_like_one_device(sharded_run):
  config, mesh, state, _ = sharded_run
  batch = _batches(1, batch=16, seed=1)[0]
  batch['mask'] = (np.arange(16) < 13).astype(np.float32)  # eval pads its last batch
  params, model_state = jax.device_get((state.params, state.model_state))
  eval_sharded = _eval_fn(config, mesh)
  sharded = eval_sharded(params, model_state, batch)
  single = _eval_fn(config, _mesh(ONE_DEVICE))(params, model_state, batch)
  assert sharded['count'] == single['count'] == 13
  # Summed losses of 13 examples: float32 reductions in another order, nothing more.
  assert sharded['loss'] == pytest.approx(single['loss'], rel=1e-5)
  assert sharded['correct'] == single['correct']

  # Other running statistics (the batch is the same) give another eval loss.
  for name, change in (('mean', lambda m: m + 0.5), ('var', lambda v: v * 4.0)):
    moved = jax.tree.map(lambda x: x, model_state)
    stats = _get(moved, STATS)
    stats[name] = change(stats[name])
    other = eval_sharded(params, moved, batch)
    assert abs(other['loss'] - sharded['loss']) > 1e-3 * abs(sharded['loss']), name
