"""ImageNet-recipe image preprocessing: Inception crop, flip, center crop, MixUp/CutMix.

Single-image functions take a uint8 [height, width, 3] image and return uint8
[size, size, 3]; `mixup_cutmix` works on a batch of float images. The grain transforms
at the bottom wrap them for a pipeline (`inputs` is the image, as in transforms.py).
Semantics follow the DeepMind Perceiver reference (`perceiver/train/dataset.py`):

  train: Inception crop (TF's sample_distorted_bounding_box rules) -> random left-right
         flip -> RandAugment (4 layers, magnitude 5) on the crop -> resize to 224
  eval:  center crop of 224/(224+32) of the shorter side -> resize to 224
  batch: MixUp (Beta(0.2, 0.2)) on the first half of a batch, CutMix (box area from
         Beta(1, 1)) on the second half, each example mixed with its neighbour.

Resizing is PIL bicubic on uint8: the reference's method (bicubic), antialiased when
shrinking (the reference's TF resize is not, and aliases on large crops), fast C code,
and the uint8 output clamps bicubic overshoot (the reference keeps it as floats).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import grain
import numpy as np
from PIL import Image

from perceiver_jax.data import randaugment as randaugment_lib
from perceiver_jax.errors import UserError

INPUT_SIZE = 224
CROP_PADDING = 32
# ImageNet statistics on the 0..255 scale, for transforms.Normalize after these steps.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels


def _check_image(image: Any) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise UserError(f'Image augmentation needs uint8 [height, width, 3] images, got '
                    f'{image.dtype} {list(image.shape)}.')
  return image


# ---------------------------------------------------------------------------
# Crop boxes
# ---------------------------------------------------------------------------


def center_crop_box(height: int, width: int, size: int = INPUT_SIZE,
                    crop_padding: float = CROP_PADDING) -> Box:
  """The evaluation crop: a centred square of size/(size+crop_padding) of the shorter side.

  E.g. 512x512 -> side int(0.875*512) = 448 at (32, 32). An odd margin puts the extra
  pixel before the crop (offset = (margin + 1) // 2), as the reference does.
  """
  side = int(size / (size + crop_padding) * min(height, width))
  return ((height - side + 1) // 2, (width - side + 1) // 2, side, side)


def _random_crop_attempt(rng: np.random.Generator, height: int, width: int,
                         area_range: tuple[float, float], aspect: float) -> Box | None:
  """One try of TF's GenerateRandomCrop: crop height uniform between the area bounds."""
  min_area = area_range[0] * height * width
  max_area = area_range[1] * height * width
  h = round(math.sqrt(min_area / aspect))
  max_h = round(math.sqrt(max_area / aspect))
  if round(max_h * aspect) > width:  # largest height whose rounded width still fits
    max_h = int((width + 0.5 - 1e-7) / aspect)
    if round(max_h * aspect) > width:
      max_h -= 1
  max_h = min(max_h, height)
  h = min(h, max_h)
  if h < max_h:
    h += int(rng.integers(max_h - h + 1))
  w = round(h * aspect)
  if w * h < min_area:  # nudge once past rounding, as TF does
    h += 1
    w = round(h * aspect)
  if w * h > max_area:
    h -= 1
    w = round(h * aspect)
  if not (min_area <= w * h <= max_area and 0 < w <= width and 0 < h <= height):
    return None
  top = int(rng.integers(height - h + 1))
  left = int(rng.integers(width - w + 1))
  return (top, left, h, w)


def inception_crop_box(rng: np.random.Generator, height: int, width: int,
                       area_range: tuple[float, float] = (0.08, 1.0),
                       aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
                       min_object_covered: float = 0.1, max_attempts: int = 10,
                       size: int = INPUT_SIZE, crop_padding: float = CROP_PADDING) -> Box:
  """A random Inception-style crop box inside a height x width image.

  Each attempt draws an aspect ratio (width/height) uniformly from
  `aspect_ratio_range` and a crop height uniformly among those whose area lies in
  `area_range` (fractions of the image), then a uniform position; an attempt also
  needs area >= `min_object_covered` of the image. After `max_attempts` failures, or
  if the crop is the whole image, it falls back to `center_crop_box(size,
  crop_padding)` as the reference does.

  Returns:
    (top, left, height, width) in pixels.
  """
  for _ in range(max_attempts):
    aspect = float(rng.uniform(*aspect_ratio_range))
    box = _random_crop_attempt(rng, height, width, area_range, aspect)
    if box is not None and box[2] * box[3] >= min_object_covered * height * width:
      if box[2:] != (height, width):
        return box
      break  # the reference treats a whole-image crop like a failure
  return center_crop_box(height, width, size, crop_padding)


# ---------------------------------------------------------------------------
# Single-image transforms
# ---------------------------------------------------------------------------


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """Bicubic resize (PIL, antialiased when shrinking) of uint8 [h, w, 3] to [size, size, 3].

  `size` may be (height, width).
  """
  out_h, out_w = (size, size) if isinstance(size, int) else size
  pil = Image.fromarray(image)
  return np.array(pil.resize((out_w, out_h), Image.Resampling.BICUBIC))


def crop(image: np.ndarray, box: Box) -> np.ndarray:
  """image[top:top+height, left:left+width] for box = (top, left, height, width)."""
  top, left, h, w = box
  return image[top:top + h, left:left + w]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors left-right ([:, ::-1]) with probability 1/2; any [height, width, ...]."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def inception_crop(image: np.ndarray, rng: np.random.Generator,
                   size: int = INPUT_SIZE, **box_kwargs) -> np.ndarray:
  """Random Inception crop (see `inception_crop_box`) resized to uint8 [size, size, 3]."""
  image = _check_image(image)
  box = inception_crop_box(rng, *image.shape[:2], size=size, **box_kwargs)
  return resize(crop(image, box), size)


def center_crop(image: np.ndarray, size: int = INPUT_SIZE,
                crop_padding: float = CROP_PADDING) -> np.ndarray:
  """Evaluation preprocessing: `center_crop_box` resized to uint8 [size, size, 3]."""
  image = _check_image(image)
  box = center_crop_box(*image.shape[:2], size, crop_padding)
  return resize(crop(image, box), size)


def train_preprocess(image: np.ndarray, rng: np.random.Generator,
                     size: int = INPUT_SIZE, randaugment_layers: int = 4,
                     randaugment_magnitude: float = 5.0,
                     crop_padding: float = CROP_PADDING) -> np.ndarray:
  """The recipe's training image: crop -> flip -> RandAugment on the crop -> resize.

  Args:
    image: uint8 [height, width, 3], any size.
    rng: draws everything; same state, same output.
    size: output side.
    randaugment_layers: 0 disables RandAugment.
    randaugment_magnitude: on the 0..10 scale.
    crop_padding: of the fallback center crop (see `inception_crop_box`).

  Returns:
    uint8 [size, size, 3].
  """
  image = _check_image(image)
  image = crop(image, inception_crop_box(rng, *image.shape[:2], size=size,
                                         crop_padding=crop_padding))
  image = np.ascontiguousarray(random_flip(image, rng))
  if randaugment_layers:
    image = randaugment_lib.randaugment(image, rng, randaugment_layers,
                                        randaugment_magnitude)
  return resize(image, size)


# ---------------------------------------------------------------------------
# MixUp / CutMix on a batch
# ---------------------------------------------------------------------------


class MixedBatch(NamedTuple):
  """What `mixup_cutmix` returns.

  images: [batch, ...] float, example i blended with its partner (i - 1) mod batch.
  labels: [batch, classes] float, weight * labels[i] + (1 - weight) * labels[partner].
  weight: [batch] float32, the share of example i's own label (for CutMix, the
    fraction of its own pixels left).
  """

  images: np.ndarray
  labels: np.ndarray
  weight: np.ndarray


def cutmix_box(rng: np.random.Generator, height: int, width: int,
               alpha: float = 1.0) -> Box:
  """A CutMix box: centre uniform over pixels, sides sqrt(1 - lam) of the image's.

  lam ~ Beta(alpha, alpha) (uniform for alpha 1, the reference's); the box is clipped
  at the borders, so its area fraction is at most 1 - lam.

  Returns:
    (top, left, height, width), possibly empty.
  """
  lam = float(rng.beta(alpha, alpha))
  cy, cx = int(rng.integers(height)), int(rng.integers(width))
  side = math.sqrt(1.0 - lam)
  half_h, half_w = int(side * height) // 2, int(side * width) // 2
  top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
  left, right = max(cx - half_w, 0), min(cx + half_w, width)
  return (top, left, bottom - top, right - left)


def mixup_cutmix(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 mixup_alpha: float | None = 0.2,
                 cutmix_alpha: float | None = 1.0) -> MixedBatch:
  """MixUp and CutMix on a batch, as the reference splits them.

  Example i is mixed with partner (i - 1) mod batch (the original, unmixed one). With
  both enabled, the first batch//2 examples get MixUp and the rest CutMix (the
  reference mixes half of each batch each way); with one disabled (None or 0) the
  other gets the whole batch; with both disabled nothing changes.

  MixUp: weight ~ Beta(mixup_alpha, mixup_alpha); image = w*x_i + (1-w)*x_partner.
  CutMix: the partner's pixels fill a `cutmix_box` of example i; weight is the
  fraction of example i's pixels that remain.

  Args:
    images: float [batch, height, width, channels] (MixUp alone accepts [batch, ...]).
    labels: float [batch, classes], one-hot or smoothed distributions.
    rng: draws every weight and box; same state, same output.
    mixup_alpha, cutmix_alpha: Beta parameters (the recipe's 0.2 and 1.0).

  Returns:
    MixedBatch(images, labels, weight); labels rows still sum to what they summed to.
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  if not np.issubdtype(images.dtype, np.floating) or labels.ndim != 2:
    raise UserError(f'mixup_cutmix needs float images [batch, ...] and label '
                    f'distributions [batch, classes], got {images.dtype} '
                    f'{list(images.shape)} and {list(labels.shape)}.')
  for name, alpha in (('mixup_alpha', mixup_alpha), ('cutmix_alpha', cutmix_alpha)):
    if alpha is not None and alpha < 0:
      raise UserError(f'{name} must be positive (or 0/None to disable), got {alpha}.')
  batch = images.shape[0]
  use_mixup, use_cutmix = bool(mixup_alpha), bool(cutmix_alpha)
  n_mixup = (batch // 2 if use_cutmix else batch) if use_mixup else 0
  n_cutmix = batch - n_mixup if use_cutmix else 0
  partner = np.roll(np.arange(batch), 1)
  weight = np.ones(batch, np.float32)
  out = np.array(images)
  if n_mixup:
    weight[:n_mixup] = rng.beta(mixup_alpha, mixup_alpha, size=n_mixup)
    w = weight[:n_mixup].reshape((-1,) + (1,) * (images.ndim - 1)).astype(images.dtype)
    out[:n_mixup] = w * images[:n_mixup] + (1 - w) * images[partner[:n_mixup]]
  if n_cutmix:
    if images.ndim != 4:
      raise UserError(f'CutMix needs images [batch, height, width, channels], got '
                      f'{list(images.shape)}.')
    height, width = images.shape[1:3]
    for i in range(n_mixup, n_mixup + n_cutmix):
      top, left, h, w = cutmix_box(rng, height, width, cutmix_alpha)
      out[i, top:top + h, left:left + w] = images[partner[i], top:top + h, left:left + w]
      weight[i] = 1.0 - h * w / (height * width)
  wl = weight[:, None].astype(labels.dtype)
  mixed_labels = wl * labels + (1 - wl) * labels[partner]
  return MixedBatch(out, mixed_labels, weight)


# ---------------------------------------------------------------------------
# grain transforms
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InceptionTrainAugment(grain.transforms.RandomMap):
  """`train_preprocess` on `inputs`: uint8 [h, w, 3] -> uint8 [size, size, 3]."""

  size: int = INPUT_SIZE
  randaugment_layers: int = 4
  randaugment_magnitude: float = 5.0
  crop_padding: float = CROP_PADDING  # of the fallback center crop

  def random_map(self, element: dict[str, Any], rng: np.random.Generator):
    image = train_preprocess(element['inputs'], rng, self.size,
                             self.randaugment_layers, self.randaugment_magnitude,
                             self.crop_padding)
    return {**element, 'inputs': image}


@dataclasses.dataclass(frozen=True)
class CenterCropResize(grain.transforms.Map):
  """`center_crop` on `inputs`: uint8 [h, w, 3] -> uint8 [size, size, 3]."""

  size: int = INPUT_SIZE
  crop_padding: float = CROP_PADDING

  def map(self, element: dict[str, Any]):
    return {**element, 'inputs': center_crop(element['inputs'], self.size,
                                             self.crop_padding)}


@dataclasses.dataclass(frozen=True)
class MixUpCutMix(grain.transforms.RandomMap):
  """`mixup_cutmix` on a BATCHED element: runs after batching and normalisation.

  In: `inputs` float [batch, h, w, c] ([batch, ...] with MixUp alone), `label` int [batch]. Out: mixed `inputs`,
  `label` unchanged (each example's own class, for accuracy), `soft_label` float32
  [batch, num_classes] (the mixed one-hot labels; smoothing can follow, it commutes).
  """

  num_classes: int
  mixup_alpha: float | None = 0.2
  cutmix_alpha: float | None = 1.0

  def random_map(self, element: dict[str, Any], rng: np.random.Generator):
    one_hot = np.eye(self.num_classes, dtype=np.float32)[np.asarray(element['label'])]
    mixed = mixup_cutmix(element['inputs'], one_hot, rng, self.mixup_alpha,
                         self.cutmix_alpha)
    return {**element, 'inputs': mixed.images, 'soft_label': mixed.labels}
