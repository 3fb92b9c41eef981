"""Kinetics-style audio-video clips with a class label, as a TFDS builder (no TensorFlow).

TFDS's own Kinetics builders need TensorFlow and the videos; this one reads clips that the
user has already decoded to numpy, or (config `synthetic`) generates small clips offline.

Config `k700` reads the user's files from the TFDS manual_dir (by default
`<data_dir>/downloads/manual/`), laid out as:

  annotations.csv   Kinetics' own CSV format, with a header line
                    `label,youtube_id,time_start,time_end,split` (the Kinetics-700-2020
                    train.csv and validate.csv concatenated work as they are); split is
                    `train`, `validate` (stored as split 'validation') or `test`.
  classes.txt       optional: one class name per line, line i = class i; without it the
                    classes are the sorted distinct labels of annotations.csv (for the full
                    Kinetics-700 CSV that is the released model's alphabetical order).
  clips/<youtube_id>_<time_start:06d>_<time_end:06d>.npz
                    one file per row (Kinetics' clip naming, e.g.
                    `clips/---QUuC4vJs_000084_000094.npz`) holding
                      video  uint8 [frames, 224, 224, 3]  RGB at 25 fps, frames >= 16
                      audio  float32 [samples] (or [samples, channels]: channel 0 is used),
                             48 kHz, values in [-1, 1], samples >= 30720
                    The first 16 frames and 30720 samples (0.64 s) are kept.
Rows whose clip file is absent are skipped (Kinetics videos disappear from YouTube; the
count skipped per split is logged); a split with no clip at all, an unreadable file or
arrays of the wrong shape or dtype stop preparation with one sentence naming the file.

Config `synthetic` (offline, deterministic, for `:runlocal` and tests): 4-frame 16x16 clips
panning over real photographs from `skimage.data` (split by image as in skimage_flow:
train from TRAIN_SOURCES, test from TEST_SOURCES) at 1 or 2 pixels per frame; the label is
the motion direction (0 right, 1 left, 2 down, 3 up: the direction the content moves in
the frame), and the audio is a tone whose pitch is set by the label: (2 + 2 * label)
cycles per frame, 64 samples per frame (256 samples), random amplitude in [0.3, 0.8] and
random phase. Example i of a split uses label i mod 4 and source (i // 4) mod (number of
sources); all draws come from `np.random.default_rng([seed, split, i])`.

Features: `video` uint8 [T, H, W, 3], `audio` float32 [S], `label` ClassLabel, `clip` text
(the clip's file stem, or 'synthetic-<split>-<i>'). Examples are stored in CSV / index order.
"""

from __future__ import annotations

import csv
import dataclasses
import os

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from perceiver_jax.data.builders import skimage_flow
from perceiver_jax.errors import UserError

CSV_COLUMNS = ('label', 'youtube_id', 'time_start', 'time_end', 'split')
# Kinetics' split names -> TFDS split names.
KINETICS_SPLITS = {'train': 'train', 'validate': 'validation', 'test': 'test'}
SYNTHETIC_CLASSES = ('right', 'left', 'down', 'up')
# (dy, dx) of the content per frame for each synthetic class.
SYNTHETIC_MOTION = ((0, 1), (0, -1), (1, 0), (-1, 0))
MIN_CROP_STD = 8.0  # grey levels: flat crops carry no visible motion
MAX_CROP_TRIES = 10


def layout_sentence(manual_dir: str, cfg: 'KineticsFilesConfig') -> str:
  """What to put where, in the words every manual_dir error ends with."""
  return (f'put annotations.csv (header {",".join(CSV_COLUMNS)}) and one '
          f'clips/<youtube_id>_<time_start:06d>_<time_end:06d>.npz per row (video uint8 '
          f'[>={cfg.num_frames}, {cfg.image_size}, {cfg.image_size}, 3], audio float32 '
          f'[>={cfg.audio_samples}] in [-1, 1]) in {manual_dir}')


def clip_name(youtube_id: str, time_start, time_end) -> str:
  """Kinetics' clip naming: '<id>_<start:06d>_<end:06d>'."""
  return f'{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}'


def read_annotations(manual_dir: str, cfg) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
  """(class names, {tfds split: [(clip name, label name)]}) from manual_dir's files."""
  path = os.path.join(manual_dir, 'annotations.csv')
  if not os.path.isfile(path):
    raise UserError(f'Kinetics annotations.csv is missing: {layout_sentence(manual_dir, cfg)}.')
  rows = {split: [] for split in KINETICS_SPLITS.values()}
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or not set(CSV_COLUMNS) <= set(reader.fieldnames):
      raise UserError(f'{path} has columns {reader.fieldnames}, not the Kinetics header; '
                      f'{layout_sentence(manual_dir, cfg)}.')
    for line, row in enumerate(reader, start=2):
      split = KINETICS_SPLITS.get((row['split'] or '').strip())
      try:
        name = clip_name(row['youtube_id'].strip(), row['time_start'], row['time_end'])
      except (TypeError, ValueError, AttributeError):
        name = None
      if split is None or name is None or not (row['label'] or '').strip():
        raise UserError(f'Line {line} of {path} is not a Kinetics row (a label, a youtube_id, '
                        f'integer times and a split of {sorted(KINETICS_SPLITS)}); fix it or '
                        f'{layout_sentence(manual_dir, cfg)}.')
      rows[split].append((name, row['label'].strip()))
  classes_path = os.path.join(manual_dir, 'classes.txt')
  if os.path.isfile(classes_path):
    with open(classes_path) as f:
      classes = [line.strip() for line in f if line.strip()]
  else:
    classes = sorted({label for split_rows in rows.values() for _, label in split_rows})
  unknown = sorted({label for r in rows.values() for _, label in r} - set(classes))
  if unknown or len(classes) > cfg.num_classes:
    raise UserError(f'{manual_dir} names {len(classes)} classes (not in classes.txt: '
                    f'{unknown[:3]}), but config {cfg.name} has {cfg.num_classes}; list at most '
                    f'{cfg.num_classes} classes covering every label of annotations.csv.')
  return classes, {split: r for split, r in rows.items() if r}


def load_clip(path: str, cfg) -> dict[str, np.ndarray]:
  """One clip file -> {'video' uint8 [T, H, W, 3], 'audio' float32 [S]}, cut to the config."""
  t, s, size = cfg.num_frames, cfg.audio_samples, cfg.image_size
  try:
    with np.load(path, allow_pickle=False) as npz:
      video, audio = np.asarray(npz['video']), np.asarray(npz['audio'])
  except Exception as e:  # corrupt zips, missing keys, pickled arrays: many types
    raise UserError(f'Clip {path} cannot be read ({type(e).__name__}); write it with '
                    'np.savez(path, video=..., audio=...).') from e
  if audio.ndim == 2:
    audio = audio[:, 0]
  if (video.dtype != np.uint8 or video.ndim != 4 or video.shape[0] < t
      or video.shape[1:] != (size, size, 3)):
    raise UserError(f'Clip {path} has video {video.dtype} {list(video.shape)}, but config '
                    f'{cfg.name} needs uint8 [>={t}, {size}, {size}, 3].')
  if audio.dtype != np.float32 or audio.ndim != 1 or audio.shape[0] < s:
    raise UserError(f'Clip {path} has audio {audio.dtype} {list(audio.shape)}, but config '
                    f'{cfg.name} needs float32 [>={s}] in [-1, 1].')
  return {'video': np.ascontiguousarray(video[:t]), 'audio': np.ascontiguousarray(audio[:s])}


def synthetic_clip(image: np.ndarray, label: int, rng: np.random.Generator, *, frames: int,
                   size: int, samples: int) -> dict[str, np.ndarray]:
  """A clip panning over `image` [H, W, 3] uint8 in direction `label`, with its tone.

  Returns video uint8 [frames, size, size, 3] and audio float32 [samples]; see the module
  docstring for what they show and sound like.
  """
  speed = int(rng.integers(1, 3))
  dy, dx = SYNTHETIC_MOTION[label]
  span = size + speed * (frames - 1)
  h, w = image.shape[:2]
  for _ in range(MAX_CROP_TRIES):
    y0, x0 = int(rng.integers(0, h - span + 1)), int(rng.integers(0, w - span + 1))
    region = image[y0:y0 + span, x0:x0 + span]
    if region.mean(-1).std() >= MIN_CROP_STD:
      break
  # Content moving by (dy, dx) per frame = a window moving by (-dy, -dx) over it.
  oy = span - size if dy > 0 else 0
  ox = span - size if dx > 0 else 0
  video = np.stack([region[oy - dy * speed * t:oy - dy * speed * t + size,
                           ox - dx * speed * t:ox - dx * speed * t + size]
                    for t in range(frames)])
  cycles = (2 + 2 * label) * frames  # 2 + 2 * label cycles per frame, over the clip
  phase = rng.uniform(0.0, 2 * np.pi)
  amplitude = rng.uniform(0.3, 0.8)
  n = np.arange(samples)
  audio = amplitude * np.sin(2 * np.pi * cycles * n / samples + phase)
  return {'video': video, 'audio': audio.astype(np.float32)}


@dataclasses.dataclass(kw_only=True)
class KineticsFilesConfig(tfds.core.BuilderConfig):
  """Clip sizes; synthetic configs also give their split sizes and seed."""

  num_frames: int = 16
  image_size: int = 224
  audio_samples: int = 30720
  num_classes: int = 700
  synthetic: bool = False
  num_train: int = 0
  num_test: int = 0
  seed: int = 0


class KineticsFiles(tfds.core.GeneratorBasedBuilder):
  """Audio-video clips with a class label: user files (k700) or generated (synthetic)."""

  # TFDS derives this from the package via `importlib_resources`, which is
  # not a declared dependency; giving it directly avoids that import.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'npz clips + Kinetics CSV; synthetic panning clips with tones.'}
  # Known before preparation, so a bad split name fails before anything is built.
  SPLITS = ('train', 'validation', 'test')
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  BUILDER_CONFIGS = [
      KineticsFilesConfig(
          name='k700', description='Kinetics-700 clips from manual_dir: 16 frames of '
          '224x224 and 30720 audio samples at 48 kHz, 700 classes.'),
      KineticsFilesConfig(
          name='synthetic', num_frames=4, image_size=16, audio_samples=256,
          num_classes=len(SYNTHETIC_CLASSES), synthetic=True, num_train=96, num_test=24,
          description='4x16x16 clips panning over skimage photographs, tones, 4 motion '
          'classes; 96 train / 24 test.'),
  ]
  DEFAULT_CONFIG_NAME = 'k700'

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    names = list(SYNTHETIC_CLASSES) if cfg.synthetic else None
    label = (tfds.features.ClassLabel(names=names) if names
             else tfds.features.ClassLabel(num_classes=cfg.num_classes))
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Tensor(
                shape=(cfg.num_frames, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
            'audio': tfds.features.Tensor(shape=(cfg.audio_samples,), dtype=np.float32),
            'label': label,
            'clip': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
        # Not (inputs, label): the classification pipeline must refuse it.
        supervised_keys=None,
        # Keep generator order on disk (TFDS would hash-shuffle by key).
        disable_shuffling=True,
        homepage='https://github.com/cvdfoundation/kinetics-dataset',
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    if cfg.synthetic:
      return {'train': self._generate_examples('train', num=cfg.num_train),
              'test': self._generate_examples('test', num=cfg.num_test)}
    manual_dir = os.path.join(os.fspath(self.data_dir_root), 'downloads', 'manual')
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError:  # TFDS: the directory is missing or empty
      raise UserError(f'The Kinetics manual_dir is missing or empty: '
                      f'{layout_sentence(manual_dir, cfg)}.') from None
    classes, rows = read_annotations(manual_dir, cfg)
    self.info.metadata['class_names'] = classes  # written with the dataset info
    for split, split_rows in rows.items():
      present = [os.path.isfile(self._clip_path(manual_dir, name)) for name, _ in split_rows]
      if not any(present):
        raise UserError(f'No clip file of the {len(split_rows)} {split} rows of '
                        f'annotations.csv exists under {manual_dir}/clips: '
                        f'{layout_sentence(manual_dir, cfg)}.')
      if not all(present):
        logging.warning('Kinetics %s: %d of %d clips are missing under %s/clips; skipped.',
                        split, len(present) - sum(present), len(present), manual_dir)
    return {split: self._generate_examples(split, manual_dir=manual_dir, rows=split_rows,
                                           classes=classes)
            for split, split_rows in rows.items()}

  @staticmethod
  def _clip_path(manual_dir: str, name: str) -> str:
    return os.path.join(manual_dir, 'clips', name + '.npz')

  def _generate_examples(self, split: str, *, num: int = 0, manual_dir: str = '',
                         rows=(), classes=()):
    """Synthetic configs: `num` generated clips; k700: the clips of `rows` in manual_dir."""
    if self.builder_config.synthetic:
      yield from self._generate_synthetic(split, num)
      return
    index = {name: i for i, name in enumerate(classes)}
    for name, label in rows:
      path = self._clip_path(manual_dir, name)
      if os.path.isfile(path):
        yield name, {**load_clip(path, self.builder_config), 'label': index[label],
                     'clip': name}

  def _generate_synthetic(self, split: str, num: int):
    cfg = self.builder_config
    names = skimage_flow.SPLIT_SOURCES[split]
    images = [skimage_flow.load_source(name) for name in names]
    for i in range(num):
      rng = np.random.default_rng([cfg.seed, skimage_flow.SPLIT_IDS[split], i])
      label = i % len(SYNTHETIC_CLASSES)
      clip = synthetic_clip(images[(i // len(SYNTHETIC_CLASSES)) % len(images)], label, rng,
                            frames=cfg.num_frames, size=cfg.image_size,
                            samples=cfg.audio_samples)
      yield i, {**clip, 'label': label, 'clip': f'synthetic-{split}-{i}'}
