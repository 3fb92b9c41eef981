"""Multi-label classification (AudioSet-style): sigmoid cross-entropy, mean average precision.

Data: a dataset with a float32 waveform feature (task.inputs_key, default 'audio', [samples])
and a multi-hot bool/float feature (task.labels_key, default 'labels', [num_classes]), e.g.
perceiver_jax/data/builders/audioset_files.py. With task.video_key (e.g. 'video', uint8
[frames, H, W, 3]) the inputs are {'audio': [samples], 'image': [frames, H, W, 3] in [0, 1]}
for a multimodal model.

Crops: task.clip_samples > 0 cuts every waveform to that many samples (and task.clip_frames
the video): a random window for training (the same fraction of the way through the audio and
the video, so the two stay aligned in time), the centre window for evaluation. 0 = whole clip.

Examples: inputs float32 [samples] (or the dict above), labels float32 [num_classes] (0/1).
The model returns logits [batch, num_classes].

Loss: sigmoid binary cross-entropy, averaged over the classes of an example and over the
examples of the batch. Eval metrics, exact over batches and padding: 'loss'; 'map', the mean
over classes that have at least one positive among the evaluated examples of each class's
average precision (sklearn's step-wise definition: tied scores form one threshold), as
AudioSet papers report; 'auc' (mean ROC AUC over classes with positives and negatives) and
'd_prime' = sqrt(2) * Phi^-1(auc), AudioSet's d'. mAP is not a sum over batches, so the eval
step also returns every example's logits, labels and mask (Task.per_example_keys): the
evaluation loop concatenates them and summarize() ranks the real examples once.
"""

from __future__ import annotations

import dataclasses
import math

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.tasks.base import Task, check_shape


# ------------------------------------------------------------------------------------------
# Metrics (host numpy: they rank whole score columns).
# ------------------------------------------------------------------------------------------

def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """Average precision of one class: sum over distinct score thresholds, high to low, of
  (recall gained) x (precision there); tied scores form one threshold (as sklearn).

  Args:
    scores: [n] float, higher = more likely positive.
    labels: [n] 0/1 (at least one 1).
  """
  order = np.argsort(-scores, kind='stable')
  scores, labels = scores[order], labels[order].astype(np.float64)
  # Last position of each run of equal scores: where a threshold takes effect.
  ends = np.flatnonzero(np.r_[np.diff(scores) != 0, True])
  tp = np.cumsum(labels)[ends]
  predicted = ends + 1.0
  precision = tp / predicted
  recall_gain = np.diff(np.r_[0.0, tp]) / tp[-1]
  return float((recall_gain * precision).sum())


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """ROC AUC of one class (Mann-Whitney with mid-ranks for ties); needs both labels."""
  # On use: scipy.stats is slow to load and only multilabel evaluation needs it.
  from scipy.stats import rankdata  # pylint: disable=g-import-not-at-top
  positive = labels > 0
  num_pos, num_neg = positive.sum(), (~positive).sum()
  ranks = rankdata(scores)
  return float((ranks[positive].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def multilabel_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """{'map', 'auc', 'd_prime', 'num_classes_scored'} over real examples.

  Args:
    scores: [n, num_classes] float (logits or probabilities: only the order counts).
    labels: [n, num_classes] 0/1.
  'map' averages the classes with >= 1 positive ('num_classes_scored' of them); 'auc' those
  with positives and negatives; NaN where no class qualifies.
  """
  # On use, as in roc_auc.
  from scipy.stats import norm  # pylint: disable=g-import-not-at-top
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels) > 0.5
  aps, aucs = [], []
  for c in range(labels.shape[1]):
    pos = labels[:, c].sum()
    if pos:
      aps.append(average_precision(scores[:, c], labels[:, c]))
    if 0 < pos < labels.shape[0]:
      aucs.append(roc_auc(scores[:, c], labels[:, c]))
  auc = float(np.mean(aucs)) if aucs else math.nan
  return {'map': float(np.mean(aps)) if aps else math.nan, 'auc': auc,
          'd_prime': float(math.sqrt(2.0) * norm.ppf(auc)) if aucs else math.nan,
          'num_classes_scored': len(aps)}


def sigmoid_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example sigmoid cross-entropy averaged over classes: [batch, C] -> [batch]."""
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                            labels.astype(jnp.float32)).mean(-1)


# ------------------------------------------------------------------------------------------
# Data transforms.
# ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ToMultilabel(grain.transforms.Map):
  """Stored example -> {'inputs': float32 waveform [samples] (or {'audio', 'image'}),
  'labels': float32 [num_classes]}."""

  inputs_key: str = 'audio'
  labels_key: str = 'labels'
  video_key: str = ''

  def map(self, element):
    audio = np.asarray(element[self.inputs_key], np.float32)
    inputs = audio
    if self.video_key:
      inputs = {'audio': audio, 'image': np.asarray(element[self.video_key])}
    return {'inputs': inputs, 'labels': np.asarray(element[self.labels_key], np.float32)}


def _crop(x: np.ndarray, length: int, fraction: float) -> np.ndarray:
  """x[start:start + length] along axis 0, start = round(fraction * (len(x) - length))."""
  if not length or length >= x.shape[0]:
    return x
  start = int(round(fraction * (x.shape[0] - length)))
  return x[start:start + length]


def _cropped(element, clip_samples: int, clip_frames: int, fraction: float):
  inputs = element['inputs']
  if isinstance(inputs, dict):
    # Video frames become float32 in [0, 1] after the crop (4x less to convert).
    image = _crop(inputs['image'], clip_frames, fraction).astype(np.float32) / 255.0
    inputs = {'audio': _crop(inputs['audio'], clip_samples, fraction), 'image': image}
  else:
    inputs = _crop(inputs, clip_samples, fraction)
  return {**element, 'inputs': inputs}


@dataclasses.dataclass(frozen=True)
class RandomClip(grain.transforms.RandomMap):
  """A random window of clip_samples (and clip_frames) at the same relative position."""

  clip_samples: int = 0
  clip_frames: int = 0

  def random_map(self, element, rng: np.random.Generator):
    return _cropped(element, self.clip_samples, self.clip_frames, rng.random())


@dataclasses.dataclass(frozen=True)
class CenterClip(grain.transforms.Map):
  """The centre window of clip_samples (and clip_frames): evaluation."""

  clip_samples: int = 0
  clip_frames: int = 0

  def map(self, element):
    return _cropped(element, self.clip_samples, self.clip_frames, 0.5)


# ------------------------------------------------------------------------------------------
# The task.
# ------------------------------------------------------------------------------------------

class MultilabelTask(Task):
  """Multi-label audio (or audio+video) classification; the constructor arguments are
  config.task's fields."""

  name = 'multilabel'
  # Eval rows concatenated over batches (not added): what mAP ranks.
  per_example_keys = ('logits', 'labels', 'mask')

  def __init__(self, inputs_key: str = 'audio', labels_key: str = 'labels',
               video_key: str = '', clip_samples: int = 0, clip_frames: int = 0):
    self.inputs_key, self.labels_key, self.video_key = inputs_key, labels_key, video_key
    self.clip_samples, self.clip_frames = int(clip_samples), int(clip_frames)

  def check_config(self, config) -> None:
    if self.clip_samples < 0 or self.clip_frames < 0:
      raise UserError(f'config.task.clip_samples={self.clip_samples} and clip_frames='
                      f'{self.clip_frames} must be >= 0 (0 = the whole clip).')

  # -- data -----------------------------------------------------------------------------------
  def features(self, builder):
    feats = builder.info.features
    wanted = [self.inputs_key, self.labels_key] + ([self.video_key] if self.video_key else [])
    missing = [k for k in wanted if k not in feats]
    if missing or len(feats[self.labels_key].shape) != 1:
      raise DatasetError(
          f"Dataset '{builder.name}' has no {', '.join(repr(k) for k in wanted)} features "
          "(waveform, multi-hot labels [num_classes]), so the multilabel task cannot read "
          "it; use an AudioSet-style dataset such as audioset_files, or set "
          "config.task.inputs_key / labels_key.")
    return {k: (tuple(feats[k].shape), np.dtype(feats[k].np_dtype)) for k in wanted}

  def _clipped(self, shape, length):
    return (min(length, shape[0]) if length else shape[0],) + tuple(shape[1:])

  def input_shape(self, builder):
    feats = self.features(builder)
    audio = self._clipped(feats[self.inputs_key][0], self.clip_samples)
    if not self.video_key:
      return audio
    return {'audio': audio, 'image': self._clipped(feats[self.video_key][0], self.clip_frames)}

  def num_classes(self, builder):
    return int(self.features(builder)[self.labels_key][0][0])

  def prepare(self, data_config, builder):
    return (ToMultilabel(self.inputs_key, self.labels_key, self.video_key),)

  def train_transforms(self, data_config):
    return (RandomClip(self.clip_samples, self.clip_frames),)

  def eval_transforms(self, data_config):
    return (CenterClip(self.clip_samples, self.clip_frames),)

  def padding_example(self, example):
    pad = jax.tree.map(np.zeros_like, {k: v for k, v in example.items() if k != 'mask'})
    return {**pad, 'mask': np.float32(0.0)}

  # -- model and loss --------------------------------------------------------------------------
  def loss_sums(self, outputs, batch, *, train):
    """outputs: logits [batch, num_classes]; batch['labels'] [batch, num_classes].

    Returns 'loss' (summed per-example loss of real examples) and 'count'; for evaluation
    also the rows 'logits', 'labels', 'mask' that summarize() ranks."""
    per_example = sigmoid_bce(outputs, batch['labels'])
    mask = batch.get('mask')
    if mask is None:
      mask = jnp.ones_like(per_example)
    # where, not a product: a padding example's loss never leaks, even if not finite.
    sums = {'loss': jnp.where(mask > 0, per_example * mask, 0.0).sum(), 'count': mask.sum()}
    if not train:
      sums.update(logits=outputs.astype(jnp.float32),
                  labels=batch['labels'].astype(jnp.float32), mask=mask.astype(jnp.float32))
    return sums

  def normaliser(self, batch):
    return batch['labels'].shape[0]

  def train_metrics(self, sums):
    return {'loss': sums['loss'] / sums['count']}

  def summarize(self, sums):
    """sums: 'loss', 'count' added over batches; 'logits', 'labels' [n, C] and 'mask' [n]
    concatenated over batches (padding included, dropped here)."""
    count = float(sums['count'])
    real = np.asarray(sums['mask']) > 0
    metrics = multilabel_metrics(np.asarray(sums['logits'])[real],
                                 np.asarray(sums['labels'])[real])
    return {'loss': float(sums['loss']) / max(count, 1.0), **metrics,
            'num_examples': int(real.sum())}

  # -- prediction -------------------------------------------------------------------------------
  def predict_example(self, data_config, raw, input_shape):
    """raw: a waveform float [samples] (with task.video_key: {'audio': [samples], 'video':
    uint8 [frames, H, W, 3]}), centre-clipped as evaluation does; predict returns
    per-class probabilities (sigmoid)."""
    if self.video_key:
      if not isinstance(raw, dict) or set(raw) != {'audio', 'video'}:
        raise UserError("This multilabel model takes {'audio': waveform, 'video': frames} "
                        'per example; pass such a dict.')
      inputs = {'audio': np.asarray(raw['audio'], np.float32), 'image': np.asarray(raw['video'])}
    else:
      inputs = np.asarray(raw, np.float32)
    example = CenterClip(self.clip_samples, self.clip_frames).map({'inputs': inputs})
    shapes = jax.tree.map(np.shape, example['inputs'])
    if self.video_key:
      for key in ('audio', 'image'):
        check_shape(f'An input {key}', shapes[key], input_shape[key])
    else:
      check_shape('An input waveform', shapes, input_shape)
    return example

  def predictions(self, outputs):
    """Per-class probabilities [batch, num_classes]."""
    return jax.nn.sigmoid(outputs.astype(jnp.float32))
