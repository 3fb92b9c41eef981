"""An ImageNet-shaped dataset of crops of scikit-image's photographs (offline TFDS).

The same features as TFDS `imagenet2012`, so one task and one config read both:
  image      JPEG-encoded RGB of variable size, decoded to uint8 [height, width, 3]
  label      ClassLabel: which of the 10 photographs in CLASSES the crop comes from
  file_name  Text, e.g. 'astronaut_00012.JPEG'
supervised_keys ('image', 'label'); splits 'train' and 'validation' (ImageNet's names).

Sources (real photographs shipped inside `skimage.data`; greyscale ones repeated to 3
channels, as ImageNet's few greyscale JPEGs decode): astronaut, chelsea, coffee, rocket,
hubble_deep_field, immunohistochemistry, retina, brick, grass, gravel.

Split by region, so no validation pixel is ever in a training image: training crops lie
in the left 3/4 of each photograph (columns [0, 3W/4)), validation crops in the right
quarter. Example i of a split is a crop of photograph i mod 10 (balanced classes): height
uniform in [48, 192] px (capped by the region), aspect width/height log-uniform in
[3/4, 4/3], position uniform; a crop is redrawn (up to 20 times) while its grey-level
standard deviation is below 8 (flat sky, black borders). Encoded as JPEG quality 90 by
PIL. All draws come from `np.random.default_rng([0, split, i])` (train 0, validation 1),
so an example depends on nothing else. 400 train / 100 validation examples.

No TensorFlow is needed: images are given to TFDS as JPEG bytes (its own encoder would
call TF), and `as_data_source` decodes them with PIL (OpenCV if installed).
"""

from __future__ import annotations

import io

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

CLASSES = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field',
           'immunohistochemistry', 'retina', 'brick', 'grass', 'gravel')
SPLIT_SIZES = {'train': 400, 'validation': 100}
SPLIT_IDS = {'train': 0, 'validation': 1}  # part of each example's seed
TRAIN_FRACTION = 0.75  # of each photograph's width, from the left
MIN_SIDE, MAX_SIDE = 48, 192  # crop height range in pixels
ASPECT_RANGE = (3 / 4, 4 / 3)
MIN_CROP_STD = 8.0  # grey levels (0..255)
MAX_CROP_TRIES = 20
JPEG_QUALITY = 90
SEED = 0


def load_photo(name: str) -> np.ndarray:
  """One photograph from `skimage.data` as uint8 [H, W, 3]."""
  # On use: the pipeline loads every builder; only preparing this one needs scikit-image.
  from skimage import data as skdata  # pylint: disable=g-import-not-at-top

  image = np.asarray(getattr(skdata, name)())
  if image.ndim == 2:
    image = np.repeat(image[:, :, None], 3, axis=2)
  return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def region(image: np.ndarray, split: str) -> np.ndarray:
  """The part of a photograph [H, W, 3] that `split` crops from (a view)."""
  cut = int(image.shape[1] * TRAIN_FRACTION)
  return image[:, :cut] if split == 'train' else image[:, cut:]


def random_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A crop of uint8 [H, W, 3] as described in the module docstring: uint8 [h, w, 3]."""
  height, width = image.shape[:2]
  for _ in range(MAX_CROP_TRIES):
    h = int(rng.integers(MIN_SIDE, min(MAX_SIDE, height) + 1))
    aspect = float(np.exp(rng.uniform(*np.log(ASPECT_RANGE))))
    w = int(np.clip(round(h * aspect), MIN_SIDE, width))
    top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
    crop = image[top:top + h, left:left + w]
    if crop.mean(-1).std() >= MIN_CROP_STD:
      break
  return crop


def encode_jpeg(image: np.ndarray) -> bytes:
  """uint8 [h, w, 3] -> JPEG bytes (PIL, quality JPEG_QUALITY)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=JPEG_QUALITY)
  return buffer.getvalue()


class PhotoCrops(tfds.core.GeneratorBasedBuilder):
  """Variable-size JPEG crops of 10 skimage photographs, labelled by photograph."""

  # TFDS derives this from the package via `importlib_resources`, which is
  # not a declared dependency; giving it directly avoids that import.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '400/100 crops of 10 photographs, split by region.'}
  # Known before preparation, so a bad split name fails before anything is built.
  SPLITS = ('train', 'validation')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=CLASSES),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        # Keep generator order on disk (TFDS would hash-shuffle by key), so
        # row i of a split is example i and eval order is known.
        disable_shuffling=True,
        homepage='https://scikit-image.org/docs/stable/api/skimage.data.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The photographs ship with scikit-image.
    return {split: self._generate_examples(split) for split in self.SPLITS}

  def _generate_examples(self, split: str):
    photos = [region(load_photo(name), split) for name in CLASSES]
    for i in range(SPLIT_SIZES[split]):
      rng = np.random.default_rng([SEED, SPLIT_IDS[split], i])
      label = i % len(CLASSES)
      name = f'{CLASSES[label]}_{i:05d}.JPEG'
      # Key = example index, so row i of a split is reproducible on its own.
      yield i, {'image': encode_jpeg(random_crop(photos[label], rng)), 'label': label,
                'file_name': name}
