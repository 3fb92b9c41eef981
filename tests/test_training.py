"""End-to-end training: sharded == single device, resumed == uninterrupted, eval == trainer."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from perceiver_jax import checkpoint as ckpt
from perceiver_jax import finetune, trainer
from perceiver_jax import sharding as shd
from perceiver_jax.data import pipeline
from perceiver_jax.metrics_log import read
from perceiver_jax.run import Run
from tests.helpers import TINY, flags_for, prepared_data_dir, run_main, tiny_mnist1d_config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory)


def _losses(config, mesh, num_steps=5):
  input_shape = pipeline.dataset_info(config.data).input_shape
  run = Run.from_input_shape(config, input_shape, mesh)
  state, train_step = run.init_state(), trainer.make_train_step(run)
  batches = pipeline.make_train_iterator(config.data, global_batch_size=config.train.batch_size,
                                         seed=config.seed)
  losses = []
  for _ in range(num_steps):
    batch = pipeline.to_global(next(batches), shd.batch_sharding(mesh))
    state, metrics = train_step(state, batch)
    losses.append(float(metrics['loss']))
  return np.array(losses), state


def test_sharded_run_matches_single_device(data_dir):
  assert jax.device_count() == 8
  config = tiny_mnist1d_config(**{'data.data_dir': data_dir})
  single = shd.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, devices=jax.devices()[:1])
  sharded = shd.make_mesh({'data': 4, 'fsdp': 2, 'tensor': 1})
  losses_1, _ = _losses(config, single)
  losses_8, state_8 = _losses(config, sharded)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  assert losses_1[-1] != losses_1[0]  # it trained
  # FSDP really shards: some parameter is split over the fsdp axis.
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(state_8.params)]
  assert any('fsdp' in jax.tree.leaves(tuple(s)) for s in specs)


def _restore_state(workdir, step):
  manager = ocp.CheckpointManager(ckpt.checkpoint_dir(workdir))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored['state']


@pytest.fixture(scope='module')
def straight_run(data_dir, tmp_path_factory):
  """6 steps straight through on a data=4 x fsdp=2 mesh, via train.py, keeping a moving
  average of the weights: evaluation, init_from and resume then all go through it."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  overrides = {**TINY, 'data.data_dir': data_dir, 'train.num_steps': 6,
               'checkpoint.every_steps': 3, 'mesh.data': 4, 'mesh.fsdp': 2,
               'optimizer.ema_decay': 0.99}
  run_main('train.py', ['--config=configs/mnist1d.py', f'--workdir={workdir}', *flags_for(overrides)])
  return workdir, overrides


def test_resumed_run_matches_uninterrupted(straight_run, tmp_path):
  straight, overrides = straight_run
  workdir = str(tmp_path / 'resumed')
  args = ['--config=configs/mnist1d.py', f'--workdir={workdir}',
          *flags_for({**overrides, 'train.max_steps_per_run': 3})]
  first = run_main('train.py', args)
  assert 'stopped_early' in first.stdout
  run_main('train.py', args)  # a new process: resumes from step 3
  want = _restore_state(straight, 6)
  got = _restore_state(workdir, 6)
  for item in ('params', 'ema_params'):  # the average resumes exactly too
    jax.tree.map(np.testing.assert_array_equal, got[item], want[item])
  losses = lambda w: [r['loss'] for r in read(os.path.join(w, 'metrics.jsonl')) if r['split'] == 'train']
  assert losses(workdir) == losses(straight)


def test_eval_reproduces_trainer_accuracy_on_another_mesh(straight_run):
  workdir, overrides = straight_run
  logged = [r for r in read(os.path.join(workdir, 'metrics.jsonl')) if r['split'] == 'eval'][-1]
  # Evaluate on a different mesh (8-way data parallel) than training used (data=4 x fsdp=2).
  eval_overrides = {**overrides, 'mesh.data': 8, 'mesh.fsdp': 1}
  run_main('eval.py', ['--config=configs/mnist1d.py', f'--workdir={workdir}',
                       *flags_for(eval_overrides)])
  with open(os.path.join(workdir, 'eval_6.json')) as f:
    result = json.load(f)
  assert result['step'] == 6 and result['num_examples'] == 1000
  # Both evaluated the moving average, which is not the last step's weights.
  saved = _restore_state(workdir, 6)
  assert not np.array_equal(*(_leaves_by_name(saved[k])['encoder/z_pos_enc/pos_embs']
                              for k in ('params', 'ema_params')))
  assert result['accuracy'] == pytest.approx(logged['accuracy'], abs=1e-6)
  assert result['loss'] == pytest.approx(logged['loss'], rel=1e-5)


def test_eval_without_checkpoint_is_one_clear_sentence(data_dir, tmp_path):
  proc = run_main('eval.py', ['--config=configs/mnist1d.py', f'--workdir={tmp_path}',
                              f'--config.data.data_dir={data_dir}'], check=False)
  assert proc.returncode == 2
  assert 'No checkpoint found' in proc.stderr and 'Traceback' not in proc.stderr


def test_mesh_not_matching_devices_is_one_clear_sentence(data_dir, tmp_path):
  proc = run_main('train.py', ['--config=configs/mnist1d.py', f'--workdir={tmp_path}',
                               f'--config.data.data_dir={data_dir}', '--config.mesh.data=3'],
                  check=False)
  assert proc.returncode == 2
  assert 'needs 3 devices but 8 are available' in proc.stderr and 'Traceback' not in proc.stderr


def test_checkpoint_of_another_model_names_the_parameter_and_shapes(straight_run):
  workdir, overrides = straight_run
  other = {**overrides, 'model.encoder.num_latents': 4}
  with open(os.path.join(workdir, 'config.json')) as f:
    saved_config = f.read()
  # Resuming under another model is refused first as a changed recipe, naming the field;
  # asked for explicitly, the checkpoint's shapes refuse it.
  proc = run_main('train.py', ['--config=configs/mnist1d.py', f'--workdir={workdir}',
                               *flags_for(other)], check=False)
  assert proc.returncode == 2 and 'model.encoder.num_latents: 8 -> 4' in proc.stderr, (
      proc.stderr[-2000:])
  for script, allow in (('eval.py', {}), ('train.py', {'allow_changes': 'model'})):
    proc = run_main(script, ['--config=configs/mnist1d.py', f'--workdir={workdir}',
                             *flags_for({**other, **allow})], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "'encoder/z_pos_enc/pos_embs' has shape (8, 32) in the checkpoint" in proc.stderr
    assert 'Traceback' not in proc.stderr
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == saved_config  # the refused run overwrote nothing


def _leaves_by_name(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_init_from_loads_weights_and_keeps_excluded_ones_fresh(straight_run, data_dir):
  workdir, _ = straight_run
  config = tiny_mnist1d_config(**{'data.data_dir': data_dir})
  mesh = shd.make_mesh({'data': 2, 'fsdp': 4, 'tensor': 1})
  run = Run.from_input_shape(config, (40, 1), mesh)
  fresh, shardings = run.init_state(), run.state_shardings
  trained = _leaves_by_name(_restore_state(workdir, 6)['ema_params'])  # the evaluated weights
  fresh_leaves = _leaves_by_name(fresh.params)
  state = finetune.init_from_checkpoint(fresh, shardings, workdir, exclude='decoder/.*')
  got = _leaves_by_name(state.params)
  assert int(state.step) == 0
  assert any(name.startswith('decoder/') for name in got)
  for name, value in got.items():
    want = fresh_leaves[name] if name.startswith('decoder/') else trained[name]
    np.testing.assert_array_equal(value, want, err_msg=name)
  # The weights land in this run's shardings, not the checkpoint's (data=4 x fsdp=2).
  for leaf, sharding in zip(jax.tree.leaves(state.params), jax.tree.leaves(shardings.params)):
    assert leaf.sharding == sharding


def test_init_from_a_checkpoint_of_another_shape_says_which_parameter(straight_run, data_dir):
  workdir, _ = straight_run
  config = tiny_mnist1d_config(**{'data.data_dir': data_dir, 'model.num_classes': 5})
  mesh = shd.make_mesh({'data': 8, 'fsdp': 1, 'tensor': 1})
  run = Run.from_input_shape(config, (40, 1), mesh)
  fresh, shardings = run.init_state(), run.state_shardings
  with pytest.raises(ValueError, match=r"'decoder/decoder/output/bias' has shape \(10,\) "
                                       r"in init_from checkpoint .* but \(5,\).*init_exclude"):
    finetune.init_from_checkpoint(fresh, shardings, workdir)
  # Excluding the head makes the same checkpoint usable for a 5-class task.
  state = finetune.init_from_checkpoint(fresh, shardings, workdir, exclude=r'decoder/decoder/output/.*')
  assert state.params['decoder']['decoder']['output']['kernel'].shape == (32, 5)


def test_train_with_init_from_and_bad_init_from(straight_run, data_dir, tmp_path):
  workdir, overrides = straight_run
  args = ['--config=configs/mnist1d.py', *flags_for({**overrides, 'train.num_steps': 2})]
  proc = run_main('train.py', [*args, f'--workdir={tmp_path / "ft"}',
                               f'--config.init_from={workdir}'])
  assert f"from {os.path.join(workdir, 'checkpoints', '6', 'state')} (step 6)" in proc.stderr
  missing = tmp_path / 'nowhere'
  proc = run_main('train.py', [*args, f'--workdir={tmp_path / "ft2"}',
                               f'--config.init_from={missing}'], check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert f'config.init_from={missing} does not exist' in proc.stderr
