"""Optical-flow frame pairs warped from scikit-image's photographs (offline TFDS).

`skimage.data` ships real photographs inside the package. Each example takes a
random crop of one of them as frame 2, draws a random smooth flow field
(`flow_synthesis.random_flow`, AutoFlow-style) and makes frame 1 by bilinear
backward warping: frame1(y, x) = frame2(y + dy, x + dx). So the stored flow is
the exact forward flow from frame 1 to frame 2 on frame 1's grid, channels
(dx, dy) in pixels, the Perceiver IO flow decoder's convention (see
`flow_synthesis`). Frame 1 is sampled from a crop padded by a margin larger
than `max_displacement`, so it is real image content everywhere; `valid` marks
the frame-1 pixels whose target (y + dy, x + dx) lies inside frame 2 (the others
move out of view, their flow is still exact).

Sources, split by image (no test image, nor a crop of it, is in train):
  train (16): astronaut, rocket, hubble_deep_field, immunohistochemistry,
    retina, stereo_motorcycle left and right views, camera, moon, brick,
    grass, gravel, clock, page, text, cell
  test (3): chelsea, coffee, coins
Greyscale images are repeated to 3 channels. Synthetic images (colorwheel,
checkerboard, logo, binary_blobs, ...) are left out; `cat` is `chelsea`.
Example i of a split uses source i mod (number of sources of the split), so
every source contributes equally; a crop is redrawn (up to 20 times) while
its grey-level standard deviation is below 8 (flat sky or black borders carry
no flow signal), and is mirrored left-right with probability 1/2. All draws
come from `np.random.default_rng([seed, split, i])` (split: train 0, test 1),
so an example does not depend on the others or on the split sizes.

Features: `frames` uint8 [2, S, S, 3] (frame 1, frame 2), `flow` float32
[S, S, 2] (dx, dy), `valid` bool [S, S], `source` int32 (index into SOURCES).

Configs:
  crop64  S=64, 10000 train / 1000 test, max displacement 8 px, max
          derivative 1 px/px (default)
  tiny    S=16, 32 train / 12 test, max displacement 3 px (for tests)
"""

from __future__ import annotations

import dataclasses

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from perceiver_jax.data import flow_synthesis

TRAIN_SOURCES = (
    'astronaut', 'rocket', 'hubble_deep_field', 'immunohistochemistry',
    'retina', 'stereo_motorcycle_left', 'stereo_motorcycle_right', 'camera',
    'moon', 'brick', 'grass', 'gravel', 'clock', 'page', 'text', 'cell')
TEST_SOURCES = ('chelsea', 'coffee', 'coins')
SOURCES = TRAIN_SOURCES + TEST_SOURCES  # `source` feature = index in this
SPLIT_SOURCES = {'train': TRAIN_SOURCES, 'test': TEST_SOURCES}
SPLIT_IDS = {'train': 0, 'test': 1}  # part of each example's seed
MIN_CROP_STD = 8.0  # grey levels (0..255)
MAX_CROP_TRIES = 20


def load_source(name: str) -> np.ndarray:
  """One source photograph from `skimage.data` as uint8 [H, W, 3]."""
  # On use: the pipeline loads every builder; only preparing this one needs scikit-image.
  from skimage import data as skdata  # pylint: disable=g-import-not-at-top

  if name.startswith('stereo_motorcycle_'):
    left, right, _ = skdata.stereo_motorcycle()
    image = left if name.endswith('left') else right
  else:
    image = getattr(skdata, name)()
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'skimage.data.{name} is {image.dtype}, expected uint8.')
  if image.ndim == 2:
    image = np.repeat(image[:, :, None], 3, axis=2)
  return np.ascontiguousarray(image[:, :, :3])


def margin(max_displacement: float) -> int:
  """Pixels of context around frame 2 that frame 1 may sample from."""
  return int(np.ceil(max_displacement)) + 1


def make_example(image: np.ndarray, rng: np.random.Generator, *, size: int,
                 max_displacement: float, max_gradient: float
                 ) -> dict[str, np.ndarray]:
  """One frame pair from one source image [H, W, 3] (uint8).

  Returns `frames` uint8 [2, size, size, 3], `flow` float32 [size, size, 2]
  (dx, dy), `valid` bool [size, size], as described in the module docstring.
  """
  m = margin(max_displacement)
  big = size + 2 * m
  h, w = image.shape[:2]
  if h < big or w < big:
    raise ValueError(f'Source image {image.shape} is smaller than {big}x{big}.')
  for _ in range(MAX_CROP_TRIES):
    y0, x0 = rng.integers(0, h - big + 1), rng.integers(0, w - big + 1)
    crop = image[y0:y0 + big, x0:x0 + big]
    if crop[m:m + size, m:m + size].mean(-1).std() >= MIN_CROP_STD:
      break
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  frame2 = crop[m:m + size, m:m + size]
  flow = flow_synthesis.random_flow(
      rng, (size, size), max_displacement=max_displacement,
      max_gradient=max_gradient)
  ys, xs = flow_synthesis.pixel_grid(size, size)
  frame1, _ = flow_synthesis.bilinear_sample(
      crop, ys + m + flow[..., 1], xs + m + flow[..., 0])
  _, valid = flow_synthesis.backward_warp(frame2, flow)
  frame1 = np.clip(np.round(frame1), 0, 255).astype(np.uint8)
  return {'frames': np.stack([frame1, frame2]), 'flow': flow, 'valid': valid}


@dataclasses.dataclass
class SkimageFlowConfig(tfds.core.BuilderConfig):
  """Crop size, split sizes and flow bounds of one version of the dataset."""

  crop_size: int = 64
  num_train: int = 10000
  num_test: int = 1000
  max_displacement: float = 8.0
  max_gradient: float = 1.0
  seed: int = 0


class SkimageFlow(tfds.core.GeneratorBasedBuilder):
  """Frame pairs with exact flow, warped from skimage.data photographs."""

  # TFDS derives this from the package via `importlib_resources`, which is
  # not a declared dependency; giving it directly avoids that import.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Backward-warped crops, split by source image.'}
  # Known before preparation, so a bad split name fails before anything is built.
  SPLITS = ('train', 'test')
  BUILDER_CONFIGS = [
      SkimageFlowConfig(
          name='crop64',
          description='64x64 crops, 10000 train / 1000 test, |flow| <= 8 px.'),
      SkimageFlowConfig(
          name='tiny', crop_size=16, num_train=32, num_test=12,
          max_displacement=3.0,
          description='16x16 crops, 32 train / 12 test, for tests.'),
  ]
  DEFAULT_CONFIG_NAME = 'crop64'

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.crop_size
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'frames': tfds.features.Tensor(shape=(2, s, s, 3), dtype=np.uint8),
            'flow': tfds.features.Tensor(shape=(s, s, 2), dtype=np.float32),
            'valid': tfds.features.Tensor(shape=(s, s), dtype=np.bool_),
            'source': tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
        # Not (inputs, label): the classification pipeline must refuse it.
        supervised_keys=None,
        # Keep generator order on disk (TFDS would hash-shuffle by key), so
        # row i of a split is example i and eval order is known.
        disable_shuffling=True,
        homepage='https://scikit-image.org/docs/stable/api/skimage.data.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The photographs ship with scikit-image.
    cfg = self.builder_config
    sizes = {'train': cfg.num_train, 'test': cfg.num_test}
    return {split: self._generate_examples(split, sizes[split])
            for split in self.SPLITS}

  def _generate_examples(self, split: str, num: int):
    cfg = self.builder_config
    names = SPLIT_SOURCES[split]
    images = [load_source(name) for name in names]
    for i in range(num):
      rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], i])
      k = i % len(names)
      example = make_example(
          images[k], rng, size=cfg.crop_size,
          max_displacement=cfg.max_displacement, max_gradient=cfg.max_gradient)
      # Key = example index, so row i of a split is reproducible on its own.
      yield i, {**example, 'source': np.int32(SOURCES.index(names[k]))}
