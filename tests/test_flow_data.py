"""Tests for flow synthesis and warping, the skimage_flow builder and EPE."""

import ml_collections
import numpy as np
import pytest

from perceiver_jax.data import pipeline
from perceiver_jax import flow_metrics
from perceiver_jax.data import flow_synthesis as fs
from perceiver_jax.data.builders import skimage_flow
from perceiver_jax.errors import DatasetError, UserError


def random_image(h=12, w=17, c=3, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (h, w, c)).astype(np.float32)


def constant_flow(h, w, dx, dy):
  return np.broadcast_to(np.float32([dx, dy]), (h, w, 2))


# ---------------------------------------------------------------------------
# Warping
# ---------------------------------------------------------------------------


def test_zero_flow_warp_is_identity():
  image = random_image()
  warped, valid = fs.backward_warp(image, np.zeros((12, 17, 2), np.float32))
  np.testing.assert_array_equal(warped, image)
  assert valid.all()


def test_integer_translation_is_a_shifted_slice_with_border_mask():
  image = random_image()
  h, w = image.shape[:2]
  # frame1(y, x) = image(y - 1, x + 2): channel 0 is dx (columns), 1 is dy (rows).
  warped, valid = fs.backward_warp(image, constant_flow(h, w, dx=2, dy=-1))
  np.testing.assert_allclose(warped[1:, :w - 2], image[:h - 1, 2:], atol=1e-4)
  expected = np.zeros((h, w), bool)
  expected[1:, :w - 2] = True
  np.testing.assert_array_equal(valid, expected)


def test_fractional_flow_interpolates_linear_ramp_exactly():
  h, w = 10, 13
  ys, xs = fs.pixel_grid(h, w)
  ramp = (3.0 * ys + 0.5 * xs + 7.0)[..., None]
  warped, valid = fs.backward_warp(ramp, constant_flow(h, w, dx=0.25, dy=0.6))
  np.testing.assert_allclose(warped[valid][:, 0], (ramp[..., 0] + 3.0 * 0.6
                                                   + 0.5 * 0.25)[valid], atol=1e-4)
  assert valid.sum() == (h - 1) * (w - 1)  # last row and column leave the image


def test_bilinear_sample_clamps_outside_and_marks_invalid():
  image = random_image(4, 5, 1)
  values, valid = fs.bilinear_sample(image, np.float32([-2.0, 3.0, 1.0]),
                                     np.float32([1.0, 4.0, 6.5]))
  np.testing.assert_array_equal(valid, [False, True, False])
  np.testing.assert_allclose(values[:, 0], [image[0, 1, 0], image[3, 4, 0],
                                            image[1, 4, 0]], atol=1e-4)


# ---------------------------------------------------------------------------
# Flow fields
# ---------------------------------------------------------------------------


def test_random_flow_is_bounded_smooth_and_deterministic():
  peaks = []
  for seed in range(20):
    flow = fs.random_flow(np.random.default_rng(seed), (24, 40),
                          max_displacement=5.0, max_gradient=0.5)
    assert flow.shape == (24, 40, 2) and flow.dtype == np.float32
    norm = np.sqrt((flow.astype(np.float64) ** 2).sum(-1))
    assert norm.max() <= 5.0 + 1e-4
    for axis in (0, 1):
      assert np.abs(np.diff(flow, axis=axis)).max() <= 0.5 + 1e-5
    peaks.append(norm.max())
    np.testing.assert_array_equal(
        flow, fs.random_flow(np.random.default_rng(seed), (24, 40),
                             max_displacement=5.0, max_gradient=0.5))
  assert min(peaks) > 0.1 and max(peaks) > 3.0  # not degenerate
  assert len({round(float(p), 4) for p in peaks}) == 20  # seeds differ


def test_random_flow_rejects_bad_parameters():
  with pytest.raises(UserError, match='max_displacement'):
    fs.random_flow(np.random.default_rng(0), (8, 8), max_displacement=0.0)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def test_constant_flow_epe_is_its_norm_and_mask_excludes_pixels():
  true = np.zeros((2, 5, 6, 2), np.float32)
  pred = np.broadcast_to(np.float32([3.0, 4.0]), true.shape).copy()
  assert float(flow_metrics.end_point_error(pred, true)) == pytest.approx(5.0)
  # Big errors on masked-out pixels and on a padding example must not count.
  pred[0, 0, :] = 100.0
  pred[1] = -50.0
  mask = np.ones((2, 5, 6), np.float32)
  mask[0, 0, :] = 0
  total, count = flow_metrics.end_point_error_sums(
      pred, true, mask * np.float32([1, 0])[:, None, None])
  assert float(count) == 24 and float(total) == pytest.approx(120.0)
  per_example = flow_metrics.end_point_error(pred[:1, 1:], true[:1, 1:],
                                             np.float32([1]))
  assert float(per_example) == pytest.approx(5.0)


def test_zero_flow_epe_is_mean_flow_norm():
  examples = [{'flow': constant_flow(2, 2, 3, 4),
               'valid': np.array([[True, False], [False, False]])},
              {'flow': constant_flow(2, 2, 0, 1), 'valid': np.ones((2, 2), bool)}]
  assert flow_metrics.zero_flow_epe(examples, valid_only=False) == pytest.approx(3.0)
  assert flow_metrics.zero_flow_epe(examples, valid_only=True) == pytest.approx(9 / 5)


# ---------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def tiny(data_dir):
  return pipeline.prepare('skimage_flow/tiny', data_dir)


def test_tiny_builder_counts_features_and_source_split(tiny):
  assert tiny.info.splits['train'].num_examples == 32
  assert tiny.info.splits['test'].num_examples == 12
  sources = {}
  for split in ('train', 'test'):
    source = tiny.as_data_source(split)
    sources[split] = {int(source[i]['source']) for i in range(len(source))}
    names = {skimage_flow.SOURCES[k] for k in sources[split]}
    # Round robin: every source of the split is used, and no other.
    assert names == set(skimage_flow.SPLIT_SOURCES[split])
  assert not sources['train'] & sources['test']
  e = tiny.as_data_source('train')[0]
  assert e['frames'].shape == (2, 16, 16, 3) and e['frames'].dtype == np.uint8
  assert e['flow'].shape == (16, 16, 2) and e['flow'].dtype == np.float32
  assert e['valid'].shape == (16, 16) and e['valid'].dtype == np.bool_


def test_stored_pairs_follow_their_flow(tiny):
  source = tiny.as_data_source('test')
  ys, xs = fs.pixel_grid(16, 16)
  moved = 0
  for i in range(len(source)):
    e = source[i]
    frame1, frame2 = e['frames'].astype(np.float32)
    flow = e['flow']
    assert np.sqrt((flow ** 2).sum(-1)).max() <= 3.0 + 1e-4
    warped, valid = fs.backward_warp(frame2, flow)
    inside = ((ys + flow[..., 1] >= 0) & (ys + flow[..., 1] <= 15)
              & (xs + flow[..., 0] >= 0) & (xs + flow[..., 0] <= 15))
    np.testing.assert_array_equal(e['valid'], inside)
    np.testing.assert_array_equal(valid, inside)
    # frame1 was rounded to uint8 after warping: within half a grey level.
    assert np.abs(warped - frame1)[valid].max() <= 0.5 + 1e-3
    moved += np.abs(frame1 - frame2).mean() > 1.0
  assert moved >= len(source) // 2  # the frames do differ


def test_example_regenerates_from_its_own_seed(tiny):
  i = 5
  stored = tiny.as_data_source('test')[i]
  names = skimage_flow.TEST_SOURCES
  rng = np.random.default_rng([0, skimage_flow.SPLIT_IDS['test'], i])
  again = skimage_flow.make_example(
      skimage_flow.load_source(names[i % len(names)]), rng, size=16,
      max_displacement=3.0, max_gradient=1.0)
  for key in ('frames', 'flow', 'valid'):
    np.testing.assert_array_equal(stored[key], again[key])


def test_classification_pipeline_refuses_flow_data(tiny, data_dir):
  del tiny  # prepared
  cfg = ml_collections.ConfigDict(dict(
      name='skimage_flow/tiny', data_dir=data_dir, train_split='train',
      eval_split='test'))
  with pytest.raises(DatasetError, match='supervised_keys'):
    pipeline.dataset_info(cfg)
