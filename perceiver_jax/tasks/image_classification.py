"""ImageNet-recipe image classification: augmented crops, MixUp/CutMix, top-1/top-5.

Data: a TFDS dataset with the `imagenet2012` layout: supervised_keys (image, label), the
image uint8 [height, width, 3] of any size (a JPEG `Image` feature, decoded by TFDS with
PIL/OpenCV, no TensorFlow), the label a ClassLabel. Examples (data/image_augment.py,
following the DeepMind reference `perceiver/train/dataset.py`):

  train: Inception crop -> flip -> RandAugment (task.randaugment_layers at
         task.randaugment_magnitude) -> bicubic resize to task.image_size -> normalise by
         MEAN_RGB/STDDEV_RGB -> batch -> MixUp (task.mixup_alpha) on the first half of the
         batch, CutMix (task.cutmix_alpha) on the second, giving `soft_label`
  eval:  center crop of 224/256 of the shorter side (at every image_size, as the reference)
         -> resize -> normalise

  inputs float32 [image_size, image_size, 3], label int32 [] (the example's own class),
  training batches with MixUp/CutMix also soft_label float32 [batch, num_classes].

MixUp/CutMix pair examples within each process-local batch (the reference does the same per
device), so with several processes the pairs differ from a single-process run of the same
global batch; they are still deterministic and resumable.

Loss: softmax cross-entropy on the soft labels (one-hot without MixUp), label-smoothed by
task.label_smoothing in training only. Metrics: loss, accuracy (top-1) and top5_accuracy
against each example's own label, exact over eval padding. Settings are config.task fields
(the constructor's arguments); 0 (or None) disables RandAugment, MixUp or CutMix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from perceiver_jax.data import image_augment, transforms
from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.tasks.base import CLASS_LABEL, Task
from perceiver_jax.tasks.classification import check_label_smoothing

TOP_K = 5


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where `labels` [batch] is among the k largest of `logits` [batch, classes], else 0.

  A label ties with the k-th logit only if strictly fewer than k logits exceed it, so
  equal logits never count an example as correct by luck of ordering.
  """
  logits = logits.astype(jnp.float32)
  own = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)
  higher = (logits > own).sum(-1)
  return (higher < k).astype(jnp.float32)


def image_classification_sums(logits: jax.Array, labels: jax.Array, targets: jax.Array,
                              mask: jax.Array | None = None, label_smoothing: float = 0.0
                              ) -> dict[str, jax.Array]:
  """Summed loss and top-1/top-5 hits of a batch.

  Args:
    logits: [batch, num_classes].
    labels: [batch] int, each example's own class (for the accuracies).
    targets: [batch, num_classes] float label distributions (one-hot or mixed).
    mask: [batch] float, 1 real and 0 padding (eval), or None.
    label_smoothing: a, targets -> (1 - a) * targets + a / num_classes.
  Returns:
    {'loss', 'correct' (top-1), 'correct_top5', 'count'}, summed over real examples.
  """
  logits = logits.astype(jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits, targets)
  if mask is None:
    mask = jnp.ones_like(per_example)
  real = mask > 0
  top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  top5 = topk_correct(logits, labels, min(TOP_K, logits.shape[-1]))
  # where, not a product: a padding example's loss never leaks into the sum, even if NaN.
  return {'loss': jnp.where(real, per_example * mask, 0.0).sum(),
          'correct': jnp.where(real, top1 * mask, 0.0).sum(),
          'correct_top5': jnp.where(real, top5 * mask, 0.0).sum(),
          'count': mask.sum()}


def image_classification_metrics(sums, xp=jnp):
  """{'loss', 'accuracy' (top-1), 'top5_accuracy'} per example from summed totals."""
  count = xp.maximum(sums['count'], 1.0)
  return {'loss': sums['loss'] / count, 'accuracy': sums['correct'] / count,
          'top5_accuracy': sums['correct_top5'] / count}


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


class ImageClassificationTask(Task):
  """Image classification with the Perceiver ImageNet recipe (see the module docstring);
  the defaults are the recipe's values (reference experiment.py)."""

  name = 'image_classification'
  model_args = ('num_classes',)
  training_only = ('label_smoothing', 'randaugment_layers', 'randaugment_magnitude',
                   'mixup_alpha', 'cutmix_alpha')

  def __init__(self, num_classes: int = 1000, label_smoothing: float = 0.0,
               image_size: int = 224, randaugment_layers: int = 4,
               randaugment_magnitude: float = 5.0, mixup_alpha: float | None = 0.2,
               cutmix_alpha: float | None = 1.0):
    self.model_classes = num_classes  # the model's logits; the dataset must have as many
    self.label_smoothing = label_smoothing  # training loss only
    self.image_size = image_size
    self.randaugment_layers = randaugment_layers
    self.randaugment_magnitude = randaugment_magnitude
    self.mixup_alpha = mixup_alpha or 0.0
    self.cutmix_alpha = cutmix_alpha or 0.0

  @classmethod
  def model_kwargs(cls, model_config):
    return {'num_classes': model_config.num_classes}

  def check_config(self, config) -> None:
    check_label_smoothing(self.label_smoothing)
    size = self.image_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
      raise UserError(f'config.task.image_size={size!r} is invalid; use the side of the '
                      'square model input in pixels, at least 8, e.g. 224.')
    layers = self.randaugment_layers
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 0:
      raise UserError(f'config.task.randaugment_layers={layers!r} is invalid; use an integer '
                      '>= 0 (0 disables RandAugment), e.g. 4.')
    magnitude = self.randaugment_magnitude
    if not _is_number(magnitude) or not 0 <= magnitude <= 10:
      raise UserError(f'config.task.randaugment_magnitude={magnitude!r} is out of range; use '
                      'a number in [0, 10], e.g. 5.')
    for name in ('mixup_alpha', 'cutmix_alpha'):
      alpha = getattr(self, name)
      if not _is_number(alpha) or alpha < 0:
        raise UserError(f'config.task.{name}={alpha!r} is invalid; use a Beta parameter > 0, '
                        'or 0 to disable it.')

  # -- data -----------------------------------------------------------------------------------
  def features(self, builder):
    keys = builder.info.supervised_keys
    feats = builder.info.features
    ok = (isinstance(keys, tuple) and len(keys) == 2
          and all(k in feats.keys() for k in keys))
    image = feats[keys[0]] if ok else None
    shape = getattr(image, 'shape', None)
    if not (ok and isinstance(shape, tuple) and len(shape) == 3 and shape[-1] == 3
            and getattr(image, 'np_dtype', None) == np.uint8
            and hasattr(feats[keys[1]], 'num_classes')):
      raise DatasetError(
          f"Dataset '{builder.name}' has no (image uint8 [height, width, 3], class label) "
          "supervised_keys, so the image_classification task cannot read it; use an "
          "imagenet2012-style dataset such as photo_crops, or config.task.name='classification'.")
    image_key, label_key = keys
    classes = feats[label_key].num_classes
    if classes != self.model_classes:
      raise DatasetError(
          f"Dataset '{builder.name}' has {classes} classes but config.model.num_classes="
          f"{self.model_classes}; set --config.model.num_classes={classes}.")
    return {image_key: (tuple(feats[image_key].shape), np.dtype(np.uint8)),
            label_key: CLASS_LABEL}

  def input_shape(self, builder):
    return (self.image_size, self.image_size, 3)

  def num_classes(self, builder):
    return builder.info.features[builder.info.supervised_keys[1]].num_classes

  def prepare(self, data_config, builder):
    # No cast here: the augmentations work on uint8 images; Normalize comes last.
    return (transforms.ToSupervised(*builder.info.supervised_keys),)

  def _crop_padding(self) -> float:
    # The reference crops 224/(224+32) of the shorter side whatever the output size.
    return image_augment.CROP_PADDING * self.image_size / image_augment.INPUT_SIZE

  def _normalize(self):
    return transforms.Normalize(image_augment.MEAN_RGB, image_augment.STDDEV_RGB)

  def train_transforms(self, data_config):
    return (image_augment.InceptionTrainAugment(
        self.image_size, self.randaugment_layers, float(self.randaugment_magnitude),
        self._crop_padding()), self._normalize())

  def eval_transforms(self, data_config):
    return (image_augment.CenterCropResize(self.image_size, self._crop_padding()),
            self._normalize())

  def batch_transforms(self, data_config):
    if not (self.mixup_alpha or self.cutmix_alpha):
      return ()
    return (image_augment.MixUpCutMix(self.model_classes, float(self.mixup_alpha),
                                      float(self.cutmix_alpha)),)

  # -- prediction -------------------------------------------------------------------------------
  def predict_example(self, data_config, raw, input_shape):
    """raw: an RGB image uint8 [height, width, 3] of any size, centre-cropped, resized and
    normalised as evaluation does."""
    raw = np.asarray(raw)
    if raw.ndim != 3 or raw.shape[-1] != 3 or raw.dtype != np.uint8:
      raise UserError(f'An input image has shape {raw.shape} and dtype {raw.dtype}, but this '
                      'model takes RGB images uint8 [height, width, 3]; pass image files or '
                      'such arrays.')
    example = {'inputs': raw}
    for op in self.eval_transforms(data_config):
      example = op.map(example)
    return example

  def predictions(self, outputs):
    """Class probabilities [batch, num_classes]."""
    return jax.nn.softmax(outputs.astype(jnp.float32), axis=-1)

  def padding_example(self, example):
    return {'inputs': np.zeros_like(example['inputs']), 'label': np.int32(0),
            'mask': np.float32(0.0)}

  # -- loss -------------------------------------------------------------------------------------
  def loss_sums(self, outputs, batch, *, train):
    """outputs: logits [batch, num_classes]; batch 'label' [batch] and, after MixUp/CutMix,
    'soft_label' [batch, num_classes]."""
    targets = batch.get('soft_label')
    if targets is None:
      targets = jax.nn.one_hot(batch['label'], outputs.shape[-1])
    return image_classification_sums(
        outputs, batch['label'], targets, batch.get('mask'),
        label_smoothing=self.label_smoothing if train else 0.0)

  def normaliser(self, batch):
    return batch['label'].shape[0]

  def train_metrics(self, sums):
    return image_classification_metrics(sums)

  def summarize(self, sums):
    sums = {k: float(v) for k, v in sums.items()}
    metrics = {k: float(v) for k, v in image_classification_metrics(sums, np).items()}
    return {**metrics, 'num_examples': int(sums['count'])}
