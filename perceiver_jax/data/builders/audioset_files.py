"""AudioSet-style multi-label clips (TFDS): read from files you provide, or generated offline.

Manual configs ('audio' 48 kHz, 'audio16k' 16 kHz, 'audio_video' 48 kHz + 25 fps video) read
TFDS's manual_dir, by default <data_dir>/downloads/manual/ (AudioSet itself cannot be
downloaded by a builder: its clips are YouTube videos). Layout:

  class_labels_indices.csv      AudioSet's: header `index,mid,display_name`, one row per class
                                (527 for AudioSet; the config's num_classes)
  balanced_train_segments.csv   AudioSet's segments format; comment lines start with '#', then
  unbalanced_train_segments.csv `YTID, start_seconds, end_seconds, "mid1,mid2,..."`;
  eval_segments.csv             'train' = the train files present (at least one), 'test' = eval
  clips/<YTID>.npz              'audio' float32 [samples] (or [samples, channels], averaged) at
                                the config's sample rate, optional 'sample_rate' (checked), and
                                for 'audio_video' 'video' uint8 [frames, H, W, 3] at its size,
  or clips/<YTID>.wav           PCM 8/16/32-bit or float WAV at the config's sample rate
                                (audio configs only).

Each clip is the segment already cut out (start_seconds..end_seconds). Audio is zero-padded or
truncated to clip_seconds x sample_rate samples ('num_samples' keeps the real length), video to
clip_seconds x fps frames (short videos repeat their last frame). Clips listed in a CSV but not
in clips/ are skipped (AudioSet always has some unavailable videos); the number kept per split
is in the split sizes. Labels are a multi-hot bool vector in class_labels_indices.csv order.

Features: 'audio' float32 [samples], 'num_samples' int32, 'labels' bool [num_classes], 'id'
text (the YTID), and with video 'video' uint8 [frames, H, W, 3]. Stored in CSV order.

Config 'generated' (offline, deterministic, for tests and :runlocal): 8 synthetic sound classes
at 8 kHz, 4096-sample clips (0.512 s) with 4 video frames of 16x16: tones of 250, 500, 1000,
2000 and 3000 Hz, a white-noise burst, a 300->3000 Hz chirp and a 50 Hz click train. Each class
is present with probability 1/4 (at least one per clip), as an event with a random onset,
length (1/4 to 1/2 of the clip) and amplitude (0.2 to 0.5) under a Hann envelope, over
Gaussian background noise (std 0.01); the video lights class k's 4x4 cell of a 4x4 grid (in
class k's colour) in the frames its event overlaps. Example i of a split draws from
np.random.default_rng([seed, split, i]). 512 train / 128 test clips.
"""

from __future__ import annotations

import csv
import dataclasses
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from perceiver_jax.errors import UserError

SPLITS = ('train', 'test')
TRAIN_CSVS = ('balanced_train_segments.csv', 'unbalanced_train_segments.csv')
EVAL_CSV = 'eval_segments.csv'
CLASSES_CSV = 'class_labels_indices.csv'
GENERATED_CLASSES = ('tone_250hz', 'tone_500hz', 'tone_1000hz', 'tone_2000hz', 'tone_3000hz',
                     'noise_burst', 'chirp', 'click_train')
_TONES = (250.0, 500.0, 1000.0, 2000.0, 3000.0)


@dataclasses.dataclass(kw_only=True)
class AudiosetFilesConfig(tfds.core.BuilderConfig):
  """generated: synthesise clips instead of reading manual_dir; video_frames 0 = no video."""

  generated: bool = False
  num_classes: int = 527
  sample_rate: int = 48000
  clip_seconds: float = 10.0
  fps: float = 25.0
  video_frames: int = 0
  video_size: int = 224
  num_train: int = 512  # generated only
  num_test: int = 128   # generated only
  seed: int = 0         # generated only

  @property
  def num_samples(self) -> int:
    return int(round(self.clip_seconds * self.sample_rate))


# ------------------------------------------------------------------------------------------
# Generated clips.
# ------------------------------------------------------------------------------------------

def _event_waveform(k: int, n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
  """Class k's unit-amplitude sound, n samples."""
  t = np.arange(n) / rate
  if k < len(_TONES):
    return np.sin(2 * np.pi * _TONES[k] * t + rng.uniform(0, 2 * np.pi))
  if k == 5:
    return np.clip(rng.normal(0.0, 0.5, n), -1.0, 1.0)
  if k == 6:  # linear chirp 300 -> 3000 Hz over the event
    f0, f1 = 300.0, 3000.0
    return np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * max(t[-1], 1e-9))))
  clicks = np.zeros(n)
  clicks[::int(rate / 50)] = 1.0
  return clicks


def generate_clip(cfg: AudiosetFilesConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One synthetic clip: 'audio' float32 [samples], 'labels' bool [8], 'video' uint8."""
  n, c = cfg.num_samples, cfg.num_classes
  labels = rng.random(c) < 0.25
  if not labels.any():
    labels[rng.integers(c)] = True
  audio = rng.normal(0.0, 0.01, n)
  frames = cfg.video_frames
  video = np.zeros((frames, cfg.video_size, cfg.video_size, 3), np.uint8)
  cell = cfg.video_size // 4
  for k in np.flatnonzero(labels):
    length = int(rng.uniform(0.25, 0.5) * n)
    start = int(rng.integers(0, n - length + 1))
    amplitude = rng.uniform(0.2, 0.5)
    audio[start:start + length] += amplitude * np.hanning(length) * _event_waveform(
        int(k), length, cfg.sample_rate, rng)
    if frames:
      first, last = start * frames // n, (start + length - 1) * frames // n
      y, x = divmod(int(k), 4)
      colour = np.array([(37 * k) % 256, (97 * k + 80) % 256, (151 * k + 160) % 256], np.uint8)
      video[first:last + 1, y * cell:(y + 1) * cell, x * cell:(x + 1) * cell] = colour
  example = {'audio': np.clip(audio, -1.0, 1.0).astype(np.float32), 'labels': labels}
  if frames:
    example['video'] = video
  return example


# ------------------------------------------------------------------------------------------
# Manual files.
# ------------------------------------------------------------------------------------------

def missing_files_message(manual_dir, problem: str) -> str:
  return (f'{problem}: put {CLASSES_CSV}, {EVAL_CSV} and {" and/or ".join(TRAIN_CSVS)} '
          f'(AudioSet\'s formats) in {manual_dir}, and each listed clip as '
          'clips/<YTID>.npz or clips/<YTID>.wav there (layout: '
          'perceiver_jax/data/builders/audioset_files.py).')


def read_classes(path) -> list[str]:
  """mids in index order from class_labels_indices.csv."""
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f, skipinitialspace=True))
  if not rows or not {'index', 'mid'} <= set(rows[0]):
    raise UserError(f'{path} has no `index,mid,display_name` header; use AudioSet\'s '
                    f'{CLASSES_CSV}.')
  rows.sort(key=lambda r: int(r['index']))
  return [r['mid'] for r in rows]


def read_segments(path) -> list[tuple[str, list[str]]]:
  """[(YTID, [mid, ...])] from an AudioSet segments CSV, in file order."""
  out = []
  with open(path, newline='') as f:
    for row in csv.reader((line for line in f if not line.lstrip().startswith('#')),
                          skipinitialspace=True):
      if not row:
        continue
      if len(row) < 4:
        raise UserError(f'{path} has a line {",".join(row)!r} that is not `YTID, '
                        'start_seconds, end_seconds, "labels"`; use AudioSet\'s format.')
      out.append((row[0].strip(), [m.strip() for m in row[3].split(',') if m.strip()]))
  return out


def _to_mono_float(audio: np.ndarray) -> np.ndarray:
  if audio.dtype == np.uint8:
    audio = (audio.astype(np.float32) - 128.0) / 128.0
  elif audio.dtype.kind == 'i':
    audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max + 1)
  audio = np.asarray(audio, np.float32)
  return audio.mean(axis=1) if audio.ndim == 2 else audio


def read_clip(path: str, cfg: AudiosetFilesConfig) -> dict[str, np.ndarray]:
  """'audio' float32 [num_samples] padded/cut, 'num_samples', and 'video' if the config has it."""
  video = None
  if path.endswith('.wav'):
    # On use: only .wav clips need it, and only while preparing.
    from scipy.io import wavfile  # pylint: disable=g-import-not-at-top
    rate, audio = wavfile.read(path)
  else:
    with np.load(path) as npz:
      if 'audio' not in npz:
        raise UserError(f'{path} has no \'audio\' array; save the waveform as np.savez(path, '
                        'audio=float32 samples).')
      audio = npz['audio']
      rate = int(npz['sample_rate']) if 'sample_rate' in npz else cfg.sample_rate
      video = npz['video'] if 'video' in npz else None
  if rate != cfg.sample_rate:
    raise UserError(f'{path} is sampled at {rate} Hz but config {cfg.name!r} wants '
                    f'{cfg.sample_rate} Hz; resample it or use the matching config.')
  audio = _to_mono_float(audio)
  n = cfg.num_samples
  out = {'audio': np.pad(audio[:n], (0, max(0, n - len(audio)))),
         'num_samples': np.int32(min(len(audio), n))}
  if cfg.video_frames:
    size = (cfg.video_size, cfg.video_size, 3)
    if video is None or video.ndim != 4 or video.shape[1:] != size or video.dtype != np.uint8:
      got = 'none' if video is None else f'{video.dtype} {video.shape}'
      raise UserError(f'{path} needs \'video\' uint8 [frames, {size[0]}, {size[1]}, 3] for '
                      f'config {cfg.name!r} (got {got}); save the frames at that size.')
    video = video[:cfg.video_frames]
    if len(video) < cfg.video_frames:  # repeat the last frame
      video = np.concatenate([video, np.repeat(video[-1:], cfg.video_frames - len(video), 0)])
    out['video'] = video
  return out


def _clip_path(clips_dir: str, ytid: str) -> str | None:
  for ext in ('.npz', '.wav'):
    path = os.path.join(clips_dir, ytid + ext)
    if os.path.exists(path):
      return path
  return None


class AudiosetFiles(tfds.core.GeneratorBasedBuilder):
  """AudioSet-style clips with multi-hot labels, from manual_dir files or generated."""

  # TFDS derives this from the package via `importlib_resources`, which is
  # not a declared dependency; giving it directly avoids that import.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Manual AudioSet files, and generated synthetic sound clips.'}
  # Known before preparation, so a bad split name fails before anything is built.
  SPLITS = SPLITS
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  BUILDER_CONFIGS = [
      AudiosetFilesConfig(name='audio', description='48 kHz audio, 10 s clips, 527 classes.'),
      AudiosetFilesConfig(name='audio16k', sample_rate=16000,
                          description='16 kHz audio, 10 s clips, 527 classes.'),
      AudiosetFilesConfig(name='audio_video', video_frames=250, video_size=224,
                          description='48 kHz audio + 250 frames of 224x224 (25 fps), 10 s.'),
      AudiosetFilesConfig(name='generated', generated=True, num_classes=8, sample_rate=8000,
                          clip_seconds=0.512, fps=7.8125, video_frames=4, video_size=16,
                          description='Synthetic sound events, 8 classes, 512/128 clips.'),
  ]
  DEFAULT_CONFIG_NAME = 'audio'

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    features = {
        'audio': tfds.features.Tensor(shape=(cfg.num_samples,), dtype=np.float32),
        'num_samples': tfds.features.Scalar(dtype=np.int32),
        'labels': tfds.features.Tensor(shape=(cfg.num_classes,), dtype=np.bool_),
        'id': tfds.features.Text(),
    }
    if cfg.video_frames:
      features['video'] = tfds.features.Tensor(
          shape=(cfg.video_frames, cfg.video_size, cfg.video_size, 3), dtype=np.uint8)
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(sample_rate=cfg.sample_rate, fps=cfg.fps),
        # Not (inputs, label): the single-label classification pipeline must refuse it.
        supervised_keys=None,
        # Keep generator order on disk, so eval order is known.
        disable_shuffling=True,
        homepage='https://research.google.com/audioset/',
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    if cfg.generated:
      sizes = {'train': cfg.num_train, 'test': cfg.num_test}
      return {s: self._generate_examples(split=s, num=sizes[s]) for s in SPLITS}
    default_dir = os.path.join(os.fspath(self.data_dir_root), 'downloads', 'manual')
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError:  # TFDS: the directory does not exist or is empty
      raise UserError(missing_files_message(default_dir, 'AudioSet files are missing')) from None
    names = os.listdir(manual_dir)
    train_csvs = [n for n in TRAIN_CSVS if n in names]
    missing = [n for n in (CLASSES_CSV, EVAL_CSV) if n not in names] + (
        [] if train_csvs else [' or '.join(TRAIN_CSVS)])
    if missing:
      raise UserError(missing_files_message(
          manual_dir, f'AudioSet files {", ".join(missing)} are missing'))
    mids = read_classes(os.path.join(manual_dir, CLASSES_CSV))
    if len(mids) != cfg.num_classes:
      raise UserError(f'{os.path.join(manual_dir, CLASSES_CSV)} lists {len(mids)} classes but '
                      f'config {cfg.name!r} has {cfg.num_classes}; use AudioSet\'s file.')
    csvs = {'train': train_csvs, 'test': [EVAL_CSV]}
    segments = {s: [seg for n in csvs[s] for seg in read_segments(os.path.join(manual_dir, n))]
                for s in SPLITS}
    return {s: self._generate_examples(manual_dir=manual_dir, segments=segments[s], mids=mids)
            for s in SPLITS}

  def _generate_examples(self, *, split: str = '', num: int = 0, manual_dir: str = '',
                         segments=(), mids=()):
    if self.builder_config.generated:
      return self._generate_synthetic(split, num)
    return self._generate_files(manual_dir, segments, list(mids))

  def _generate_synthetic(self, split: str, num: int):
    cfg = self.builder_config
    for i in range(num):
      example = generate_clip(cfg, np.random.default_rng([cfg.seed, SPLITS.index(split), i]))
      yield i, {**example, 'num_samples': np.int32(cfg.num_samples), 'id': f'{split}_{i}'}

  def _generate_files(self, manual_dir: str, segments, mids: list[str]):
    index = {m: i for i, m in enumerate(mids)}
    clips_dir = os.path.join(manual_dir, 'clips')
    found = 0
    for ytid, labels in segments:
      path = _clip_path(clips_dir, ytid)
      if path is None:
        continue  # unavailable video: skipped (the split sizes say how many were kept)
      unknown = [m for m in labels if m not in index]
      if unknown:
        raise UserError(f'Segment {ytid} has labels {unknown} that are not in {CLASSES_CSV}; '
                        'use the class list the segments were made with.')
      multi_hot = np.zeros((len(mids),), np.bool_)
      multi_hot[[index[m] for m in labels]] = True
      found += 1
      yield ytid, {**read_clip(path, self.builder_config), 'labels': multi_hot, 'id': ytid}
    if not found:
      raise UserError(missing_files_message(
          manual_dir, f'None of the {len(segments)} clips listed for a split are in '
                      f'{clips_dir}'))
