"""ModelNet40 point clouds as a TFDS builder: real objects from files in manual_dir, or
synthetic shapes generated offline.

Real data (configs points2048, normals2048): the widely used `modelnet40_normal_resampled`
release (PointNet++, Qi et al. 2017; 9,843 train / 2,468 test objects of 40 classes, 10,000
points each, sampled from the ModelNet40 CAD meshes). Unzip it into the TFDS manual_dir
(by default <data_dir>/downloads/manual, so <data_dir>/downloads/manual/
modelnet40_normal_resampled/...; the folder's contents directly in manual_dir work too):
  modelnet40_shape_names.txt   the 40 class names, one a line, in label order
  modelnet40_train.txt         object ids of the train split, one a line (airplane_0001)
  modelnet40_test.txt          the same for the test split
  <class>/<id>.txt             one row per point: x,y,z,nx,ny,nz (comma-separated)
The first `num_points` rows of each object are kept (what PointNet++'s loader does when it
does not use farthest-point sampling), centred on their mean and scaled so the largest |coordinate| is 1 (the Perceiver paper
zero-centres the clouds; the unit cube puts them in the Fourier features' [-1, 1] range).
With `normals` the unit normals follow as channels 3:6. The first run through the pipeline
(or `tfds build`) reads the files once into ArrayRecord under <data_dir>/modelnet40/.

Synthetic data (configs synthetic, synthetic_tiny): shape_synthesis.SHAPES (sphere, cube,
cylinder, cone, torus, pyramid, octahedron, tetrahedron) with random proportions, stretch,
turn about the up axis, small tilt and noise; example i of a split is shape i mod 8 drawn
from `np.random.default_rng([seed, split, i])` (train 0, test 1), so it is deterministic
and independent of the split sizes. Offline, for tests and `:runlocal` configs.

Features: `points` float32 [num_points, 3] (xyz; [num_points, 6] with normals), `label`
ClassLabel; supervised_keys (points, label). Rows keep the order of the id lists.
"""

from __future__ import annotations

import dataclasses
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from perceiver_jax.data import shape_synthesis
from perceiver_jax.data.point_cloud_augment import fit_unit_cube
from perceiver_jax.errors import UserError

# modelnet40_shape_names.txt of the release, in label order.
CLASS_NAMES = (
    'airplane', 'bathtub', 'bed', 'bench', 'bookshelf', 'bottle', 'bowl', 'car', 'chair',
    'cone', 'cup', 'curtain', 'desk', 'door', 'dresser', 'flower_pot', 'glass_box', 'guitar',
    'keyboard', 'lamp', 'laptop', 'mantel', 'monitor', 'night_stand', 'person', 'piano',
    'plant', 'radio', 'range_hood', 'sink', 'sofa', 'stairs', 'stool', 'table', 'tent',
    'toilet', 'tv_stand', 'vase', 'wardrobe', 'xbox')
FOLDER = 'modelnet40_normal_resampled'
SPLIT_IDS = {'train': 0, 'test': 1}  # part of each synthetic example's seed

_CITATION = """\
@inproceedings{wu20153d,
  title={3D ShapeNets: A Deep Representation for Volumetric Shapes},
  author={Wu, Zhirong and Song, Shuran and Khosla, Aditya and Yu, Fisher and Zhang, Linguang
          and Tang, Xiaoou and Xiao, Jianxiong},
  booktitle={CVPR}, year={2015}
}"""


def missing_files_message(manual_dir) -> str:
  """The one sentence a run without the ModelNet40 files fails with."""
  return (f"ModelNet40's files are not in manual_dir '{manual_dir}': unzip "
          f"{FOLDER}.zip there, so that {manual_dir}/{FOLDER}/ holds "
          "modelnet40_shape_names.txt, modelnet40_train.txt, modelnet40_test.txt and "
          "<class>/<id>.txt files of comma-separated x,y,z,nx,ny,nz rows (or use "
          "modelnet40/synthetic, which needs no files).")


def find_root(manual_dir) -> epath.Path:
  """The folder holding modelnet40_shape_names.txt: manual_dir/FOLDER or manual_dir."""
  manual_dir = epath.Path(manual_dir)
  for root in (manual_dir / FOLDER, manual_dir):
    if (root / 'modelnet40_shape_names.txt').exists():
      return root
  raise UserError(missing_files_message(manual_dir))


def read_lines(path: epath.Path) -> list[str]:
  if not path.exists():
    raise UserError(f"ModelNet40 file '{path}' is missing; unzip the complete {FOLDER}.zip "
                    "into manual_dir.")
  return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def check_class_names(root: epath.Path) -> None:
  names = tuple(read_lines(root / 'modelnet40_shape_names.txt'))
  if names != CLASS_NAMES:
    raise UserError(f"'{root / 'modelnet40_shape_names.txt'}' lists {len(names)} names that "
                    f"are not ModelNet40's 40 classes in order ({', '.join(CLASS_NAMES[:3])}, "
                    f"...); use the file from {FOLDER}.zip.")


def class_of(object_id: str, list_file: epath.Path) -> int:
  """'night_stand_0001' -> the label of 'night_stand' (class names hold underscores)."""
  name, _, number = object_id.rpartition('_')
  if name not in CLASS_NAMES or not number.isdigit():
    raise UserError(f"'{list_file}' lists object '{object_id}', which is not <class>_<number> "
                    "of a ModelNet40 class; use the list files from the release.")
  return CLASS_NAMES.index(name)


def read_object(path: epath.Path, num_points: int, normals: bool) -> np.ndarray:
  """The first num_points rows of one object file -> float32 [num_points, 3 or 6],
  xyz fitted to the unit cube."""
  if not path.exists():
    raise UserError(f"ModelNet40 object file '{path}' is missing; unzip the complete "
                    f"{FOLDER}.zip into manual_dir.")
  try:
    with path.open() as f:
      rows = np.loadtxt(f, delimiter=',', dtype=np.float32, max_rows=num_points, ndmin=2)
  except ValueError as e:
    rows = None
    problem = ' '.join(str(e).split())
  else:
    problem = f'{rows.shape[0]} rows of {rows.shape[1]} values'
  if rows is None or rows.shape[0] < num_points or rows.shape[1] != 6:
    raise UserError(f"ModelNet40 object file '{path}' is malformed ({problem}); it needs at "
                    f"least {num_points} rows of 6 comma-separated numbers x,y,z,nx,ny,nz.")
  points = rows if normals else rows[:, :3]
  points = points.copy()
  points[:, :3] = fit_unit_cube(rows[:, :3])
  return points


@dataclasses.dataclass
class ModelNet40Config(tfds.core.BuilderConfig):
  """Points per object, normals, and real (manual_dir) or synthetic data."""

  num_points: int = 2048
  normals: bool = False
  synthetic: bool = False
  num_train: int = 0  # synthetic only
  num_test: int = 0   # synthetic only
  seed: int = 0       # synthetic only


class ModelNet40(tfds.core.GeneratorBasedBuilder):
  """ModelNet40 (modelnet40_normal_resampled, from manual_dir) or synthetic shapes."""

  name = 'modelnet40'  # TFDS would derive 'model_net40' from the class name
  # TFDS derives this from the package via `importlib_resources`, which is
  # not a declared dependency; giving it directly avoids that import.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First num_points rows, unit cube; synthetic shapes.'}
  # Known before preparation, so a bad split name fails before anything is built.
  SPLITS = ('train', 'test')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Unzip {FOLDER}.zip (PointNet++) into manual_dir: modelnet40_shape_names.txt, '
      'modelnet40_train.txt, modelnet40_test.txt and <class>/<id>.txt files of '
      'x,y,z,nx,ny,nz rows. The synthetic configs need no files.')
  BUILDER_CONFIGS = [
      ModelNet40Config(name='points2048',
                       description='2048 points per object, xyz (from manual_dir).'),
      ModelNet40Config(name='normals2048', normals=True,
                       description='2048 points per object, xyz + normals (manual_dir).'),
      ModelNet40Config(name='synthetic', synthetic=True, num_points=128, num_train=4096,
                       num_test=1024,
                       description='8 synthetic shapes, 128 points, 4096 train / 1024 test.'),
      ModelNet40Config(name='synthetic_tiny', synthetic=True, num_points=64, num_train=64,
                       num_test=32,
                       description='8 synthetic shapes, 64 points, 64 train / 32 test.'),
  ]
  DEFAULT_CONFIG_NAME = 'points2048'

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    names = shape_synthesis.SHAPES if cfg.synthetic else CLASS_NAMES
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'points': tfds.features.Tensor(shape=(cfg.num_points, 6 if cfg.normals else 3),
                                           dtype=np.float32),
            'label': tfds.features.ClassLabel(names=names),
        }),
        supervised_keys=('points', 'label'),
        # Keep generator order on disk (TFDS would hash-shuffle by key), so row i of a
        # split is line i of its id list (or synthetic example i).
        disable_shuffling=True,
        homepage='https://modelnet.cs.princeton.edu/',
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    if cfg.synthetic:
      sizes = {'train': cfg.num_train, 'test': cfg.num_test}
      return {split: self._generate_examples(split, num=sizes[split]) for split in self.SPLITS}
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:  # missing or empty; the property hides the path in its message
      manual_dir = (getattr(dl_manager, '_manual_dir', None)
                    or os.path.join(dl_manager.download_dir, 'manual'))
      raise UserError(missing_files_message(manual_dir)) from None
    root = find_root(manual_dir)
    check_class_names(root)
    return {split: self._generate_examples(split, root=root) for split in self.SPLITS}

  def _generate_examples(self, split: str, root: epath.Path | None = None, num: int = 0):
    if self.builder_config.synthetic:
      yield from self._generate_synthetic(split, num)
    else:
      yield from self._generate_real(root, split)

  def _generate_real(self, root: epath.Path, split: str):
    cfg = self.builder_config
    list_file = root / f'modelnet40_{split}.txt'
    ids = read_lines(list_file)
    labels = [class_of(object_id, list_file) for object_id in ids]  # check all first
    for i, (object_id, label) in enumerate(zip(ids, labels)):
      path = root / CLASS_NAMES[label] / f'{object_id}.txt'
      # Key = line in the id list, so each example is traceable to its file.
      yield i, {'points': read_object(path, cfg.num_points, cfg.normals), 'label': label}

  def _generate_synthetic(self, split: str, num: int):
    cfg = self.builder_config
    shapes = shape_synthesis.SHAPES
    for i in range(num):
      rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], i])
      label = i % len(shapes)
      points = shape_synthesis.random_shape_cloud(rng, shapes[label], cfg.num_points)
      yield i, {'points': points, 'label': label}
