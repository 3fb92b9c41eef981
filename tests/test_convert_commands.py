"""A converted conv model through the real commands: convert.py on released-format weights,
then eval.py on the result (its metrics must be those of the converted weights and
BatchNorm statistics, computed here), then train.py --config.init_from on it (its checkpoint
must start from them).

The weights are tests/fixtures/vision_perceiver_conv.npz's tiny HF model (BatchNorm running
statistics included), its classifier widened to photo_crops' 10 classes and the conv
kernel of channels 0-3 zeroed: those channels' batch statistics in training are then
exactly 0, so after one training step their running averages are exactly 0.9 (flax's
momentum) x the converted ones, whatever the batch. The model is
configs/imagenet_perceiver_io.py:pos=conv,runlocal (32 x 32 photo_crops) at the fixture's
sizes.
"""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from safetensors.numpy import save_file

from configs import imagenet_perceiver_io
from perceiver_jax import checkpoint as ckpt
from perceiver_jax import tasks
from perceiver_jax.convert import to_checkpoint
from perceiver_jax.data import pipeline
from tests.helpers import flags_for, prepared_data_dir, run_main
from tests.test_parity_vision import load_fixture

CONFIG = 'configs/imagenet_perceiver_io.py:pos=conv,runlocal'
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10  # photo_crops
ZEROED = slice(0, 4)  # conv output channels with a zero kernel
MOMENTUM = 0.9  # of the conv stem's BatchNorm (perceiver_jax/model/image_processors.py)
PREFIX = 'perceiver.input_preprocessor.convnet.'
LOSS_RTOL = 1e-5  # eval.py's loss (float32 sums) against the one computed here


def state_dict() -> dict[str, np.ndarray]:
  """The fixture's HF state dict for 10 classes, conv channels ZEROED zeroed."""
  weights = dict(load_fixture('vision_perceiver_conv')['state_dict'])
  rng = np.random.default_rng(0)
  for key in ('weight', 'bias'):
    old = weights[f'perceiver.decoder.decoder.final_layer.{key}']
    extra = old.std() * rng.standard_normal((NUM_CLASSES - len(old),) + old.shape[1:])
    weights[f'perceiver.decoder.decoder.final_layer.{key}'] = np.concatenate(
        [old, extra.astype(old.dtype)])
  conv = weights[PREFIX + 'conv.weight'].copy()  # [out, in, 7, 7]
  conv[ZEROED] = 0.0
  weights[PREFIX + 'conv.weight'] = conv
  return weights


def model_overrides() -> dict:
  """config.model fields of the fixture's tiny model, for 10 classes."""
  overrides = dict(load_fixture('vision_perceiver_conv')['meta']['model_overrides'])
  overrides['num_classes'] = NUM_CLASSES
  return {f'model.{k}': tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def config_flags(data_dir: str) -> list[str]:
  return [f'--config={CONFIG}', *flags_for({**model_overrides(), 'data.data_dir': data_dir})]


def local_config(data_dir: str):
  """The commands' config, built here."""
  config = imagenet_perceiver_io.get_config('pos=conv,runlocal')
  for key, value in {**model_overrides(), 'data.data_dir': data_dir}.items():
    *path, leaf = key.split('.')
    node = config
    for part in path:
      node = node[part]
    node[leaf] = value
  config.convert.input_shape = IMAGE_SHAPE
  return config


def read_checkpoint(workdir: str) -> tuple[dict, int]:
  """({'params': ..., 'model_state': ...} as numpy, step) of the newest checkpoint."""
  path, step = ckpt.find_checkpoint(workdir)
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            getattr(metadata, 'item_metadata', metadata))
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  return restored, step


def batchnorm_state(tree: dict) -> dict:
  return tree['model_state']['preprocessor']['convnet']['layers']['0']['batchnorm']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory, 'photo_crops')


@pytest.fixture(scope='module')
def weights_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('hf') / 'model.safetensors')
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict().items()}, path)
  return path


@pytest.fixture(scope='module')
def converted(tmp_path_factory, data_dir, weights_file):
  workdir = str(tmp_path_factory.mktemp('converted'))
  shape = ','.join(map(str, IMAGE_SHAPE))
  proc = run_main('convert.py', [*config_flags(data_dir), f'--input={weights_file}',
                                 f'--workdir={workdir}', f'--config.convert.input_shape=({shape})'],
                  devices=2)
  assert json.loads(proc.stdout.strip().splitlines()[-1])['num_params'] > 0
  return workdir


_forward = nnx.jit(lambda model, x: model(x))


def expected_eval(model, config) -> dict:
  """Loss and accuracy of `model` on photo_crops' validation split, computed here."""
  batches = pipeline.make_eval_iterator(config.data, 'validation', global_batch_size=100,
                                        task=tasks.get_task(config))
  losses, correct = [], []
  for batch in batches:
    logits = np.asarray(_forward(model, batch['inputs']), np.float64)
    real = batch['mask'] > 0
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = batch['label']
    losses += list(-log_probs[np.arange(len(labels)), labels][real])
    correct += list((logits.argmax(-1) == labels)[real])
  assert len(losses) == 100
  return {'loss': float(np.mean(losses)), 'accuracy': float(np.mean(correct))}


def test_eval_py_evaluates_the_converted_weights_and_batchnorm_statistics(
    converted, data_dir, weights_file):
  proc = run_main('eval.py', [*config_flags(data_dir), f'--workdir={converted}',
                              '--split=validation'], devices=2)
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['step'] == 0 and result['num_examples'] == 100
  config = local_config(data_dir)
  model = to_checkpoint.convert_weights(config, weights_file)
  want = expected_eval(model, config)
  print(f'eval.py {result}; expected {want}')
  assert result['loss'] == pytest.approx(want['loss'], rel=LOSS_RTOL)
  assert result['accuracy'] == want['accuracy']
  # The same weights with the statistics of a fresh BatchNorm (mean 0, variance 1) give
  # another loss (by 2.6e-4 of it): eval.py's matches only with the converted statistics.
  bn = model.preprocessor.convnet.layers[0].batchnorm
  bn.mean[...], bn.var[...] = np.zeros(bn.mean.shape), np.ones(bn.var.shape)
  fresh = expected_eval(model, config)
  assert abs(fresh['loss'] - want['loss']) > 10 * LOSS_RTOL * want['loss'], (fresh, want)


def test_train_py_init_from_starts_from_the_converted_weights_and_statistics(
    converted, data_dir, tmp_path):
  workdir = str(tmp_path / 'finetuned')
  # One step at a negligible learning rate: the parameters stay the converted ones.
  run_main('train.py', [*config_flags(data_dir), f'--workdir={workdir}',
                        f'--config.init_from={converted}', '--config.train.num_steps=1',
                        '--config.optimizer.learning_rate=1e-12'], devices=2)
  start, step0 = read_checkpoint(converted)
  trained, step = read_checkpoint(workdir)
  assert (step0, step) == (0, 1)
  converted_params = dict(jax.tree_util.tree_leaves_with_path(start['params']))
  trained_params = dict(jax.tree_util.tree_leaves_with_path(trained['params']))
  assert converted_params.keys() == trained_params.keys()
  for path, value in converted_params.items():
    np.testing.assert_allclose(trained_params[path], value, rtol=1e-6, atol=1e-9,
                               err_msg=jax.tree_util.keystr(path))
  # The converted conv kernel and statistics are HF's ([out, in, h, w] -> [h, w, in, out]) ...
  hf = state_dict()
  conv = start['params']['preprocessor']['convnet']['layers']['0']['conv']
  np.testing.assert_array_equal(conv['kernel'], hf[PREFIX + 'conv.weight'].transpose(2, 3, 1, 0))
  for stat, hf_name in (('mean', 'running_mean'), ('var', 'running_var')):
    np.testing.assert_array_equal(batchnorm_state(start)[stat],
                                  hf[PREFIX + 'batchnorm.' + hf_name])
  # ... and one training step moved them from there: for the zeroed channels, whose batch
  # statistics are 0, to exactly MOMENTUM x the converted ones (a fresh BatchNorm would give
  # 0 and MOMENTUM x 1).
  for stat in ('mean', 'var'):
    np.testing.assert_allclose(batchnorm_state(trained)[stat][ZEROED],
                               MOMENTUM * batchnorm_state(start)[stat][ZEROED], rtol=1e-6,
                               err_msg=stat)
