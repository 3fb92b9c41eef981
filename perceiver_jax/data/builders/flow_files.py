"""Optical-flow datasets read from files the user downloads (TFDS, manual_dir).

One builder, `flow_files`, with a config per dataset layout. The files go in
TFDS's manual_dir, `<data_dir>/downloads/manual/` unless `manual_dir` is
given (`--config.data.manual_dir` where the config has that field, or
`pipeline.prepare(..., manual_dir=...)`), each dataset in its own folder:

  flow_files/sintel_clean, flow_files/sintel_final (MPI-Sintel-complete.zip
  from http://sintel.is.tue.mpg.de, unzipped into <manual_dir>/sintel/):
    sintel/training/{clean,final}/<scene>/frame_0001.png, frame_0002.png, ...
    sintel/training/flow/<scene>/frame_0001.flo, ...  (frame i -> i+1)
    sintel/training/invalid/<scene>/frame_0001.png, ...
  flow_files/kitti2015 (data_scene_flow.zip from the KITTI 2015 scene-flow
  benchmark, unzipped into <manual_dir>/kitti2015/):
    kitti2015/training/image_2/000000_10.png, 000000_11.png, ...
    kitti2015/training/flow_occ/000000_10.png, ...
  flow_files/autoflow (AutoFlow's static_40k_png_{1..4}_of_4 archives,
  unzipped into <manual_dir>/autoflow/; any subset of the four parts):
    autoflow/static_40k_png_1_of_4/<sample>/im0.png, im1.png, forward.flo

The dataset folder itself (the one holding `training/` or the static_40k
parts) may also be given directly as manual_dir. Only the pairs with ground
truth are read (Sintel's and KITTI's test sets have none), defined by the flow
files: Sintel's frame_%04d.flo i pairs frames i and i+1, KITTI's
flow_occ/%06d_10.png pairs images _10 and _11, an AutoFlow sample pairs im0 and
im1. A file a pair needs that is missing fails preparation with one sentence
naming it.

Splits (deterministic; the test sets have no public flow, so `validation` is
held out of the training data):
  Sintel: scenes ambush_2, bamboo_2, cave_4, market_6, temple_2 (one per scene
    family, held out whole, so no validation frame neighbours a training frame)
    are `validation`; the other 18 scenes are `train`.
  KITTI 2015: pairs 000000-000159 are `train`, 000160-000199 `validation`.
  AutoFlow: a sample is `validation` when crc32 of its folder name mod 20 is 0
    (about 5%), else `train`; the rule holds for any subset of the parts.

Features (the same contract as `skimage_flow`): `frames` uint8 [2, H, W, 3]
(frame 1, frame 2), `flow` float32 [H, W, 2] forward flow frame 1 -> frame 2 on
frame 1's grid, channel 0 = dx (columns), channel 1 = dy (rows), in pixels,
`valid` bool [H, W] (flow is 0 where not valid), `scene` text and `index` int32
(Sintel: scene name and frame number of frame 1; KITTI: '%06d' and the pair
number; AutoFlow: '<part>/<sample>' and the sample's position in sorted
order). H and W are declared None (KITTI's sizes vary; Sintel's 436x1024 and
AutoFlow's are not enforced); a pair's frames and flow share one size.
`valid`: Sintel, 0 in the training/invalid mask (Sintel's README: nonzero marks
invalid pixels); occluded pixels have true flow and stay valid, as in Sintel's
'all' EPE (training/occlusions is not read). KITTI, the flow PNG's third
channel (flow_occ: known flow, occluded or not). AutoFlow, every pixel. Any
Middlebury 'unknown' value (|flow| > 1e9) or non-finite value is also invalid.

Preparing: the pipeline prepares it on first use when the files are present,
e.g. `python train.py --config=configs/<flow config>.py
--config.data.name=flow_files/sintel_final --config.data.data_dir=DATA` with the
files in DATA/downloads/manual/sintel/, or explicitly:
  python -c "from perceiver_jax.data import pipeline; pipeline.prepare(
      'flow_files/sintel_final', 'DATA', manual_dir='MANUAL')"
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from perceiver_jax.data import flow_io
from perceiver_jax.errors import UserError

SINTEL_VALIDATION_SCENES = ('ambush_2', 'bamboo_2', 'cave_4', 'market_6', 'temple_2')
KITTI_NUM_TRAIN = 160  # pairs 0..159 train, 160.. validation
AUTOFLOW_VALIDATION_MODULUS = 20  # crc32(sample) % 20 == 0 -> validation
AUTOFLOW_PARTS = re.compile(r'static_40k_png_\d+_of_\d+$')


@dataclasses.dataclass(frozen=True)
class Pair:
  """One frame pair with its files (absolute paths; mask may be None)."""

  key: str  # unique: frame 1's path relative to the dataset folder
  split: str
  scene: str
  index: int
  frame1: str
  frame2: str
  flow: str
  mask: str | None = None


# ---------------------------------------------------------------------------
# Layouts: which pairs a dataset folder holds and which needed files are missing
# ---------------------------------------------------------------------------


def _sorted_dirs(path: str) -> list[str]:
  return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def sintel_pairs(root: str, pass_name: str) -> tuple[list[Pair], list[str]]:
  """Pairs of training/<pass_name>, and the needed files that are missing."""
  flow_dir = os.path.join(root, 'training', 'flow')
  pairs, missing = [], []
  for scene in _sorted_dirs(flow_dir):
    split = 'validation' if scene in SINTEL_VALIDATION_SCENES else 'train'
    for name in sorted(os.listdir(os.path.join(flow_dir, scene))):
      match = re.fullmatch(r'frame_(\d{4})\.flo', name)
      if not match:
        continue
      i = int(match.group(1))
      frame = lambda j: os.path.join(root, 'training', pass_name, scene, f'frame_{j:04d}.png')
      pair = Pair(key=f'{pass_name}/{scene}/frame_{i:04d}', split=split, scene=scene,
                  index=i, frame1=frame(i), frame2=frame(i + 1),
                  flow=os.path.join(flow_dir, scene, name),
                  mask=os.path.join(root, 'training', 'invalid', scene, f'frame_{i:04d}.png'))
      missing += [p for p in (pair.frame1, pair.frame2, pair.mask) if not os.path.isfile(p)]
      pairs.append(pair)
  return pairs, missing


def kitti_pairs(root: str) -> tuple[list[Pair], list[str]]:
  """Pairs of KITTI 2015 training/, and the needed files that are missing."""
  flow_dir = os.path.join(root, 'training', 'flow_occ')
  pairs, missing = [], []
  for name in sorted(os.listdir(flow_dir)):
    match = re.fullmatch(r'(\d{6})_10\.png', name)
    if not match:
      continue
    i = int(match.group(1))
    image = lambda t: os.path.join(root, 'training', 'image_2', f'{i:06d}_{t}.png')
    pair = Pair(key=f'{i:06d}', split='train' if i < KITTI_NUM_TRAIN else 'validation',
                scene=f'{i:06d}', index=i, frame1=image(10), frame2=image(11),
                flow=os.path.join(flow_dir, name))
    missing += [p for p in (pair.frame1, pair.frame2) if not os.path.isfile(p)]
    pairs.append(pair)
  return pairs, missing


def autoflow_pairs(root: str) -> tuple[list[Pair], list[str]]:
  """Pairs of the static_40k parts present, and the needed files that are missing."""
  pairs, missing = [], []
  for part in (p for p in _sorted_dirs(root) if AUTOFLOW_PARTS.match(p)):
    for sample in _sorted_dirs(os.path.join(root, part)):
      folder = os.path.join(root, part, sample)
      crc = zlib.crc32(sample.encode())
      pair = Pair(key=f'{part}/{sample}', scene=f'{part}/{sample}', index=len(pairs),
                  split='validation' if crc % AUTOFLOW_VALIDATION_MODULUS == 0 else 'train',
                  frame1=os.path.join(folder, 'im0.png'),
                  frame2=os.path.join(folder, 'im1.png'),
                  flow=os.path.join(folder, 'forward.flo'))
      missing += [p for p in (pair.frame1, pair.frame2, pair.flow) if not os.path.isfile(p)]
      pairs.append(pair)
  return pairs, missing


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a dataset's folder is and what it holds, for finding it and for messages."""

  folder: str  # subfolder of manual_dir
  marker: str  # a directory the dataset folder must hold (AutoFlow: a static_40k part)
  expected: str  # the expected files, for messages
  get_it: str  # where the files come from, for messages


LAYOUTS = {
    'sintel': Layout(
        'sintel', 'training/flow',
        'training/{clean,final}/<scene>/frame_%04d.png, training/flow/<scene>/'
        'frame_%04d.flo and training/invalid/<scene>/frame_%04d.png',
        'unzip MPI-Sintel-complete.zip (http://sintel.is.tue.mpg.de) there'),
    'kitti2015': Layout(
        'kitti2015', 'training/flow_occ',
        'training/image_2/%06d_10.png, %06d_11.png and training/flow_occ/%06d_10.png',
        "unzip KITTI 2015's data_scene_flow.zip "
        '(https://www.cvlibs.net/datasets/kitti/eval_scene_flow.php) there'),
    'autoflow': Layout(
        'autoflow', '', 'static_40k_png_<k>_of_4/<sample>/im0.png, im1.png and forward.flo',
        "unzip AutoFlow's static_40k_png_*_of_4 archives "
        '(https://autoflow-google.github.io) there'),
}


def _pairs_of(config, root: str) -> tuple[list[Pair], list[str]]:
  if config.layout == 'sintel':
    return sintel_pairs(root, config.sintel_pass)
  if config.layout == 'kitti2015':
    return kitti_pairs(root)
  return autoflow_pairs(root)


def _has_marker(config, path: str) -> bool:
  layout = LAYOUTS[config.layout]
  if config.layout == 'autoflow':
    return os.path.isdir(path) and any(AUTOFLOW_PARTS.match(p) for p in os.listdir(path))
  return os.path.isdir(os.path.join(path, layout.marker))


def find_pairs(config, manual_dir: str) -> list[Pair]:
  """All pairs of `config`'s dataset under manual_dir; UserError (one sentence
  naming the expected paths) when the folder, a needed file, or any pair is missing."""
  layout = LAYOUTS[config.layout]
  manual_dir = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
  root = os.path.join(manual_dir, layout.folder)
  if not _has_marker(config, root) and _has_marker(config, manual_dir):
    root = manual_dir  # manual_dir names the dataset folder itself
  where = (f"Dataset 'flow_files/{config.name}' reads {layout.expected} from "
           f"'{root}'")
  fix = f"{layout.get_it}, or set manual_dir to the folder that holds '{layout.folder}/'"
  if not _has_marker(config, root):
    what = (f"no static_40k_png_<k>_of_4 folder is in '{root}'" if config.layout == 'autoflow'
            else f"'{os.path.join(root, layout.marker)}' does not exist")
    raise UserError(f'{where}, but {what}; {fix}.')
  pairs, missing = _pairs_of(config, root)
  if missing:
    shown = ', '.join(f"'{p}'" for p in missing[:3])
    raise UserError(f'{where}, but {len(missing)} needed files are missing '
                    f"(e.g. {shown}); {fix}.")
  if not pairs:
    raise UserError(f'{where}, but it holds no pair with ground-truth flow; {fix}.')
  return pairs


# ---------------------------------------------------------------------------
# Reading one pair
# ---------------------------------------------------------------------------


def _read_rgb(path: str) -> np.ndarray:
  # On use: the pipeline loads every builder; only preparing this one reads PNGs.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'), np.uint8)
  except OSError as e:
    raise UserError(f"'{path}' cannot be read as an image ({e}); replace it.") from e


def _read_mask(path: str) -> np.ndarray:
  """True where a mask PNG is nonzero (any channel), bool [H, W]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (on use, as in _read_rgb)
  try:
    with Image.open(path) as image:
      mask = np.asarray(image)
  except OSError as e:
    raise UserError(f"'{path}' cannot be read as an image ({e}); replace it.") from e
  return mask.any(axis=-1) if mask.ndim == 3 else mask.astype(bool)


def load_pair(config, pair: Pair) -> dict[str, np.ndarray]:
  """The example of one pair: frames uint8 [2, H, W, 3], flow float32
  [H, W, 2] (dx, dy; 0 where not valid), valid bool [H, W], scene, index."""
  first, second = _read_rgb(pair.frame1), _read_rgb(pair.frame2)
  if first.shape != second.shape:
    raise UserError(f"'{pair.frame1}' and '{pair.frame2}' differ in size; a frame "
                    'pair must have one size, replace the damaged file.')
  frames = np.stack([first, second])
  if config.layout == 'kitti2015':
    flow, valid = flow_io.read_kitti_flow(pair.flow)
  else:
    flow = flow_io.read_flo(pair.flow)
    valid = np.ones(flow.shape[:2], bool)
  if pair.mask is not None:
    mask = _read_mask(pair.mask)
    if mask.shape != flow.shape[:2]:
      raise UserError(f"'{pair.mask}' is {mask.shape[1]}x{mask.shape[0]} but "
                      f"'{pair.flow}' is {flow.shape[1]}x{flow.shape[0]}; replace "
                      'the damaged file.')
    valid &= ~mask
  known = np.isfinite(flow).all(-1) & (np.abs(flow) < flow_io.FLO_UNKNOWN).all(-1)
  valid &= known
  flow = np.where(valid[..., None], flow, 0.0).astype(np.float32)
  if frames.shape[1:3] != flow.shape[:2]:
    raise UserError(f"'{pair.flow}' is {flow.shape[1]}x{flow.shape[0]} but "
                    f"'{pair.frame1}' is {frames.shape[2]}x{frames.shape[1]}; "
                    'replace the damaged file.')
  return {'frames': frames, 'flow': flow, 'valid': valid, 'scene': pair.scene,
          'index': np.int32(pair.index)}


# ---------------------------------------------------------------------------
# The TFDS builder
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class FlowFilesConfig(tfds.core.BuilderConfig):
  """A dataset layout (`LAYOUTS` key) and, for Sintel, the render pass."""

  layout: str = 'sintel'
  sintel_pass: str = 'clean'


class FlowFiles(tfds.core.GeneratorBasedBuilder):
  """Sintel / KITTI 2015 / AutoFlow frame pairs with flow, from manual_dir."""

  code_path = epath.Path(__file__)  # as skimage_flow: avoids importlib_resources
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Sintel clean/final, KITTI 2015, AutoFlow static_40k.'}
  SPLITS = ('train', 'validation')
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  BUILDER_CONFIGS = [
      FlowFilesConfig(name='sintel_clean', layout='sintel', sintel_pass='clean',
                      description='MPI-Sintel training set, clean pass.'),
      FlowFilesConfig(name='sintel_final', layout='sintel', sintel_pass='final',
                      description='MPI-Sintel training set, final pass.'),
      FlowFilesConfig(name='kitti2015', layout='kitti2015',
                      description='KITTI 2015 flow training set (flow_occ).'),
      FlowFilesConfig(name='autoflow', layout='autoflow',
                      description='AutoFlow static_40k.'),
  ]
  DEFAULT_CONFIG_NAME = 'sintel_final'

  def check_manual_dir(self, manual_dir: str) -> None:
    """Raises UserError (one sentence) unless manual_dir holds this dataset."""
    find_pairs(self.builder_config, manual_dir)

  def _info(self) -> tfds.core.DatasetInfo:
    h = w = None  # sizes vary (KITTI) or are not checked (Sintel: 436x1024)
    # zlib: frames and flow are large and compress well; also allows None sizes.
    tensor = lambda shape, dtype: tfds.features.Tensor(
        shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB)
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'frames': tensor((2, h, w, 3), np.uint8),
            'flow': tensor((h, w, 2), np.float32),
            'valid': tensor((h, w), np.bool_),
            'scene': tfds.features.Text(),
            'index': tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=None,
        # Keep generator (sorted) order on disk, so eval order is known.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:  # missing or empty; the property hides the path in its message
      manual_dir = (getattr(dl_manager, '_manual_dir', None)
                    or os.path.join(dl_manager.download_dir, 'manual'))
    # Raises the one-sentence UserError when the files are not there.
    pairs = find_pairs(self.builder_config, manual_dir)
    # A split without pairs (e.g. only some Sintel scenes present) is left out:
    # TFDS cannot write an empty split, and asking for it then names the others.
    return {split: self._generate_examples([p for p in pairs if p.split == split])
            for split in self.SPLITS if any(p.split == split for p in pairs)}

  def _generate_examples(self, pairs):
    for pair in pairs:
      yield pair.key, load_pair(self.builder_config, pair)
