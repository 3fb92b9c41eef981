"""ModelNet40: the manual_dir builder on files in the release's layout, the synthetic shapes,
the point-cloud augmentations, and the runlocal config trained then evaluated by eval.py."""

import json
import math
import os

import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import modelnet40_perceiver
from perceiver_jax import state as state_lib
from perceiver_jax import trainer
from perceiver_jax.data import pipeline, point_cloud_augment, shape_synthesis, transforms
from perceiver_jax.data.builders import modelnet40
from perceiver_jax.errors import UserError
from perceiver_jax.validate import validate_config
from tests.helpers import abstract_run, assert_loss_falls, fixed_batch, run_main, runlocal

TRAIN_IDS = ('airplane_0001', 'night_stand_0002', 'xbox_0003')
TEST_IDS = ('tv_stand_0004', 'airplane_0005')
ROWS = 2048 + 7  # the builder keeps the first 2048


def object_rows(seed: int, rows: int = ROWS) -> np.ndarray:
  """x,y,z,nx,ny,nz rows like the release's: coordinates off-centre, unit normals."""
  rng = np.random.default_rng(seed)
  xyz = rng.normal(size=(rows, 3)) * [0.3, 0.5, 0.2] + [0.1, -0.2, 0.05]
  normals = rng.normal(size=(rows, 3))
  rows = np.concatenate([xyz, normals / np.linalg.norm(normals, axis=1, keepdims=True)], 1)
  return np.round(rows, 6)  # as written to the files


def write_release(manual_dir, ids=TRAIN_IDS + TEST_IDS, names=modelnet40.CLASS_NAMES,
                  rows=ROWS) -> dict[str, np.ndarray]:
  """manual_dir/modelnet40_normal_resampled in the release's layout; returns the rows."""
  root = os.path.join(manual_dir, modelnet40.FOLDER)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'modelnet40_shape_names.txt'), 'w') as f:
    f.write('\n'.join(names) + '\n')
  for split, split_ids in (('train', TRAIN_IDS), ('test', TEST_IDS)):
    with open(os.path.join(root, f'modelnet40_{split}.txt'), 'w') as f:
      f.write('\n'.join(split_ids) + '\n')
  data = {}
  for i, object_id in enumerate(ids):
    cls = object_id.rpartition('_')[0]
    os.makedirs(os.path.join(root, cls), exist_ok=True)
    data[object_id] = object_rows(i, rows)
    np.savetxt(os.path.join(root, cls, object_id + '.txt'), data[object_id], fmt='%.6f',
               delimiter=',')
  return data


def manual_dir_of(data_dir) -> str:
  return os.path.join(data_dir, 'downloads', 'manual')  # TFDS's default manual_dir


@pytest.fixture(scope='module')
def release(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  return data_dir, write_release(manual_dir_of(data_dir))


@pytest.fixture(scope='module')
def synthetic_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  pipeline.prepare('modelnet40/synthetic_tiny', data_dir)
  return data_dir


# ------------------------------------------------------------------------------------------
# The manual_dir builder.
# ------------------------------------------------------------------------------------------

def test_builder_reads_the_release_layout(release):
  data_dir, rows = release
  builder = pipeline.prepare('modelnet40/normals2048', data_dir)
  assert builder.info.features['label'].names == list(modelnet40.CLASS_NAMES)
  assert builder.info.supervised_keys == ('points', 'label')
  for split, ids in (('train', TRAIN_IDS), ('test', TEST_IDS)):
    source = builder.as_data_source(split)
    assert len(source) == len(ids)
    for i, object_id in enumerate(ids):  # row i = line i of the id list
      example, want = source[i], rows[object_id].astype(np.float32)[:2048]
      assert example['points'].shape == (2048, 6) and example['points'].dtype == np.float32
      assert modelnet40.CLASS_NAMES[example['label']] == object_id.rpartition('_')[0]
      xyz = example['points'][:, :3]
      np.testing.assert_allclose(xyz.mean(0), 0.0, atol=1e-5)
      assert np.abs(xyz).max() == pytest.approx(1.0)
      np.testing.assert_allclose(xyz, point_cloud_augment.fit_unit_cube(want[:, :3]),
                                 atol=1e-6)
      np.testing.assert_allclose(example['points'][:, 3:], want[:, 3:], rtol=1e-6)
  assert builder.as_data_source('train')[1]['label'] == modelnet40.CLASS_NAMES.index(
      'night_stand')
  xyz_only = pipeline.prepare('modelnet40/points2048', data_dir).as_data_source('test')[0]
  assert xyz_only['points'].shape == (2048, 3)
  np.testing.assert_array_equal(xyz_only['points'],
                                builder.as_data_source('test')[0]['points'][:, :3])


def one_sentence(message: str) -> bool:
  return '\n' not in message and message.endswith('.') and message.count('; ') <= 1


def test_missing_files_say_which_files_go_where(tmp_path):
  data_dir = str(tmp_path)
  with pytest.raises(UserError) as error:
    pipeline.prepare('modelnet40', data_dir)
  message = str(error.value)
  assert one_sentence(message), message
  for needed in ('modelnet40_shape_names.txt', 'modelnet40_train.txt', 'modelnet40_test.txt',
                 'x,y,z,nx,ny,nz', f"'{manual_dir_of(data_dir)}'", 'modelnet40/synthetic'):
    assert needed in message, (needed, message)
  # A manual_dir holding something else is no better.
  os.makedirs(manual_dir_of(data_dir))
  open(os.path.join(manual_dir_of(data_dir), 'readme.txt'), 'w').close()
  with pytest.raises(UserError, match='modelnet40_shape_names.txt'):
    pipeline.prepare('modelnet40', data_dir)


@pytest.mark.parametrize('damage,match', [
    ('columns', r"object file '.*airplane_0001.txt' is malformed .* 6 comma-separated"),
    ('rows', r"object file '.*airplane_0001.txt' is malformed \(100 rows of 6 values\)"),
    ('names', r"modelnet40_shape_names.txt' lists 39 names"),
    ('object', r"object file '.*xbox_0003.txt' is missing"),
])
def test_malformed_release_names_the_file(tmp_path, damage, match):
  data_dir = str(tmp_path)
  root = os.path.join(manual_dir_of(data_dir), modelnet40.FOLDER)
  write_release(manual_dir_of(data_dir), names=modelnet40.CLASS_NAMES[:39] if damage == 'names'
                else modelnet40.CLASS_NAMES, rows=100 if damage == 'rows' else ROWS)
  if damage == 'columns':
    np.savetxt(os.path.join(root, 'airplane', 'airplane_0001.txt'), object_rows(0)[:, :5],
               delimiter=',')
  if damage == 'object':
    os.remove(os.path.join(root, 'xbox', 'xbox_0003.txt'))
  with pytest.raises(UserError, match=match) as error:
    pipeline.prepare('modelnet40/points2048', data_dir)
  assert '\n' not in str(error.value)


def test_synthetic_shapes_are_deterministic_balanced_and_in_the_unit_cube(synthetic_dir,
                                                                          tmp_path):
  builder = pipeline.prepare('modelnet40/synthetic_tiny', synthetic_dir)
  assert builder.info.features['label'].names == list(shape_synthesis.SHAPES)
  again = pipeline.prepare('modelnet40/synthetic_tiny', str(tmp_path)).as_data_source('test')
  source = builder.as_data_source('test')
  for i in range(len(source)):
    example = source[i]
    assert example['label'] == i % len(shape_synthesis.SHAPES)
    assert example['points'].shape == (64, 3)
    assert np.abs(example['points']).max() == pytest.approx(1.0)
    np.testing.assert_allclose(example['points'].mean(0), 0.0, atol=1e-5)
    np.testing.assert_array_equal(example['points'], again[i]['points'])
  assert not np.array_equal(source[0]['points'], builder.as_data_source('train')[0]['points'])


def test_synthetic_surfaces_have_their_shapes():
  rng = np.random.default_rng(0)
  sphere = shape_synthesis.canonical_surface(rng, 'sphere', 500)
  np.testing.assert_allclose(np.linalg.norm(sphere, axis=1), 1.0, atol=1e-9)
  cube = shape_synthesis.canonical_surface(rng, 'cube', 500)
  np.testing.assert_allclose(np.abs(cube).max(1), 1.0, atol=1e-9)  # every point on a face
  octahedron = shape_synthesis.canonical_surface(rng, 'octahedron', 500)
  np.testing.assert_allclose(np.abs(octahedron).sum(1), 1.0, atol=1e-9)
  # Uniform by area: a cube's 6 faces get about 1/6 of the points each.
  faces = np.argmax(np.abs(cube), 1) * 2 + (cube[np.arange(500), np.argmax(np.abs(cube), 1)] > 0)
  assert np.bincount(faces, minlength=6).min() > 500 / 6 * 0.6


# ------------------------------------------------------------------------------------------
# Augmentations.
# ------------------------------------------------------------------------------------------

def cloud(n=256, features=0, seed=0):
  rng = np.random.default_rng(seed)
  return {'inputs': rng.normal(size=(n, 3 + features)).astype(np.float32),
          'label': np.int32(3)}


def test_paper_jitter_scales_each_point_within_bounds_then_fits_the_unit_cube():
  x = cloud(features=3)
  raw = point_cloud_augment.PointCloudJitter(0.99, 1.01, normalize=False)
  out = raw.random_map(dict(x), np.random.default_rng(1))['inputs']
  ratio = out[:, :3] / x['inputs'][:, :3]
  assert ratio.min() >= 0.99 - 1e-6 and ratio.max() <= 1.01 + 1e-6
  np.testing.assert_allclose(ratio, ratio[:, :1].repeat(3, 1), rtol=1e-5)  # one per point
  assert ratio[:, 0].std() > 1e-3  # and points differ
  np.testing.assert_array_equal(out[:, 3:], x['inputs'][:, 3:])  # features untouched
  paper = point_cloud_augment.PointCloudJitter()
  a = paper.random_map(dict(x), np.random.default_rng(1))
  b = paper.random_map(dict(x), np.random.default_rng(1))
  c = paper.random_map(dict(x), np.random.default_rng(2))
  np.testing.assert_array_equal(a['inputs'], b['inputs'])
  assert not np.array_equal(a['inputs'], c['inputs'])
  np.testing.assert_allclose(a['inputs'][:, :3].mean(0), 0.0, atol=1e-6)
  assert np.abs(a['inputs'][:, :3]).max() == pytest.approx(1.0)
  assert a['label'] == 3
  # Scaling by a constant changes nothing once fitted to the unit cube.
  fitted = point_cloud_augment.fit_unit_cube(x['inputs'][:, :3])
  same = point_cloud_augment.PointCloudJitter(1.5, 1.5).random_map(
      {'inputs': fitted}, np.random.default_rng(0))['inputs']
  np.testing.assert_allclose(same, fitted, atol=1e-6)


def test_rotation_turns_points_and_normals_about_the_up_axis():
  x = cloud(features=3)
  turn = point_cloud_augment.PointCloudJitter(1.0, 1.0, rotate=True, normalize=False)
  out = turn.random_map(dict(x), np.random.default_rng(0))['inputs']
  for part in (slice(0, 3), slice(3, 6)):
    np.testing.assert_allclose(out[:, part][:, 2], x['inputs'][:, part][:, 2], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out[:, part][:, :2], axis=1),
                               np.linalg.norm(x['inputs'][:, part][:, :2], axis=1), rtol=1e-5)
  assert not np.allclose(out[:, :2], x['inputs'][:, :2])


def test_affine_scales_each_axis_and_shifts_the_whole_cloud_within_bounds():
  x = cloud()
  op = point_cloud_augment.PointCloudAffine()
  for seed in range(20):
    out = op.random_map(dict(x), np.random.default_rng(seed))['inputs']
    scale = (out[1] - out[0]) / (x['inputs'][1] - x['inputs'][0])
    np.testing.assert_allclose(out, x['inputs'] * scale + (out[0] - x['inputs'][0] * scale),
                               atol=1e-5)  # one scale and shift for all points
    shift = out[0] - x['inputs'][0] * scale
    assert np.all((scale > 2 / 3 - 1e-5) & (scale < 1.5 + 1e-5)), scale
    assert np.all(np.abs(shift) <= 0.2 + 1e-5), shift


def test_augment_registry_builds_from_the_data_config():
  data = modelnet40_perceiver.get_config().data
  (op,) = transforms.AUGMENTATIONS[data.augment](data)
  assert op == point_cloud_augment.PointCloudJitter(0.99, 1.01, 0.0, False)
  # A data config without point_* fields gets the PointNet++ defaults.
  (affine,) = transforms.AUGMENTATIONS['point_cloud_affine'](
      ml_collections.ConfigDict({'name': 'modelnet40'}))
  assert affine == point_cloud_augment.PointCloudAffine(2 / 3, 1.5, 0.2)
  data.point_scale = (1.1, 0.9)
  with pytest.raises(UserError, match=r'config.data.point_scale=\(1.1, 0.9\) is invalid'):
    transforms.AUGMENTATIONS['point_cloud'](data)


def test_train_batches_are_augmented_deterministically(synthetic_dir):
  config = modelnet40_perceiver.get_config('runlocal')
  config.data.data_dir = synthetic_dir

  def first(seed):
    return next(pipeline.make_train_iterator(config.data, global_batch_size=8, seed=seed))

  a, b, c = first(0), first(0), first(1)
  np.testing.assert_array_equal(a['inputs'], b['inputs'])
  assert not np.array_equal(a['inputs'], c['inputs'])
  assert a['inputs'].shape == (8, 64, 3) and a['inputs'].dtype == np.float32
  np.testing.assert_allclose(np.abs(a['inputs']).max(axis=(1, 2)), 1.0, rtol=1e-6)
  # Evaluation reads the stored clouds unchanged.
  batch = next(iter(pipeline.make_eval_iterator(config.data, 'test', global_batch_size=32)))
  stored = pipeline.prepare(config.data.name, synthetic_dir).as_data_source('test')
  np.testing.assert_array_equal(batch['inputs'][5], stored[5]['points'])


# ------------------------------------------------------------------------------------------
# Configs and a short run.
# ------------------------------------------------------------------------------------------

def test_paper_config_builds_the_paper_model():
  config = modelnet40_perceiver.get_config()
  validate_config(config)
  model = nnx.eval_shape(lambda: state_lib.build(config, (2048, 3)))
  assert model.preprocessor.num_channels == 3 * (2 * 64 + 1)  # 387 Fourier channels
  # ~45M, like the paper's ImageNet model.
  assert 40e6 < abstract_run(config, (2048, 3)).model.num_params < 50e6
  assert modelnet40_perceiver.get_config('normals').data.name == 'modelnet40/normals2048'
  assert modelnet40_perceiver.get_config('synthetic,steps=7').train.num_steps == 7


def test_runlocal_overfits_a_batch_and_eval_py_reproduces_its_metrics(synthetic_dir, tmp_path):
  # One fixed batch of 8 clouds (jitter stays), at a learning rate that overfits it.
  config = runlocal(modelnet40_perceiver, synthetic_dir, **fixed_batch(8, 10),
                    **{'optimizer.learning_rate': 1e-2})
  workdir = str(tmp_path / 'modelnet40')
  final = trainer.train_and_evaluate(config, workdir)
  # Near-uniform over 8 classes at the start: loss about ln 8 = 2.08.
  assert assert_loss_falls(workdir)[0] == pytest.approx(math.log(8.0), abs=0.2)
  assert final['num_examples'] == 32
  assert math.isfinite(final['loss']) and 0.0 <= final['accuracy'] <= 1.0
  run_main('eval.py', ['--config=configs/modelnet40_perceiver.py:runlocal',
                       f'--workdir={workdir}', f'--config.data.data_dir={synthetic_dir}'],
           devices=4)
  with open(os.path.join(workdir, 'eval_10.json')) as f:
    result = json.load(f)
  assert result['num_examples'] == 32
  for key in ('loss', 'accuracy'):
    assert result[key] == pytest.approx(final[key], rel=1e-5, abs=1e-6), key
