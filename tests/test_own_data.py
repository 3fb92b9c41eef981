"""Your own data (docs/datasets.md): a builder module, an npz folder and an image folder
train end to end offline; folder splits are seeded and disjoint; mistakes are one sentence."""

import os
import pickle
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from perceiver_jax import trainer
from perceiver_jax.data import own_data
from perceiver_jax.data import pipeline
from perceiver_jax.data.builders import folders
from perceiver_jax.errors import DatasetError
from perceiver_jax.tasks.image_classification import ImageClassificationTask
from tests.helpers import ROOT, TINY, set_dotted, tiny_mnist1d_config

DOCS = os.path.join(ROOT, 'docs', 'datasets.md')


def docs_python_blocks() -> list[str]:
  """The ```python blocks of docs/datasets.md: the builder module, then the folder script."""
  with open(DOCS) as f:
    return re.findall(r'```python\n(.*?)```', f.read(), re.S)


def write_module(tmp_path, cls: str = 'MySequences', name: str = 'my_sequences.py') -> str:
  """docs/datasets.md's builder module, its class renamed to `cls` (one class name can be
  registered once per process)."""
  path = tmp_path / name
  path.write_text(docs_python_blocks()[0].replace('class MySequences(', f'class {cls}('))
  return str(path)


def write_npz_folder(root, sizes=(30, 20, 25), num_classes=3, length=40, with_id=False):
  """Files part<i>.npz of `sizes[i]` examples: inputs [n, length, 1], label [n] (and id)."""
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(0)
  start = 0
  for i, n in enumerate(sizes):
    label = rng.integers(0, num_classes, size=n)
    arrays = {'inputs': rng.normal(label[:, None, None], 1.0, (n, length, 1)).astype(np.float32),
              'label': label}
    if with_id:
      arrays['id'] = np.arange(start, start + n)
    np.savez(os.path.join(root, f'part{i}.npz'), **arrays)
    start += n
  return str(root)


def write_image_folder(root, per_class, size=(8, 8), classes=('cat', 'dog')):
  """root/<split>/<class>/<i>.png for per_class {split: count} (split '' = no split folders);
  size (h, w) or a list of sizes to cycle through."""
  rng = np.random.default_rng(0)
  sizes = size if isinstance(size, list) else [size]
  for split, n in per_class.items():
    for c, name in enumerate(classes):
      folder = os.path.join(root, split, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(n):
        h, w = sizes[i % len(sizes)]
        pixels = rng.integers(0, 80, (h, w, 3)) + 150 * c  # the class is the brightness
        Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f'{i}.png'))
  return str(root)


def tiny_image_config(**overrides):
  """configs/digits.py (2x2 patches) shrunk to TINY, for 8x8 RGB images."""
  from configs import digits
  return set_dotted(digits.get_config(), {**TINY, 'data.normalize': (127.5, 127.5),
                                          **overrides})


def train(config, tmp_path, num_classes):
  config = set_dotted(config, {'data.data_dir': str(tmp_path / 'tfds'),
                               'model.num_classes': num_classes, 'train.num_steps': 3,
                               'data.augment': '', 'checkpoint.every_steps': 3})
  return trainer.train_and_evaluate(config, str(tmp_path / 'run'))


# ------------------------------------------------------------------------------------------
# Training on each path
# ------------------------------------------------------------------------------------------


def test_trains_on_the_docs_builder_module(tmp_path):
  module = write_module(tmp_path)  # as written in docs/datasets.md
  config = tiny_mnist1d_config(**{'data.name': 'my_sequences', 'data.builder_module': module})
  final = train(config, tmp_path, num_classes=2)
  assert final['num_examples'] == 24
  assert 0.0 <= final['accuracy'] <= 1.0 and np.isfinite(final['loss'])
  prepared = pipeline.prepare('my_sequences', str(tmp_path / 'tfds'),
                              own=own_data.resolve(config.data))  # as the pipeline reads it
  assert prepared.info.splits['train'].num_examples == 64
  assert prepared.info.file_format.value == 'array_record'
  # grain worker processes (data.worker_count) unpickle the source without the module.
  read = subprocess.run(
      [sys.executable, '-c', 'import pickle, sys; print(len(pickle.load(sys.stdin.buffer)))'],
      input=pickle.dumps(prepared.as_data_source('test')), capture_output=True, check=True)
  assert read.stdout.decode().split()[-1] == '24'


def test_trains_on_an_npz_folder_with_a_seeded_split(tmp_path):
  source = write_npz_folder(tmp_path / 'npz')  # 75 examples -> 15 test (0.2)
  config = tiny_mnist1d_config(**{'data.name': 'npz_folder', 'data.source_dir': source})
  final = train(config, tmp_path, num_classes=3)
  assert final['num_examples'] == 15


def test_trains_on_an_image_folder_with_train_and_test_folders(tmp_path):
  # 12 x 10 images resized to 8 x 8 on preparation.
  source = write_image_folder(tmp_path / 'images', {'train': 10, 'test': 3}, size=(12, 10))
  config = tiny_image_config(**{'data.name': 'image_folder', 'data.source_dir': source,
                                'data.image_resize': (8, 8)})
  final = train(config, tmp_path, num_classes=2)
  assert final['num_examples'] == 6
  spec = pipeline.dataset_info(config.data)
  assert spec.input_shape == (8, 8, 3) and (spec.num_train, spec.num_eval) == (20, 6)


# ------------------------------------------------------------------------------------------
# Folders: features, splits, keys
# ------------------------------------------------------------------------------------------


def _data_config(**fields):
  from perceiver_jax.run import default_config
  return set_dotted(default_config(), {f'data.{k}': v for k, v in fields.items()}).data


def _ids(data_config, split):
  builder = pipeline.prepare(data_config.name, data_config.data_dir,
                             own=own_data.resolve(data_config))
  return [int(ex['id']) for ex in builder.as_data_source(split)]


def test_seeded_split_is_deterministic_disjoint_and_complete(tmp_path):
  source = write_npz_folder(tmp_path / 'npz', sizes=(40, 60), with_id=True)
  first = _data_config(name='npz_folder', source_dir=source, data_dir=str(tmp_path / 'a'))
  again = _data_config(name='npz_folder', source_dir=source, data_dir=str(tmp_path / 'b'))
  train, test = _ids(first, 'train'), _ids(first, 'test')
  assert len(test) == 20 and len(train) == 80
  assert not set(train) & set(test) and sorted(train + test) == list(range(100))
  assert train == sorted(train) and test == sorted(test)  # file and row order kept
  assert (_ids(again, 'train'), _ids(again, 'test')) == (train, test)  # another data_dir
  # The split is the documented permutation, not merely a repeatable one.
  assert test == folders.seeded_split(100, 0.2)['test'].tolist()
  other = _data_config(name='npz_folder', source_dir=source, data_dir=str(tmp_path / 'a'),
                       test_fraction=0.5)
  assert len(_ids(other, 'test')) == 50  # another fraction is another prepared copy


def test_npz_features_labels_and_class_names(tmp_path):
  source = write_npz_folder(tmp_path / 'npz', sizes=(10,), num_classes=4, with_id=True)
  (tmp_path / 'npz' / 'classes.txt').write_text('a\nb\nc\nd\ne\n')
  config = _data_config(name='npz_folder', source_dir=source, data_dir=str(tmp_path / 'd'))
  builder = pipeline.prepare(config.name, config.data_dir, own=own_data.resolve(config))
  features = builder.info.features
  assert features['label'].names == ['a', 'b', 'c', 'd', 'e']
  assert features['inputs'].shape == (40, 1) and features['inputs'].np_dtype == np.float32
  assert features['id'].shape == () and builder.info.supervised_keys == ('inputs', 'label')


def test_the_docs_folder_script_makes_folders_that_prepare(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  exec(docs_python_blocks()[1], {})  # pylint: disable=exec-used
  npz = _data_config(name='npz_folder', source_dir='my_npz', data_dir=str(tmp_path / 'd'))
  spec = pipeline.dataset_info(npz)
  assert (spec.input_shape, spec.num_classes, spec.num_train, spec.num_eval) == (
      (40, 1), 3, 240, 60)
  images = _data_config(name='image_folder', source_dir='my_images', image_resize=(16, 16),
                        data_dir=str(tmp_path / 'd'))
  spec = pipeline.dataset_info(images)
  assert (spec.input_shape, spec.num_classes, spec.num_train, spec.num_eval) == (
      (16, 16, 3), 2, 80, 20)


def test_two_folders_and_changed_files_do_not_collide(tmp_path):
  a = write_npz_folder(tmp_path / 'a' / 'data', sizes=(10,))
  b = write_npz_folder(tmp_path / 'b' / 'data', sizes=(10,))
  name = lambda src: own_data.resolve(_data_config(name='npz_folder', source_dir=src)).name
  assert name(a) != name(b) and name(a).startswith('npz_folder/data_')
  before = name(a)
  write_npz_folder(tmp_path / 'a' / 'data', sizes=(12,))  # same file, other contents
  assert name(a) != before


def test_image_folder_of_mixed_sizes_suits_the_image_classification_task(tmp_path):
  source = write_image_folder(tmp_path / 'images', {'': 5}, size=[(9, 7), (6, 11)])
  config = _data_config(name='image_folder', source_dir=source, data_dir=str(tmp_path / 'd'))
  builder = pipeline.prepare(config.name, config.data_dir, ('train', 'test'),
                             own=own_data.resolve(config))
  assert builder.info.features['image'].shape == (None, None, 3)
  assert ImageClassificationTask(num_classes=2).features(builder)
  test = builder.as_data_source('test')
  assert len(test) == 2 and {ex['image'].shape for ex in test} <= {(9, 7, 3), (6, 11, 3)}
  assert builder.info.features['label'].names == ['cat', 'dog']


# ------------------------------------------------------------------------------------------
# One sentence for each mistake
# ------------------------------------------------------------------------------------------


def _prepare(data_config):
  return pipeline.dataset_info(data_config)


def _one_sentence(message: str) -> None:
  assert '\n' not in message and message.rstrip().endswith('.')


def test_a_builder_named_like_a_catalogue_dataset_says_rename(tmp_path):
  module = write_module(tmp_path, 'Shapes3d', 'clash.py')
  config = _data_config(name='shapes3d', builder_module=module, data_dir=str(tmp_path / 'd'))
  with pytest.raises(DatasetError, match="'shapes3d', a name TFDS .* already uses; rename") as e:
    _prepare(config)
  _one_sentence(str(e.value))


def test_a_missing_module_or_builder_is_one_sentence(tmp_path):
  config = _data_config(name='mine', builder_module='no_such_module_for_perceiver',
                        data_dir=str(tmp_path / 'd'))
  with pytest.raises(DatasetError, match="'no_such_module_for_perceiver' cannot be imported"):
    _prepare(config)
  config.builder_module = str(tmp_path / 'missing.py')
  with pytest.raises(DatasetError, match='missing.py.* cannot be imported') as e:
    _prepare(config)
  _one_sentence(str(e.value))
  config.builder_module = write_module(tmp_path, 'OwnOtherName', 'other.py')
  with pytest.raises(DatasetError, match=r"no TFDS builder named 'mine' .*\['own_other_name'\]"):
    _prepare(config)


def test_an_empty_folder_is_one_sentence(tmp_path):
  (tmp_path / 'empty').mkdir()
  for kind, what in (('npz_folder', '.npz files'), ('image_folder', 'images in class')):
    config = _data_config(name=kind, source_dir=str(tmp_path / 'empty'),
                          data_dir=str(tmp_path / 'd'))
    with pytest.raises(DatasetError, match=f"'{tmp_path / 'empty'}' holds no {what}") as e:
      _prepare(config)
    _one_sentence(str(e.value))
  config.source_dir = str(tmp_path / 'nowhere')
  with pytest.raises(DatasetError, match='is not a folder'):
    _prepare(config)


def test_a_split_left_empty_by_test_fraction_is_one_sentence(tmp_path):
  source = write_npz_folder(tmp_path / 'npz', sizes=(2,))  # 0.2 * 2 rounds to no test example
  config = _data_config(name='npz_folder', source_dir=source, data_dir=str(tmp_path / 'd'))
  with pytest.raises(DatasetError, match='test_fraction=0.2 of 2 examples leaves an empty'):
    _prepare(config)
  config.test_fraction = 1.5
  with pytest.raises(DatasetError, match=r'test_fraction=1.5 is not in \(0, 1\)'):
    _prepare(config)


def test_an_unprepared_catalogue_dataset_says_it_is_not_prepared_offline(tmp_path):
  data_dir = str(tmp_path / 'd')
  with pytest.raises(DatasetError, match="'mnist' is not prepared in data_dir") as e:
    pipeline.prepare('mnist', data_dir)
  message = str(e.value)
  assert 'offline' in message and 'docs/datasets.md' in message and 'copy' in message
  assert 'tfds build' not in message
  _one_sentence(message)
