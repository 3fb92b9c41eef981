"""The 'flow' task: EPE sums on hand-made flows, crops and flips, and a short training run."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks.baselines import block_matching_epe, mean_flow_oracle_epe
from configs import flow_autoflow, flow_skimage
from perceiver_jax import trainer
from perceiver_jax.data import pipeline
from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.metrics_log import read
from perceiver_jax.model.decoders import FlowDecoder
from perceiver_jax.tasks.flow import (CenterFlowCrop, FlowTask, RandomFlowCrop, ToFlowExample,
                                      flow_metrics, flow_sums)
from perceiver_jax.run import Run
from perceiver_jax.validate import validate_config
from tests.helpers import assert_loss_falls, fixed_batch, run_main, runlocal


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  pipeline.prepare('skimage_flow/tiny', path)
  return path


# ------------------------------------------------------------------------------------------
# Loss and metrics on hand-made flows.
# ------------------------------------------------------------------------------------------

def test_flow_sums_match_numpy_and_skip_padding_and_invalid_pixels():
  rng = np.random.default_rng(0)
  flow = rng.normal(size=(3, 4, 5, 2)).astype(np.float32) * 3
  pred = flow + rng.normal(size=flow.shape).astype(np.float32) * 2
  valid = (rng.random((3, 4, 5)) > 0.3).astype(np.float32)
  weights = np.array([1.0, 1.0, 0.0], np.float32)  # the third example is eval padding
  pred[2] = np.nan  # padding contributes nothing, not even a NaN
  sums = {k: float(v) for k, v in flow_sums(pred, flow, valid, weights).items()}
  epe = np.sqrt(((pred[:2] - flow[:2]) ** 2).sum(-1))
  v = valid[:2] > 0
  assert sums['valid_pixels'] == v.sum() and sums['pixels'] == 40
  assert sums['epe'] == pytest.approx(epe[v].sum(), rel=1e-5)
  assert sums['epe_all'] == pytest.approx(epe.sum(), rel=1e-5)
  assert sums['loss'] == pytest.approx(epe[v].sum(), rel=1e-5)  # 'epe' loss, valid only
  for t in (1, 3, 5):
    assert sums[f'{t}px'] == (epe[v] < t).sum()
  l1 = flow_sums(pred, flow, valid, weights, flow_loss='l1', valid_only=False)
  assert float(l1['loss']) == pytest.approx(np.abs(pred[:2] - flow[:2]).sum(), rel=1e-5)
  assert float(l1['loss_pixels']) == 40
  metrics = flow_metrics(sums, np)
  assert metrics['epe'] == pytest.approx(epe[v].mean(), rel=1e-5)
  assert metrics['3px'] == pytest.approx((epe[v] < 3).mean())


def test_epe_loss_gradient_is_finite_at_a_perfect_pixel():
  flow = jnp.zeros((1, 2, 2, 2)).at[0, 0, 0, 0].set(3.0)
  ones = jnp.ones((1, 2, 2))

  def loss(pred):
    return flow_sums(pred, flow, ones, jnp.ones((1,)))['loss']

  grad = jax.grad(loss)(jnp.zeros_like(flow))  # three pixels are exactly right
  assert np.isfinite(np.asarray(grad)).all()
  np.testing.assert_allclose(grad[0, 0, 0], [-1.0, 0.0], atol=1e-6)  # d|e|/de = e/|e|


def test_mean_flow_oracle_epe_is_zero_for_a_translation_and_pools_pixels():
  shift = {'flow': np.tile([3.0, -4.0], (2, 2, 1)), 'valid': np.ones((2, 2), bool)}
  assert mean_flow_oracle_epe([shift]) == 0.0
  # Valid flows (0, 0) and (2, 0): mean (1, 0), error 1 at both; the invalid pixel is ignored.
  split = {'flow': np.array([[[0.0, 0.0], [2.0, 0.0], [9.0, 9.0]]]),
           'valid': np.array([[True, True, False]])}
  assert mean_flow_oracle_epe([split, shift]) == pytest.approx(2 / 6)


def test_block_matching_finds_an_integer_translation_and_pools_pixels():
  rng = np.random.default_rng(0)
  frame2 = rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)
  frame1 = np.roll(frame2, shift=(-2, 1), axis=(0, 1))  # frame1(y, x) = frame2(y+2, x-1)
  valid = np.zeros((20, 20), bool)
  valid[5:15, 5:15] = True  # away from the wrapped border
  flow = np.tile(np.float32([-1.0, 2.0]), (20, 20, 1))  # (dx, dy)
  moved = {'frames': np.stack([frame1, frame2]), 'flow': flow, 'valid': valid}
  assert block_matching_epe([moved], radius=3, window=5) == 0.0
  # Told the wrong flow (0, 0), every valid pixel is off by |(-1, 2)|.
  wrong = dict(moved, flow=np.zeros_like(flow))
  assert block_matching_epe([wrong, moved], radius=3, window=5) == pytest.approx(
      np.sqrt(5) / 2)


# ------------------------------------------------------------------------------------------
# Crops and flips keep frames, flow and valid aligned.
# ------------------------------------------------------------------------------------------

def _example(h=6, w=8):
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  frames = np.stack([np.stack([xx, yy, xx + yy], -1)] * 2).astype(np.uint8)  # [2, h, w, 3]
  flow = np.stack([xx + 1, -yy - 1], -1)  # dx, dy depend on the pixel
  return {'frames': frames, 'flow': flow, 'valid': xx > 2}


def test_random_crop_and_flip_stay_aligned_and_negate_dx():
  example = _example()
  seen_flip = seen_plain = False
  for seed in range(12):
    out = RandomFlowCrop((4, 5), flip=True).random_map(example, np.random.default_rng(seed))
    assert out['frames'].shape == (2, 4, 5, 3) and out['flow'].shape == (4, 5, 2)
    xs = out['frames'][0, :, :, 0].astype(np.float32)  # the column each pixel came from
    ys = out['frames'][0, :, :, 1].astype(np.float32)
    flipped = xs[0, 0] > xs[0, -1]
    seen_flip |= flipped
    seen_plain |= not flipped
    dx = -(xs + 1) if flipped else xs + 1
    np.testing.assert_array_equal(out['flow'][..., 0], dx)
    np.testing.assert_array_equal(out['flow'][..., 1], -ys - 1)
    np.testing.assert_array_equal(out['valid'], xs > 2)
  assert seen_flip and seen_plain
  again = RandomFlowCrop((4, 5), flip=True).random_map(example, np.random.default_rng(3))
  first = RandomFlowCrop((4, 5), flip=True).random_map(example, np.random.default_rng(3))
  np.testing.assert_array_equal(again['flow'], first['flow'])


def test_center_crop_and_scaling():
  out = ToFlowExample().map(CenterFlowCrop((2, 4)).map(_example()))
  np.testing.assert_array_equal(out['flow'][..., 0], np.tile(np.arange(2, 6) + 1.0, (2, 1)))
  assert out['inputs'].dtype == np.float32 and out['valid'].dtype == np.float32
  frames = _example()['frames'][:, 2:4, 2:6].astype(np.float32)
  np.testing.assert_allclose(out['inputs'], frames / 255 * 2 - 1, atol=1e-6)
  with pytest.raises(UserError, match=r'smaller than config.task.crop_size=\(8, 8\)'):
    CenterFlowCrop((8, 8)).map(_example())


# ------------------------------------------------------------------------------------------
# Configs.
# ------------------------------------------------------------------------------------------

def test_bad_flow_settings_are_one_sentence(data_dir):
  with pytest.raises(UserError, match=r"config.task.flow_loss='l2' is unknown"):
    validate_config(runlocal(flow_skimage, data_dir, **{'task.flow_loss': 'l2'}))
  with pytest.raises(UserError, match=r"config.task.crop_size=\(0, 4\) is not a crop"):
    validate_config(runlocal(flow_skimage, data_dir, **{'task.crop_size': (0, 4)}))
  pipeline.prepare('digits', data_dir)
  with pytest.raises(DatasetError, match=r"Dataset 'digits' has no 'frames', 'flow'"):
    Run.create(runlocal(flow_skimage, data_dir, **{'data.name': 'digits'}))


def test_crop_size_sets_the_model_input(data_dir):
  spec = Run.create(runlocal(flow_skimage, data_dir, **{'task.crop_size': (12, 8)})).data_spec
  assert spec.input_shape == (2, 12, 8, 3) and spec.num_classes == 2
  assert FlowTask().input_shape(pipeline.prepare('skimage_flow/tiny', data_dir)) == (2, 16, 16, 3)


def test_released_model_config_builds_at_full_size():
  config = flow_autoflow.get_config()
  validate_config(config)
  assert tuple(config.task.crop_size) == (368, 496)
  assert config.model.encoder.num_latents == 2048
  assert config.model.postprocessor.flow_scale == 20.0


# ------------------------------------------------------------------------------------------
# A short run through the trainer, then eval.py on its checkpoint on another mesh.
# ------------------------------------------------------------------------------------------

# One fixed batch of 8 pairs, unflipped, so all 20 steps see the same pixels; each run sets
# a learning rate that overfits them.
OVERFIT = {**fixed_batch(8, 20), 'task.flip': False}


def test_runlocal_overfits_a_batch_and_eval_py_reproduces_its_metrics(data_dir, tmp_path):
  workdir = str(tmp_path / 'flow')
  config = runlocal(flow_skimage, data_dir, **OVERFIT, **{'optimizer.learning_rate': 1e-2})
  final = trainer.train_and_evaluate(config, workdir)
  train = [r for r in read(os.path.join(workdir, 'metrics.jsonl')) if r.get('split') == 'train']
  assert [r['step'] for r in train] == list(range(1, 21))
  for record in train + [final]:
    assert math.isfinite(record['loss']) and math.isfinite(record['epe']), record
  assert_loss_falls(workdir)  # the gradients reach the flow head
  assert final['num_examples'] == 12 and 0.0 <= final['1px'] <= final['3px'] <= 1.0
  run_main('eval.py', ['--config=configs/flow_skimage.py:runlocal', f'--workdir={workdir}',
                       f'--config.data.data_dir={data_dir}'], devices=4)
  with open(os.path.join(workdir, 'eval_20.json')) as f:
    result = json.load(f)
  assert result['num_pixels'] == final['num_pixels']
  for key in ('epe', 'epe_all', '1px', '3px', '5px'):
    assert result[key] == pytest.approx(final[key], rel=1e-5, abs=1e-6), key


def test_released_model_runlocal_overfits_a_batch(data_dir, tmp_path):
  # The whole 16x16 pair (the variant's 12x12 crops would move every step); LAMB needs a
  # larger learning rate than AdamW to show the fall in 20 steps.
  config = runlocal(flow_autoflow, data_dir, **OVERFIT, **{
      'task.crop_size': (16, 16), 'model.preprocessor.position_encoding.max_resolution': (16, 16),
      'optimizer.learning_rate': 3e-2})
  workdir = str(tmp_path / 'autoflow')
  final = trainer.train_and_evaluate(config, workdir)
  assert_loss_falls(workdir)
  assert final['num_examples'] == 12 and math.isfinite(final['epe'])


def test_flow_head_is_zero_unless_zero_init_head_is_false():
  """DeepMind's zero head outputs zero flow and passes no gradient below it; a drawn head
  does both from the first step."""
  query = jax.random.normal(jax.random.key(0), (1, 6, 6))
  z = jax.random.normal(jax.random.key(1), (1, 4, 8))
  for zero, moves in ((True, False), (False, True)):
    decoder = FlowDecoder(8, 6, (2, 3), zero_init_head=zero, rngs=nnx.Rngs(0))
    assert decoder(query, z).shape == (1, 2, 3, 2)
    assert bool(jnp.any(decoder(query, z) != 0)) == moves
    grad = jax.grad(lambda q: jnp.sum(decoder(q, z)))(query)
    assert bool(jnp.any(grad != 0)) == moves
