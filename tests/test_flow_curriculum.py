"""The displacement curriculum (data/flow_curriculum.py) and its flow-task options."""

import numpy as np
import pytest

from configs import flow_skimage
from perceiver_jax.data import flow_synthesis, pipeline
from perceiver_jax.data.flow_curriculum import (FlowMagnitudeCurriculum, check_curriculum,
                                                curriculum_scale)
from perceiver_jax.errors import UserError
from perceiver_jax.tasks.flow import FlowTask, RandomFlowCrop
from perceiver_jax.validate import validate_config
from tests.helpers import runlocal


def _pair(size=12, shift=(2.0, -1.0)):
  """A smooth frame 2 and a constant flow; frame 1 as stored is just a marker."""
  yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32),
                       indexing='ij')
  frame2 = np.stack([xx * 10, yy * 10, xx + yy], -1).astype(np.uint8)
  flow = np.broadcast_to(np.asarray(shift, np.float32), (size, size, 2)).copy()
  frames = np.stack([np.full_like(frame2, 7), frame2])
  return {'frames': frames, 'flow': flow, 'valid': np.ones((size, size), bool)}


def test_scale_rises_linearly_to_one_and_stays():
  assert curriculum_scale(0, 0.25, 100) == 0.25
  assert curriculum_scale(50, 0.25, 100) == pytest.approx(0.625)
  assert curriculum_scale(100, 0.25, 100) == 1.0
  assert curriculum_scale(10**9, 0.25, 100) == 1.0
  assert curriculum_scale(0, 0.25, 0) == 1.0  # off


def test_rescaled_pair_is_exact_and_late_examples_pass_unchanged():
  example = _pair()
  transform = FlowMagnitudeCurriculum(start=0.5, ramp_examples=10)
  out = transform.map_with_index(0, example)
  np.testing.assert_array_equal(out['flow'], example['flow'] * 0.5)  # (1, -0.5) px
  np.testing.assert_array_equal(out['frames'][1], example['frames'][1])
  # frame1(y, x) = frame2(y - 0.5, x + 1): column x + 1 exactly, rows averaged.
  expected, valid = flow_synthesis.backward_warp(example['frames'][1], out['flow'])
  np.testing.assert_array_equal(out['frames'][0], np.round(expected).astype(np.uint8))
  np.testing.assert_array_equal(out['frames'][0][5, 3, 0], example['frames'][1][5, 4, 0])
  # Targets above row 0 or right of the last column leave frame 2: invalid.
  assert not out['valid'][0].any() and not out['valid'][:, -1].any()
  assert out['valid'][1:, :-1].all()
  late = transform.map_with_index(10, example)
  assert late is example


def test_task_puts_the_curriculum_first_only_when_on(tmp_path):
  assert not any(isinstance(op, FlowMagnitudeCurriculum)
                 for op in FlowTask().train_transforms(None))
  ops = FlowTask(curriculum_start=0.2, curriculum_examples=64).train_transforms(None)
  assert isinstance(ops[0], FlowMagnitudeCurriculum) and isinstance(ops[1], RandomFlowCrop)
  assert (ops[0].start, ops[0].ramp_examples) == (0.2, 64)
  assert not any(isinstance(op, FlowMagnitudeCurriculum) for op in FlowTask().eval_transforms(None))


def test_curriculum_reaches_the_training_stream_by_position(tmp_path):
  data_dir = str(tmp_path)
  pipeline.prepare('skimage_flow/tiny', data_dir)
  config = runlocal(flow_skimage, data_dir, **{'task.flip': False,
                                               'task.curriculum_start': 0.25,
                                               'task.curriculum_examples': 16})
  task = FlowTask(**{k: v for k, v in config.task.items() if k != 'name'})
  plain = FlowTask(**{**{k: v for k, v in config.task.items() if k != 'name'},
                      'curriculum_start': 1.0})
  batches = pipeline.make_train_dataset(config.data, global_batch_size=8, seed=0, task=task)
  stored = pipeline.make_train_dataset(config.data, global_batch_size=8, seed=0, task=plain)
  # Batch 0 holds examples 0..7 (scales 0.25 .. 0.64), batch 2 examples 16..23 (scale 1).
  scales = [0.25 + 0.75 * n / 16 for n in range(8)]
  np.testing.assert_allclose(batches[0]['flow'],
                             stored[0]['flow'] * np.asarray(scales)[:, None, None, None],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(batches[2]['flow'], stored[2]['flow'])
  np.testing.assert_array_equal(batches[2]['inputs'], stored[2]['inputs'])


def test_bad_curriculum_is_one_sentence(tmp_path):
  with pytest.raises(UserError, match=r'config.task.curriculum_start=0.0 is not a flow scale'):
    validate_config(runlocal(flow_skimage, str(tmp_path), **{'task.curriculum_start': 0.0}))
  with pytest.raises(UserError, match=r'config.task.curriculum_examples=-1 is negative'):
    validate_config(runlocal(flow_skimage, str(tmp_path), **{'task.curriculum_examples': -1}))


def test_curriculum_of_the_wrong_type_is_one_sentence():
  # A config file can hold anything; each wrong type is a sentence, not a TypeError.
  with pytest.raises(UserError, match=r'curriculum_start=None is not a flow scale'):
    check_curriculum(None, 0)
  with pytest.raises(UserError, match=r"curriculum_examples='many' is not a count"):
    check_curriculum(0.5, 'many')
  with pytest.raises(UserError, match=r'curriculum_examples=2.5 is not a count'):
    check_curriculum(0.5, 2.5)
