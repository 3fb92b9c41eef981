"""Your own data without code: a folder of .npz files or of images, as a TFDS builder.

`config.data.name='npz_folder'` or `'image_folder'` with `config.data.source_dir=FOLDER`
(docs/datasets.md). perceiver_jax/data/own_data.py picks the builder config (keyed by the
folder's path, files and options), so different folders never share prepared files.

npz_folder: every `*.npz` file (found recursively, read in sorted path order) holds arrays
of one or more examples with a leading example axis, e.g. `inputs` [n, 40, 1] and `label`
[n]. Each array becomes a feature of its dtype and per-example shape; an integer scalar
`label` becomes a ClassLabel of max+1 classes, or of the names in an optional
`classes.txt` (one a line, in label order). supervised_keys are (inputs, label) when that
label is a ClassLabel.

image_folder: `<class>/<file>.png|jpg|...`, decoded with PIL. Classes are the sorted class
folder names. Features `image` uint8 [height, width, channels] (1 channel when every image is
greyscale, else RGB) and `label`; supervised_keys (image, label). With `image_resize`
(height, width) every image is resized (bilinear) to it; else they keep their size, stored
as a fixed-shape tensor when all share one and as encoded images [None, None, channels]
otherwise (the image_classification task crops those; the classification task needs one
size).

Splits: a folder with a `train/` subfolder takes its splits from the subfolders named
train, validation and test (each laid out as above). Otherwise examples (rows of the npz
files, or image files) are split 'train'/'test' by one seeded permutation: the first
round(n * test_fraction) of `np.random.default_rng(SPLIT_SEED).permutation(n)` are 'test'.
Within a split, examples keep the sorted file (and row) order.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from perceiver_jax.errors import DatasetError

SPLIT_SEED = 0  # fixed, so every run and machine sees the same split
SPLIT_NAMES = ('train', 'validation', 'test')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
GREY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'F')


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  """One source folder and its options. `files`: split -> sorted paths relative to
  source_dir (one 'all' entry when the seeded split applies)."""

  source_dir: str = ''
  files: dict = dataclasses.field(default_factory=dict, repr=False)  # logged by TFDS
  test_fraction: float = 0.2
  image_resize: tuple = ()


def list_files(kind: str, source_dir: str) -> dict[str, list[str]]:
  """split ('train', 'test', ... or 'all' for the seeded split) -> sorted relative paths
  of the data files of `kind` ('npz_folder' or 'image_folder'); raises if there are none."""
  split_mode = os.path.isdir(os.path.join(source_dir, 'train'))
  parts = [s for s in SPLIT_NAMES if os.path.isdir(os.path.join(source_dir, s))] \
      if split_mode else ['']
  files = {}
  for part in parts:
    top = os.path.join(source_dir, part)
    found = []
    for folder, dirs, names in os.walk(top):
      dirs.sort()
      depth = os.path.relpath(folder, top).count(os.sep) + (folder != top)
      for name in sorted(names):
        ext = os.path.splitext(name)[1].lower()
        # Images sit in <class>/ folders (any depth below them); npz files anywhere.
        if (kind == 'npz_folder' and ext == '.npz') or (
            kind == 'image_folder' and ext in IMAGE_EXTENSIONS and depth >= 1):
          found.append(os.path.relpath(os.path.join(folder, name), source_dir))
    files[part or 'all'] = sorted(found)
  if not any(files.values()):
    want = ('.npz files' if kind == 'npz_folder' else
            'images in class subfolders (<class>/<file>.png|jpg)')
    raise DatasetError(
        f"config.data.source_dir '{source_dir}' holds no {want} for dataset '{kind}'; put "
        "them there (or in its train/ and test/ subfolders), see docs/datasets.md.")
  return files


def seeded_split(num_examples: int, test_fraction: float) -> dict[str, np.ndarray]:
  """'train' and 'test' sorted example indices: disjoint, covering range(num_examples)."""
  order = np.random.default_rng(SPLIT_SEED).permutation(num_examples)
  num_test = int(round(num_examples * test_fraction))
  if not 0 < num_test < num_examples:
    raise DatasetError(
        f'config.data.test_fraction={test_fraction} of {num_examples} examples leaves an '
        'empty split; use a fraction that gives both splits an example, or train/ and test/ '
        'subfolders.')
  return {'train': np.sort(order[num_test:]), 'test': np.sort(order[:num_test])}


class _FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared by both folder builders: splits from the config's file lists."""

  code_path = epath.Path(__file__)
  pkg_dir_path = epath.Path(__file__).parent  # TFDS looks for README/CITATIONS there
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First version.'}

  def __init__(self, *, config: FolderConfig, **kwargs):
    super().__init__(config=config, **kwargs)
    # Known before preparation (pipeline checks split names before building).
    self.SPLITS = tuple(s for s in config.files if s != 'all') or ('train', 'test')

  def _path(self, rel: str) -> str:
    return os.path.join(self.builder_config.source_dir, rel)

  def _all_files(self) -> list[str]:
    return [f for fs in self.builder_config.files.values() for f in fs]

  def _info_with(self, features, supervised_keys) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=f'{self.name} from {self.builder_config.source_dir}',
        features=tfds.features.FeaturesDict(features),
        supervised_keys=supervised_keys,
        # Keep generator (sorted file) order on disk; TFDS would hash-shuffle by key.
        disable_shuffling=True)


# ---------------------------------------------------------------------------
# npz_folder
# ---------------------------------------------------------------------------


def npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{array name: (shape, dtype)} of an .npz file, read from the headers only."""
  try:
    out = {}
    with zipfile.ZipFile(path) as z:
      for member in z.namelist():
        with z.open(member) as f:
          version = np.lib.format.read_magic(f)
          read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
          shape, _, dtype = read(f)
        out[member.removesuffix('.npy')] = (tuple(shape), np.dtype(dtype))
    return out
  except Exception as e:  # not a zip, truncated, not .npy members
    raise DatasetError(f"'{path}' is not a readable .npz file ({type(e).__name__}: "
                       f"{' '.join(str(e).split())}); save it with numpy.savez.") from e


class NpzFolder(_FolderBuilder, skip_registration=True):
  """Examples from the rows of the arrays in a folder's .npz files."""

  name = 'npz_folder'

  def _layout(self):
    """Per-file row counts and the common {key: (per-example shape, dtype)}."""
    rows, spec, first = {}, None, None
    for rel in self._all_files():
      headers = npz_headers(self._path(rel))
      counts = {shape[0] if shape else None for shape, _ in headers.values()}
      if not headers or len(counts) != 1 or None in counts:
        raise DatasetError(
            f"'{self._path(rel)}' must hold arrays with one leading example axis of the "
            f"same length, but holds {({k: s for k, (s, _) in headers.items()})}; save "
            "arrays of shape [num_examples, ...] with numpy.savez.")
      rows[rel] = counts.pop()
      this = {k: (s[1:], d) for k, (s, d) in headers.items()}
      if spec is None:
        spec, first = this, rel
      elif this != spec:
        raise DatasetError(
            f"'{self._path(rel)}' holds {_describe(this)} but '{self._path(first)}' holds "
            f"{_describe(spec)}; every .npz file needs the same arrays, dtypes and "
            "per-example shapes.")
    return rows, spec

  def _label_feature(self):
    labels = np.concatenate([np.load(self._path(rel))['label'].ravel()
                             for rel in self._all_files()])
    if labels.size and labels.min() < 0:
      raise DatasetError(f"npz_folder '{self.builder_config.source_dir}' has a negative "
                         f"label ({labels.min()}); number the classes 0, 1, 2, ...")
    num_classes = int(labels.max()) + 1 if labels.size else 1
    names_file = os.path.join(self.builder_config.source_dir, 'classes.txt')
    if os.path.exists(names_file):
      names = [n.strip() for n in open(names_file).read().splitlines() if n.strip()]
      if len(names) < num_classes:
        raise DatasetError(f"'{names_file}' names {len(names)} classes but the labels go up "
                           f"to {num_classes - 1}; list one name per class, in label order.")
      return tfds.features.ClassLabel(names=names)
    return tfds.features.ClassLabel(num_classes=num_classes)

  def _info(self) -> tfds.core.DatasetInfo:
    _, spec = self._layout()
    features = {}
    for key, (shape, dtype) in spec.items():
      if key == 'label' and shape == () and dtype.kind in 'iu':
        features[key] = self._label_feature()
      elif dtype.kind in 'biuf':
        features[key] = tfds.features.Tensor(shape=shape, dtype=dtype.type)
      else:
        raise DatasetError(
            f"npz_folder '{self.builder_config.source_dir}' has array '{key}' of dtype "
            f"{dtype}; store numbers or booleans (text and objects are not supported).")
    # The supervised pair only when `label` is a class label (classification reads it so).
    keys = ('inputs', 'label') if 'inputs' in features and isinstance(
        features.get('label'), tfds.features.ClassLabel) else None
    return self._info_with(features, keys)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is in source_dir
    files = self.builder_config.files
    if 'all' not in files:
      return {split: self._generate_examples(fs, None) for split, fs in files.items()}
    rows, _ = self._layout()
    split = seeded_split(sum(rows.values()), self.builder_config.test_fraction)
    return {name: self._generate_examples(files['all'], idx) for name, idx in split.items()}

  def _generate_examples(self, files, indices):
    # Key = example index over all files in sorted order (before any split).
    wanted = None if indices is None else set(indices.tolist())
    start = 0
    for rel in files:
      with np.load(self._path(rel), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
      n = len(next(iter(arrays.values())))
      for row in range(n):
        if wanted is None or start + row in wanted:
          yield start + row, {k: v[row] for k, v in arrays.items()}
      start += n


def _describe(spec) -> str:
  return ', '.join(f"'{k}' {d} {list(s)}" for k, (s, d) in sorted(spec.items()))


# ---------------------------------------------------------------------------
# image_folder
# ---------------------------------------------------------------------------


def _class_of(rel: str, split_folders: bool) -> str:
  """'train/cat/x.png' (split_folders) or 'cat/x.png' -> 'cat'."""
  return rel.split(os.sep)[1 if split_folders else 0]


class ImageFolder(_FolderBuilder, skip_registration=True):
  """Examples from images in class subfolders."""

  name = 'image_folder'

  def _class(self, rel: str) -> str:
    return _class_of(rel, 'all' not in self.builder_config.files)

  def _classes(self) -> list[str]:
    return sorted({self._class(rel) for rel in self._all_files()})

  def _scan(self):
    """(channels, (height, width) or None when the sizes differ)."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    sizes, grey = set(), True
    for rel in self._all_files():
      try:
        with Image.open(self._path(rel)) as im:  # reads the header only
          sizes.add(im.size[::-1])
          grey &= im.mode in GREY_MODES
      except Exception as e:  # PIL raises several types for bad files
        raise DatasetError(f"Image '{self._path(rel)}' cannot be read by PIL "
                           f"({type(e).__name__}); delete or replace it.") from e
    resize = tuple(self.builder_config.image_resize)
    return 1 if grey else 3, resize or (sizes.pop() if len(sizes) == 1 else None)

  def _info(self) -> tfds.core.DatasetInfo:
    channels, size = self._scan()
    if size is None:  # encoded, decoded by PIL when read
      image = tfds.features.Image(shape=(None, None, channels), encoding_format='png')
    else:
      image = tfds.features.Tensor(shape=(*size, channels), dtype=np.uint8)
    return self._info_with({'image': image,
                            'label': tfds.features.ClassLabel(names=self._classes())},
                           ('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is in source_dir
    files = self.builder_config.files
    if 'all' not in files:
      return {split: self._generate_examples(fs) for split, fs in files.items()}
    split = seeded_split(len(files['all']), self.builder_config.test_fraction)
    return {name: self._generate_examples([files['all'][i] for i in idx])
            for name, idx in split.items()}

  def _generate_examples(self, files):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    classes = self._classes()
    feature = self.info.features['image']
    channels = feature.shape[-1]
    mode = 'L' if channels == 1 else 'RGB'
    for rel in files:
      with Image.open(self._path(rel)) as im:
        im.load()
        encoded = isinstance(feature, tfds.features.Image)
        if encoded and im.format in ('JPEG', 'PNG') and im.mode == mode:
          data = open(self._path(rel), 'rb').read()  # as stored: no re-encoding loss
        else:
          im = im.convert(mode)
          if not encoded and im.size[::-1] != feature.shape[:2]:
            im = im.resize(feature.shape[1::-1], Image.BILINEAR)
          if encoded:
            buffer = io.BytesIO()
            im.save(buffer, format='PNG')
            data = buffer.getvalue()
          else:
            data = np.asarray(im, np.uint8).reshape(feature.shape)
      # Key = path, so each example is traceable to its file.
      yield rel, {'image': data, 'label': classes.index(self._class(rel))}
