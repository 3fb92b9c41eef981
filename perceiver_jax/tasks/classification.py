"""Classification: (inputs, label) datasets, softmax cross-entropy, accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from perceiver_jax.data import image_augment, transforms
from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.tasks.base import CLASS_LABEL, Task, check_shape


def classification_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
                        label_smoothing: float = 0.0, targets: jax.Array | None = None
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean softmax cross-entropy over real examples, plus summed metrics.

  Args:
    logits: [batch, num_classes].
    labels: [batch] int (accuracy; also the loss's one-hot targets unless `targets`).
    mask: [batch] float, 1 for real examples and 0 for padding (eval), or None.
    targets: [batch, num_classes] label distributions (MixUp's mixed one-hots), or None.
  Returns:
    (mean loss, sums) where sums holds 'loss', 'correct' and 'count' totals so that
    metrics over many batches (and devices) are exact: total / count.
  """
  num_classes = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  if targets is None:
    targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits, targets)
  if mask is None:
    mask = jnp.ones_like(per_example)
  count = mask.sum()
  correct = ((jnp.argmax(logits, -1) == labels) * mask).sum()
  loss_sum = (per_example * mask).sum()
  mean_loss = loss_sum / jnp.maximum(count, 1.0)
  return mean_loss, {'loss': loss_sum, 'correct': correct, 'count': count}


def check_label_smoothing(value) -> None:
  """Raises UserError unless config.task.label_smoothing is in [0, 1)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
    raise UserError(f'config.task.label_smoothing={value!r} is out of range; use a number in '
                    '[0, 1), e.g. 0.1 (0 disables it).')


def summarize(sums: dict[str, float]) -> dict[str, float]:
  """Turns accumulated sums into reported metrics (loss, accuracy)."""
  count = max(float(sums['count']), 1.0)
  return {'loss': float(sums['loss']) / count, 'accuracy': float(sums['correct']) / count,
          'num_examples': int(sums['count'])}


def _normalize(data_config) -> transforms.Normalize:
  return transforms.Normalize(*(getattr(data_config, 'normalize', None) or (0.0, 1.0)))


class ClassificationTask(Task):
  """A dataset's (inputs, label) supervised_keys -> {'inputs' float32 [*shape], 'label'
  int32 []}; normalised by data.normalize, augmented by data.augment (training only);
  label_smoothing (config.task.label_smoothing) smooths the training loss only.

  mixup_alpha (config.task.mixup_alpha, 0 = off) mixes each training batch's inputs
  pairwise with weights ~ Beta(alpha, alpha) and trains on the mixed one-hot labels
  ('soft_label' [batch, num_classes]); it mixes whole examples, so it needs no notion of
  position (it stays label-preserving under a fixed permutation of the inputs)."""

  name = 'classification'
  model_args = ('num_classes',)
  training_only = ('label_smoothing', 'mixup_alpha')

  def __init__(self, label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
               num_classes: int | None = None):
    self.label_smoothing = label_smoothing  # training loss only; check_config checks it
    self.mixup_alpha = mixup_alpha
    self.model_classes = num_classes  # the model's logits (None: not checked)

  @classmethod
  def model_kwargs(cls, model_config):
    return {'num_classes': model_config.num_classes}

  def check_config(self, config) -> None:
    check_label_smoothing(self.label_smoothing)
    alpha = self.mixup_alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
      raise UserError(f'config.task.mixup_alpha={alpha!r} is out of range; use a number >= 0, '
                      'e.g. 0.2 (0 disables MixUp).')
    if alpha and self.model_classes is None:
      raise UserError('config.task.mixup_alpha needs config.model.num_classes (the width of '
                      'the mixed one-hot labels).')

  # -- data -----------------------------------------------------------------------------------
  def _keys(self, builder) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2
            and all(isinstance(k, str) for k in keys)):
      raise DatasetError(
          f"Dataset '{builder.name}' has no (inputs, label) supervised_keys, so "
          "this classification pipeline cannot read it; add a task-specific "
          "pipeline for it.")
    return keys

  def check_classes(self, builder, label_key: str) -> None:
    """A model with fewer logits than the dataset has classes would train on the labels it
    cannot predict against all-zero targets, silently: refused in one sentence."""
    classes = getattr(builder.info.features[label_key], 'num_classes', None)
    if classes and self.model_classes is not None and self.model_classes < classes:
      raise DatasetError(
          f"Dataset '{builder.name}' has {classes} classes but config.model.num_classes="
          f"{self.model_classes}, so labels {self.model_classes}..{classes - 1} could never "
          f"be predicted; set --config.model.num_classes={classes}.")

  def features(self, builder):
    inputs_key, label_key = self._keys(builder)
    self.check_classes(builder, label_key)
    feature = builder.info.features[inputs_key]
    return {inputs_key: (tuple(feature.shape), np.dtype(feature.np_dtype)),
            label_key: CLASS_LABEL}

  def input_shape(self, builder):
    return tuple(builder.info.features[self._keys(builder)[0]].shape)

  def num_classes(self, builder):
    return builder.info.features[self._keys(builder)[1]].num_classes

  def prepare(self, data_config, builder):
    inputs_key, label_key = self._keys(builder)
    return (transforms.ToSupervised(inputs_key, label_key), _normalize(data_config))

  def train_transforms(self, data_config):
    augment = getattr(data_config, 'augment', '') or ''
    if augment not in transforms.AUGMENTATIONS:
      raise DatasetError(
          f"Unknown augmentation '{augment}' for dataset '{data_config.name}'; "
          f"use one of {sorted(transforms.AUGMENTATIONS)}.")
    return tuple(transforms.AUGMENTATIONS[augment](data_config))

  def batch_transforms(self, data_config):
    if not self.mixup_alpha:
      return ()
    return (image_augment.MixUpCutMix(self.model_classes, float(self.mixup_alpha), None),)

  def padding_example(self, example):
    return {'inputs': np.zeros_like(example['inputs']), 'label': np.int32(0),
            'mask': np.float32(0.0)}

  # -- loss -------------------------------------------------------------------------------------
  def loss_sums(self, outputs, batch, *, train):
    """outputs: logits [batch, num_classes]; batch['label'] [batch] and, after MixUp,
    'soft_label' [batch, num_classes]."""
    _, sums = classification_loss(outputs, batch['label'], batch.get('mask'),
                                  label_smoothing=self.label_smoothing if train else 0.0,
                                  targets=batch.get('soft_label') if train else None)
    return sums

  def normaliser(self, batch):
    return batch['label'].shape[0]

  def train_metrics(self, sums):
    return {'loss': sums['loss'] / sums['count'], 'accuracy': sums['correct'] / sums['count']}

  def summarize(self, sums):
    return summarize(sums)

  # -- prediction -------------------------------------------------------------------------------
  def predict_example(self, data_config, raw, input_shape):
    """raw: an array as the dataset stores inputs (e.g. digits float [8, 8, 1] in 0..16, a
    point cloud [points, 3]), normalised by data.normalize as in training."""
    raw = np.asarray(raw)
    check_shape('An input', raw.shape, input_shape)
    return _normalize(data_config).map({'inputs': raw})

  def predictions(self, outputs):
    """Class probabilities [batch, num_classes]."""
    return jax.nn.softmax(outputs.astype(jnp.float32), axis=-1)
