"""Tests for the embedded TFDS builders and the grain input pipeline."""

import json
import threading

import jax
import ml_collections
import numpy as np
import pytest

from perceiver_jax.data import builders, pipeline
from perceiver_jax.errors import DatasetError


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data_dir with every embedded dataset prepared once."""
  path = str(tmp_path_factory.mktemp('tfds'))
  for name in ('mnist1d', 'mnist1d/shuffled', 'digits'):
    pipeline.prepare(name, path)
  return path


def config(data_dir, name='digits', normalize=(0.0, 1.0), **kw):
  return ml_collections.ConfigDict(dict(
      name=name, data_dir=data_dir, train_split='train', eval_split='test',
      normalize=normalize, augment='', **kw))


def whole_split(cfg, split, batch=500):
  """All examples of a split, in stored order: (inputs, labels)."""
  xs, ys = [], []
  for b in pipeline.make_eval_iterator(cfg, split, global_batch_size=batch):
    real = b['mask'] == 1
    xs.append(b['inputs'][real])
    ys.append(b['label'][real])
  return np.concatenate(xs), np.concatenate(ys)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------


def test_dataset_info_splits_and_shapes(data_dir):
  spec = pipeline.dataset_info(config(data_dir, 'mnist1d'))
  assert spec == pipeline.DatasetSpec((40, 1), 10, 4000, 1000)
  spec = pipeline.dataset_info(config(data_dir, 'mnist1d/shuffled'))
  assert spec == pipeline.DatasetSpec((40, 1), 10, 4000, 1000)
  spec = pipeline.dataset_info(config(data_dir, 'digits'))
  assert spec == pipeline.DatasetSpec((8, 8, 1), 10, 1437, 360)
  assert spec.num_train + spec.num_eval == 1797


def test_mnist1d_matches_generator(data_dir):
  from mnist1d.data import get_dataset_args, make_dataset
  ref = make_dataset(get_dataset_args())
  b = pipeline.prepare('mnist1d', data_dir)
  assert b.info.features['inputs'].np_dtype == np.float32
  for split, x, y in (('train', 'x', 'y'), ('test', 'x_test', 'y_test')):
    inputs, labels = whole_split(config(data_dir, 'mnist1d'), split)
    np.testing.assert_array_equal(labels, ref[y])
    np.testing.assert_allclose(inputs[..., 0], ref[x], rtol=1e-6, atol=1e-6)


def test_mnist1d_shuffled_is_one_fixed_permutation(data_dir):
  plain, y_plain = whole_split(config(data_dir, 'mnist1d'), 'train')
  shuf, y_shuf = whole_split(config(data_dir, 'mnist1d/shuffled'), 'train')
  plain, shuf = plain[..., 0], shuf[..., 0]
  np.testing.assert_array_equal(y_plain, y_shuf)
  # Same multiset of values in every row.
  np.testing.assert_allclose(np.sort(plain, 1), np.sort(shuf, 1), atol=1e-5)
  # Shuffled column j is the plain column perm[j], for all rows at once.
  dist = np.abs(shuf.T[:, None, :] - plain.T[None, :, :]).max(-1)  # [40, 40]
  perm = dist.argmin(1)
  assert sorted(perm) == list(range(40))
  assert (perm != np.arange(40)).sum() > 30
  np.testing.assert_allclose(shuf, plain[:, perm], atol=1e-5)


def test_digits_split_is_stratified_partition_of_sklearn(data_dir):
  from sklearn.datasets import load_digits
  ref = load_digits()
  idx = builders.digits.split_indices()
  assert len(np.intersect1d(idx['train'], idx['test'])) == 0
  assert len(np.union1d(idx['train'], idx['test'])) == 1797
  for split in ('train', 'test'):
    inputs, labels = whole_split(config(data_dir), split)
    np.testing.assert_array_equal(inputs[..., 0], ref.images[idx[split]])
    np.testing.assert_array_equal(labels, ref.target[idx[split]])
  assert set(np.bincount(labels)) <= {35, 36, 37}  # test: 360 / 10 classes
  raw = pipeline.prepare('digits', data_dir).as_data_source('train')[0]['inputs']
  assert raw.dtype == np.uint8 and raw.shape == (8, 8, 1)


# ---------------------------------------------------------------------------
# Training iterator
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name,shape', [('mnist1d', (40, 1)),
                                        ('digits', (8, 8, 1))])
def test_train_batches_shapes_dtypes_normalization(data_dir, name, shape):
  cfg = config(data_dir, name, normalize=(8.0, 4.0))
  raw = take(pipeline.make_train_iterator(
      config(data_dir, name), global_batch_size=16, seed=3), 2)
  for b, r in zip(take(pipeline.make_train_iterator(
      cfg, global_batch_size=16, seed=3), 2), raw):
    assert set(b) == {'inputs', 'label'}
    assert b['inputs'].shape == (16, *shape) and b['inputs'].dtype == np.float32
    assert b['label'].shape == (16,) and b['label'].dtype == np.int32
    assert b['label'].min() >= 0 and b['label'].max() < 10
    np.testing.assert_allclose(b['inputs'], (r['inputs'] - 8.0) / 4.0,
                               rtol=1e-6)


def test_train_determinism_and_seed(data_dir):
  cfg = config(data_dir)
  a = take(pipeline.make_train_iterator(cfg, global_batch_size=32, seed=0), 5)
  b = take(pipeline.make_train_iterator(cfg, global_batch_size=32, seed=0), 5)
  c = take(pipeline.make_train_iterator(cfg, global_batch_size=32, seed=1), 5)
  assert_batches_equal(a, b)
  assert not np.array_equal(a[0]['label'], c[0]['label'])


def test_each_epoch_is_a_new_permutation(data_dir):
  cfg = config(data_dir)
  inputs, _ = whole_split(cfg, 'train')
  rows = lambda x: sorted(r.tobytes() for r in x)
  batches = take(pipeline.make_train_iterator(cfg, global_batch_size=479,
                                          seed=0), 6)  # 1437 = 3 * 479
  epochs = [np.concatenate([b['inputs'] for b in batches[i:i + 3]])
            for i in (0, 3)]
  for epoch in epochs:
    assert rows(epoch) == rows(inputs)  # every example exactly once
  assert not np.array_equal(epochs[0], epochs[1])


def test_iterator_state_restores_exact_position(data_dir):
  cfg = config(data_dir, 'mnist1d')
  it = pipeline.make_train_iterator(cfg, global_batch_size=24, seed=7)
  take(it, 170)  # past the first epoch (4000 / 24 < 170)
  state = it.get_state()
  json.dumps(state)  # grain's orbax handler stores it as JSON
  expected = take(it, 4)
  fresh = pipeline.make_train_iterator(cfg, global_batch_size=24, seed=7)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 4), expected)


@pytest.mark.parametrize('process_count', [2, 4])
def test_processes_split_the_single_process_global_batch(data_dir,
                                                         process_count):
  cfg = config(data_dir)
  steps = 20  # 20 * 96 > 1437: crosses an epoch boundary inside a batch
  single_it = pipeline.make_train_iterator(cfg, global_batch_size=96, seed=5)
  single = take(single_it, steps)
  its = [pipeline.make_train_iterator(cfg, global_batch_size=96, seed=5,
                                  process_index=p, process_count=process_count)
         for p in range(process_count)]
  locals_ = [take(it, steps) for it in its]
  # Positions are global steps: a checkpoint can move between process counts.
  assert all(it.get_state() == single_it.get_state() for it in its)
  for step in range(steps):
    for k in ('inputs', 'label'):
      assert locals_[0][step][k].shape[0] == 96 // process_count
      np.testing.assert_array_equal(
          np.concatenate([l[step][k] for l in locals_]), single[step][k])


# ---------------------------------------------------------------------------
# Eval iterator
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('process_count', [1, 3])
def test_eval_covers_split_once_in_order(data_dir, process_count):
  cfg = config(data_dir)
  inputs, labels = whole_split(cfg, 'test', batch=360)
  per_process = [list(pipeline.make_eval_iterator(
      cfg, 'test', global_batch_size=48, process_index=p,
      process_count=process_count)) for p in range(process_count)]
  assert len({len(b) for b in per_process}) == 1  # same step count everywhere
  assert len(per_process[0]) == 8  # ceil(360 / 48)
  got = {k: np.concatenate([b[k] for step in zip(*per_process) for b in step])
         for k in ('inputs', 'label', 'mask')}
  for b in per_process[0]:
    assert b['inputs'].shape == (48 // process_count, 8, 8, 1)
    assert b['mask'].dtype == np.float32
  assert got['mask'].sum() == 360
  np.testing.assert_array_equal(got['mask'], np.arange(384) < 360)
  np.testing.assert_array_equal(got['inputs'][:360], inputs)
  np.testing.assert_array_equal(got['label'][:360], labels)


def test_eval_can_be_iterated_twice(data_dir):
  ev = pipeline.make_eval_iterator(config(data_dir, 'mnist1d'), 'test',
                               global_batch_size=256)
  assert_batches_equal(list(ev), list(ev))


# ---------------------------------------------------------------------------
# Errors, preparation
# ---------------------------------------------------------------------------


def test_unknown_dataset_raises(data_dir):
  with pytest.raises(DatasetError, match='no_such_dataset') as e:
    pipeline.prepare('no_such_dataset', data_dir)
  assert data_dir in str(e.value)
  with pytest.raises(DatasetError, match="'mnist1d/nope'.*plain"):
    pipeline.prepare('mnist1d/nope', data_dir)


def test_unprepared_catalogue_dataset_raises(data_dir):
  with pytest.raises(DatasetError, match="'mnist' is not prepared") as e:
    pipeline.prepare('mnist', data_dir)
  # No command that needs TensorFlow or a network: the way out is in docs/datasets.md.
  assert data_dir in str(e.value) and 'docs/datasets.md' in str(e.value)
  assert 'tfds build' not in str(e.value)


def test_unknown_split_and_bad_batch_raise(data_dir):
  cfg = config(data_dir)
  with pytest.raises(DatasetError,
                     match=r"'validation'.*\['test', 'train'\]") as e:
    pipeline.make_eval_iterator(cfg, 'validation', global_batch_size=8)
  assert f"'{data_dir}'" in str(e.value)
  cfg.train_split = 'validation'
  with pytest.raises(DatasetError, match='digits'):
    pipeline.dataset_info(cfg)
  with pytest.raises(DatasetError, match='multiple'):
    pipeline.make_train_iterator(config(data_dir), global_batch_size=10, seed=0,
                             process_count=4)


def test_prepare_is_idempotent(data_dir, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('dataset rebuilt')
  monkeypatch.setattr(builders.Digits, 'download_and_prepare', fail)
  assert pipeline.prepare('digits', data_dir).info.splits['train'].num_examples == 1437


def test_concurrent_prepare_builds_once(tmp_path, monkeypatch):
  calls = []
  original = builders.Digits.download_and_prepare
  def counting(self, *args, **kwargs):
    calls.append(1)
    return original(self, *args, **kwargs)
  monkeypatch.setattr(builders.Digits, 'download_and_prepare', counting)
  errors = []
  def run():
    try:
      pipeline.prepare('digits', str(tmp_path))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  threads = [threading.Thread(target=run) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and len(calls) == 1


def test_to_global_assembles_sharded_arrays(data_dir):
  n = jax.device_count()
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('data', None, None, None))
  batch = next(pipeline.make_train_iterator(config(data_dir),
                                        global_batch_size=2 * n, seed=0))
  out = pipeline.to_global(batch, sharding)
  assert out['inputs'].shape == (2 * n, 8, 8, 1)
  assert out['label'].sharding.spec == jax.sharding.PartitionSpec('data')
  np.testing.assert_array_equal(np.asarray(out['inputs']), batch['inputs'])
  np.testing.assert_array_equal(np.asarray(out['label']), batch['label'])


def test_scale_noise_scales_each_example_and_is_deterministic():
  from perceiver_jax.data.transforms import AUGMENTATIONS
  import ml_collections
  config = ml_collections.ConfigDict(dict(scale_range=(0.5, 2.0), noise_std=0.0))
  (op,) = AUGMENTATIONS['scale_noise'](config)
  x = np.linspace(1.0, 2.0, 40, dtype=np.float32)[:, None]
  out = op.random_map({'inputs': x}, np.random.default_rng(3))['inputs']
  again = op.random_map({'inputs': x}, np.random.default_rng(3))['inputs']
  np.testing.assert_array_equal(out, again)
  assert out.dtype == np.float32 and out.shape == x.shape
  ratio = out / x  # without noise: one factor for the whole example, within the range
  np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-6)
  assert 0.5 <= ratio[0, 0] <= 2.0
  (noisy,) = AUGMENTATIONS['scale_noise'](ml_collections.ConfigDict(dict(noise_std=0.1)))
  out = noisy.random_map({'inputs': np.zeros((4000, 1), np.float32)},
                         np.random.default_rng(0))['inputs']
  assert abs(out.std() - 0.1) < 0.01  # the default scale leaves zeros at zero


def test_random_shift_translates_by_at_most_one_and_is_deterministic():
  from perceiver_jax.data.transforms import RandomShift
  x = np.arange(64, dtype=np.float32).reshape(8, 8, 1)
  op = RandomShift(1)
  seen = set()
  for i in range(40):
    out = op.random_map({'inputs': x}, np.random.default_rng(i))['inputs']
    assert out.shape == x.shape
    again = op.random_map({'inputs': x}, np.random.default_rng(i))['inputs']
    np.testing.assert_array_equal(out, again)
    # The centre 6x6 of the output is the input's centre shifted by (dy, dx) in [-1, 1].
    match = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
             if np.array_equal(out[1:7, 1:7], x[1 - dy:7 - dy, 1 - dx:7 - dx])]
    assert len(match) == 1
    seen.add(match[0])
  assert len(seen) > 4  # many different shifts are drawn
