"""Multimodal autoencoding of video, audio and a class label (Perceiver IO, Sec. 4.3).

Data: a dataset with `video` uint8 [T, H, W, 3], `audio` float32 [S] in [-1, 1] and a
class `label` (data/builders/kinetics_files.py). Batches stay flat: `video` uint8
[B, T, H, W, 3], `audio` float32 [B, S], `label` int32 [B] (eval: `mask` float32 [B]);
model_inputs turns them into the multimodal model's inputs
  {'image': video / 255 float32 [B, T, H, W, 3] (in [0, 1], as DeepMind's colab feeds it),
   'audio': float32 [B, S, 1], 'label': zeros float32 [B, num_classes]},
the label input always zero as in the colab (the released model also replaces the label
token by its mask token, mask_prob 1.0), so the label is inferred from video and audio.
(Our recollection of the paper is that it hid the label in only part of the training
examples; we could not confirm that here, so the task follows the released model.)
The model returns {'image': [B, T*H*W, 3], 'audio': [B, S], 'label': logits [B, C]}.

Training may decode only some outputs, as the paper does (it reports subsampling the
decoded pixels and audio during training and decoding everything at test time): with
task.train_video_points = P > 0 and/or task.train_audio_patches = A > 0, a training
transform draws that many distinct pixel indices (of T*H*W) and audio patch indices (of
S / samples_per_patch) per example, and the whole batch decodes the points drawn for its
first example (the model takes one set of query points per batch). Evaluation decodes all.

Loss (per example, averaged over the batch), with L1 the mean absolute error over the
decoded values and CE the softmax cross-entropy of the label:
  loss = video_weight * L1(video) + audio_weight * L1(audio) + label_weight * CE(label)
Defaults 0.03, 1.0 and 0.0001: L1 for both signals and these weights are our reading of
the paper's appendix on multimodal autoencoding, which we could not open from this
machine; a public PyTorch re-implementation of this training
(PerceiverForMultimodalAutoencoding on Kinetics) uses the same losses and weights.

Metrics, exact over batches and eval padding (padding examples add nothing):
  video_psnr = 10 log10(video_range^2 / MSE), MSE = (sum over real examples and decoded
      values of (prediction - target)^2) / (number of those values), targets in [0, 1]
      and video_range = 1.0 (task.video_psnr_range): one PSNR of the whole split from
      summed squared errors, not a mean of per-clip PSNRs.
  audio_psnr  the same over audio samples in [-1, 1], audio_range = 2.0 (the width of
      that interval; task.audio_psnr_range). The paper reports PSNR for both signals
      without stating its peak values here; 1.0 for audio would read 6.02 dB lower.
  accuracy    top-1 of the label logits; label_ce, video_l1, audio_l1 (means per example),
  loss        as above; num_examples.
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
from perceiver_jax.tasks.base import CLASS_LABEL, Task, check_shape

# The model's modality names (the released multimodal model's) for each batch key.
MODALITIES = {'video': 'image', 'audio': 'audio', 'label': 'label'}


def psnr(sum_squared_error, count, data_range, xp=jnp):
  """10 log10(data_range^2 / (sum_squared_error / count)) in dB."""
  mse = sum_squared_error / xp.maximum(count, 1.0)
  return 10.0 * xp.log10(data_range ** 2 / mse)


@dataclasses.dataclass(frozen=True)
class StoredClip(grain.transforms.Map):
  """A stored example -> {'video' uint8, 'audio' float32, 'label' int32} (others dropped)."""

  def map(self, element):
    return {'video': np.asarray(element['video'], np.uint8),
            'audio': np.asarray(element['audio'], np.float32),
            'label': np.asarray(element['label'], np.int32)}


@dataclasses.dataclass(frozen=True)
class DrawOutputPoints(grain.transforms.RandomMap):
  """Adds `video_points` int32 [num_video] (distinct indices of T*H*W pixels) and/or
  `audio_points` int32 [num_audio] (distinct indices of audio patches) to an example."""

  num_video: int
  num_audio: int
  samples_per_patch: int

  def random_map(self, element, rng: np.random.Generator):
    out = dict(element)
    if self.num_video:
      pixels = int(np.prod(element['video'].shape[:3]))
      out['video_points'] = rng.choice(pixels, self.num_video, replace=False).astype(np.int32)
    if self.num_audio:
      patches = element['audio'].shape[0] // self.samples_per_patch
      out['audio_points'] = rng.choice(patches, self.num_audio, replace=False).astype(np.int32)
    return out


def reconstruction_sums(prediction, target, weights):
  """Per-example mean |error| summed over examples, and summed squared error and count
  of the values of the weighted examples. prediction, target: [B, ...]; weights: [B]."""
  err = (prediction.astype(jnp.float32) - target.astype(jnp.float32)).reshape(
      prediction.shape[0], -1)
  per_example_l1 = jnp.abs(err).mean(-1)
  # where, not a product: a padding example's error never leaks in, even if not finite.
  real = weights > 0
  return {'l1': jnp.where(real, per_example_l1 * weights, 0.0).sum(),
          'se': jnp.where(real[:, None], jnp.square(err) * weights[:, None], 0.0).sum(),
          'values': weights.sum() * err.shape[1]}


class MultimodalAutoencodingTask(Task):
  """Video + audio + label autoencoding; the constructor arguments other than model_args
  are config.task's fields."""

  name = 'multimodal_autoencoding'
  model_args = ('num_classes', 'samples_per_patch')
  training_only = ('train_video_points', 'train_audio_patches')

  def __init__(self, num_classes: int = 700, samples_per_patch: int = 16,
               video_weight: float = 0.03, audio_weight: float = 1.0,
               label_weight: float = 0.0001, video_psnr_range: float = 1.0,
               audio_psnr_range: float = 2.0, train_video_points: int = 0,
               train_audio_patches: int = 0):
    self.label_classes = int(num_classes)  # the label input width
    self.samples_per_patch = int(samples_per_patch)
    self.weights = {'video': float(video_weight), 'audio': float(audio_weight),
                    'label': float(label_weight)}
    self.ranges = {'video': float(video_psnr_range), 'audio': float(audio_psnr_range)}
    self.train_video_points = int(train_video_points)
    self.train_audio_patches = int(train_audio_patches)

  @classmethod
  def model_kwargs(cls, model_config):
    audio = model_config.get('modalities', {}).get('audio')
    spp = audio.preprocessor.get('samples_per_patch') if audio is not None else None
    return {'num_classes': model_config.num_classes, 'samples_per_patch': spp or 16}

  def check_config(self, config) -> None:
    modalities = sorted(config.model.get('modalities', {}).keys())
    if config.model.preprocessor.name != 'multimodal' or modalities != sorted(MODALITIES.values()):
      raise UserError(f'config.task.name={self.name!r} needs a multimodal model with the '
                      f'modalities {sorted(MODALITIES.values())} (got preprocessor '
                      f'{config.model.preprocessor.name!r}, modalities {modalities}); start '
                      'from configs/pretrained/multimodal_perceiver.py.')
    for key, value in {**{f'{k}_weight': v for k, v in self.weights.items()},
                       **{f'{k}_psnr_range': v for k, v in self.ranges.items()}}.items():
      if not (math.isfinite(value) and value >= 0) or (key.endswith('range') and value == 0):
        raise UserError(f'config.task.{key}={value!r} is invalid; use a finite number >= 0 '
                        '(> 0 for a PSNR range).')
    for key in ('train_video_points', 'train_audio_patches'):
      if getattr(self, key) < 0:
        raise UserError(f'config.task.{key}={getattr(self, key)} is negative; use 0 (decode '
                        'everything) or a number of outputs to decode per training step.')

  # -- data -----------------------------------------------------------------------------------
  def features(self, builder):
    feats = builder.info.features
    ok = all(k in feats for k in MODALITIES)
    if ok:
      video, audio = feats['video'], feats['audio']
      ok = (len(video.shape) == 4 and video.shape[-1] == 3 and np.dtype(video.np_dtype) == np.uint8
            and len(audio.shape) == 1 and np.dtype(audio.np_dtype) == np.float32
            and hasattr(feats['label'], 'num_classes'))
    if not ok:
      raise DatasetError(
          f"Dataset '{builder.name}' has no 'video' uint8 [T, H, W, 3], 'audio' float32 [S] "
          "and class 'label' features, so the multimodal_autoencoding task cannot read it; "
          "use kinetics_files, or another config.task.name.")
    return {'video': (tuple(video.shape), np.uint8), 'audio': (tuple(audio.shape), np.float32),
            'label': CLASS_LABEL}

  def input_shape(self, builder):
    feats = self.features(builder)
    return {MODALITIES['video']: feats['video'][0],
            MODALITIES['audio']: feats['audio'][0] + (1,),
            MODALITIES['label']: (self.num_classes(builder),)}

  def num_classes(self, builder):
    return builder.info.features['label'].num_classes

  def prepare(self, data_config, builder):
    samples = self.features(builder)['audio'][0][0]
    if samples % self.samples_per_patch:
      raise DatasetError(f"Dataset '{builder.name}' has {samples} audio samples, not a "
                         f'multiple of the model\'s {self.samples_per_patch} per patch.')
    return (StoredClip(),)

  def train_transforms(self, data_config):
    if not (self.train_video_points or self.train_audio_patches):
      return ()
    return (DrawOutputPoints(self.train_video_points, self.train_audio_patches,
                             self.samples_per_patch),)

  # -- model and loss --------------------------------------------------------------------------
  def model_inputs(self, batch):
    """{'inputs': {modality: array}}, plus the points to decode when training subsamples."""
    video = batch['video']
    inputs = {MODALITIES['video']: video.astype(jnp.float32) / 255.0,
              MODALITIES['audio']: batch['audio'][..., None],
              MODALITIES['label']: jnp.zeros((video.shape[0], self.label_classes), jnp.float32)}
    out = {'inputs': inputs}
    if 'video_points' in batch or 'audio_points' in batch:
      out['subsampled_output_points'] = {
          MODALITIES['video']: batch['video_points'][0] if 'video_points' in batch else None,
          MODALITIES['audio']: batch['audio_points'][0] if 'audio_points' in batch else None,
          MODALITIES['label']: None}
    return out

  def _targets(self, batch):
    """(video [B, M, 3] in [0, 1], audio [B, M * samples_per_patch]) at the decoded points."""
    b = batch['video'].shape[0]
    video = batch['video'].reshape(b, -1, 3).astype(jnp.float32) / 255.0
    if 'video_points' in batch:
      video = video[:, batch['video_points'][0]]
    audio = batch['audio']
    if 'audio_points' in batch:
      patches = audio.reshape(b, -1, self.samples_per_patch)
      audio = patches[:, batch['audio_points'][0]].reshape(b, -1)
    return video, audio

  def loss_sums(self, outputs, batch, *, train):
    """outputs {'image' [B, M, 3], 'audio' [B, M_a * spp], 'label' [B, C]}: summed weighted
    loss over examples, and the sums of every metric (module docstring)."""
    b = batch['label'].shape[0]
    weights = batch['mask'].astype(jnp.float32) if 'mask' in batch else jnp.ones((b,))
    video, audio = self._targets(batch)
    v = reconstruction_sums(outputs[MODALITIES['video']].reshape(video.shape), video, weights)
    a = reconstruction_sums(outputs[MODALITIES['audio']].reshape(audio.shape), audio, weights)
    logits = outputs[MODALITIES['label']].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    real = weights > 0
    ce_sum = jnp.where(real, ce * weights, 0.0).sum()
    correct = jnp.where(real, (jnp.argmax(logits, -1) == batch['label']) * weights, 0.0).sum()
    w = self.weights
    loss = w['video'] * v['l1'] + w['audio'] * a['l1'] + w['label'] * ce_sum
    return {'loss': loss, 'count': weights.sum(), 'correct': correct, 'label_ce': ce_sum,
            'video_l1': v['l1'], 'video_se': v['se'], 'video_values': v['values'],
            'audio_l1': a['l1'], 'audio_se': a['se'], 'audio_values': a['values']}

  def normaliser(self, batch):
    return batch['label'].shape[0]

  def _metrics(self, sums, xp):
    count = xp.maximum(sums['count'], 1.0)
    return {'loss': sums['loss'] / count, 'accuracy': sums['correct'] / count,
            'label_ce': sums['label_ce'] / count,
            'video_l1': sums['video_l1'] / count, 'audio_l1': sums['audio_l1'] / count,
            'video_psnr': psnr(sums['video_se'], sums['video_values'], self.ranges['video'], xp),
            'audio_psnr': psnr(sums['audio_se'], sums['audio_values'], self.ranges['audio'], xp)}

  def train_metrics(self, sums):
    return self._metrics(sums, jnp)

  def summarize(self, sums):
    sums = {k: np.float64(v) for k, v in sums.items()}  # host: float64 from here on
    with np.errstate(divide='ignore'):  # a perfect reconstruction is +inf dB
      metrics = {k: float(v) for k, v in self._metrics(sums, np).items()}
    return {**metrics, 'num_examples': int(sums['count'])}

  # -- prediction -------------------------------------------------------------------------------
  def predict_example(self, data_config, raw, input_shape):
    """raw: {'video': uint8 [T, H, W, 3], 'audio': float [S] in [-1, 1]}; predict returns
    the reconstructions {'video': [T, H, W, 3] in [0, 1], 'audio': [S], 'label': class
    probabilities}."""
    if not isinstance(raw, dict) or not {'video', 'audio'} <= set(raw):
      raise UserError("The multimodal autoencoder takes {'video': frames, 'audio': samples} "
                      'per example; pass such a dict.')
    example = {'video': np.asarray(raw['video'], np.uint8),
               'audio': np.asarray(raw['audio'], np.float32)}
    check_shape('An input video', example['video'].shape, input_shape[MODALITIES['video']])
    check_shape('An input audio', example['audio'].shape + (1,),
                input_shape[MODALITIES['audio']])
    return example

  def predictions(self, outputs):
    """{'video' [batch, T*H*W, 3], 'audio' [batch, S], 'label' probabilities [batch, C]}."""
    return {'video': outputs[MODALITIES['video']], 'audio': outputs[MODALITIES['audio']],
            'label': jax.nn.softmax(outputs[MODALITIES['label']].astype(jnp.float32), -1)}

  def present(self, predictions, examples):
    """The video reconstruction in the shape of the input video [batch, T, H, W, 3]."""
    video = np.asarray(predictions['video'])
    return {**predictions, 'video': video.reshape(np.shape(examples['video']))}
