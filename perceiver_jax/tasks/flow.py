"""Optical flow (Perceiver IO): two frames in, a flow field out, scored by end-point error.

Data: a flow dataset with features 'frames' uint8 [2, H, W, 3] (frame 1, frame 2), 'flow'
float32 [H, W, 2] (forward flow frame 1 -> 2 in pixels, channels dx, dy) and 'valid' bool
[H, W] (e.g. the embedded skimage_flow, or flow_files for Sintel / KITTI / AutoFlow files).
H and W may vary per example: training takes a random crop of task.crop_size (and, with
task.flip, mirrors it left-right, negating dx), evaluation the centre crop; crop_size
() keeps the stored size (all examples must then share it). With task.curriculum_start < 1
and task.curriculum_examples > 0, training example n first has its flow scaled by a factor
rising linearly from curriculum_start to 1 over curriculum_examples examples, frame 1
re-warped from frame 2 (data/flow_curriculum.py): small displacements first.

Examples: inputs float32 [2, h, w, 3] (frames scaled to [-1, 1], as the released model's
colab normalises them), flow float32 [h, w, 2], valid float32 [h, w]. The model (an image
preprocessor with flow_patch_size, a flow decoder) returns flow [batch, h, w, 2] in pixels.

Loss (task.flow_loss): 'epe', the mean end-point error |pred - flow|_2, or 'l1', the mean
|dx| + |dy| error, over the valid pixels (task.valid_only, default) or all pixels.
Metrics: 'epe' over valid pixels, 'epe_all' over all pixels, and '1px' / '3px' / '5px',
the fraction of valid pixels with an end-point error below 1, 3 and 5 pixels; all exact
over batches (pixel sums, as Sintel and KITTI pool pixels) and eval padding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_jax.data import flow_curriculum
from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.tasks.base import Task, check_shape

FLOW_LOSSES = ('epe', 'l1')
THRESHOLDS = (1, 3, 5)  # pixels: the '1px', '3px', '5px' accuracies


def _crop(element: dict[str, Any], top: int, left: int, size) -> dict[str, Any]:
  h, w = size
  return {**element,
          'frames': element['frames'][:, top:top + h, left:left + w],
          'flow': element['flow'][top:top + h, left:left + w],
          'valid': element['valid'][top:top + h, left:left + w]}


def _check_size(element, size) -> None:
  height, width = element['flow'].shape[:2]
  if height < size[0] or width < size[1]:
    raise UserError(f'A flow example of {height}x{width} pixels is smaller than '
                    f'config.task.crop_size={tuple(size)}; use a crop that fits every '
                    'example.')


@dataclasses.dataclass(frozen=True)
class RandomFlowCrop(grain.transforms.RandomMap):
  """A random crop of `size` (None: all) of frames, flow and valid; with `flip`, a random
  left-right mirror (which negates dx)."""

  size: tuple[int, int] | None = None
  flip: bool = False

  def random_map(self, element, rng: np.random.Generator):
    if self.size is not None:
      _check_size(element, self.size)
      height, width = element['flow'].shape[:2]
      top = int(rng.integers(0, height - self.size[0] + 1))
      left = int(rng.integers(0, width - self.size[1] + 1))
      element = _crop(element, top, left, self.size)
    if self.flip and rng.random() < 0.5:
      flow = element['flow'][:, ::-1] * np.asarray([-1.0, 1.0], np.float32)
      element = {**element, 'frames': element['frames'][:, :, ::-1],
                 'flow': flow, 'valid': element['valid'][:, ::-1]}
    return element


@dataclasses.dataclass(frozen=True)
class CenterFlowCrop(grain.transforms.Map):
  """The centre crop of `size` (None: all) of frames, flow and valid."""

  size: tuple[int, int] | None = None

  def map(self, element):
    if self.size is None:
      return element
    _check_size(element, self.size)
    height, width = element['flow'].shape[:2]
    return _crop(element, (height - self.size[0]) // 2, (width - self.size[1]) // 2,
                 self.size)


def scale_frames(frames) -> np.ndarray:
  """uint8 frames [2, H, W, 3] -> float32 in [-1, 1], as the released model's colab."""
  return np.asarray(frames, np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


@dataclasses.dataclass(frozen=True)
class ToFlowExample(grain.transforms.Map):
  """frames uint8 -> inputs float32 in [-1, 1]; flow float32; valid float32."""

  def map(self, element):
    return {'inputs': scale_frames(element['frames']),
            'flow': np.ascontiguousarray(element['flow'], np.float32),
            'valid': np.asarray(element['valid'], np.float32)}


def flow_sums(pred: jax.Array, flow: jax.Array, valid: jax.Array, weights: jax.Array,
              *, flow_loss: str = 'epe', valid_only: bool = True) -> dict[str, jax.Array]:
  """Summed flow loss and metrics.

  Args:
    pred, flow: float [batch, H, W, 2] (pixels).
    valid: float [batch, H, W], 1 where the true flow is valid.
    weights: float [batch], 1 for real examples, 0 for padding.
  Returns:
    {'loss': summed per-pixel loss over the loss pixels, 'loss_pixels': their number,
     'epe' / 'valid_pixels': summed EPE over / number of valid pixels, 'epe_all' /
     'pixels': the same over all pixels, '1px', '3px', '5px': valid pixels below each
     threshold}.
  """
  pred = pred.astype(jnp.float32)
  diff = pred - flow
  squared = jnp.sum(jnp.square(diff), axis=-1)  # [batch, H, W]
  # sqrt has an infinite slope at 0 (a perfect pixel, e.g. the zero-initialised head on
  # zero flow): the inner where keeps its gradient finite there.
  positive = squared > 0
  epe = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
  every = jnp.broadcast_to(weights[:, None, None], epe.shape)
  counted = valid * every
  per_pixel = epe if flow_loss == 'epe' else jnp.sum(jnp.abs(diff), axis=-1)
  loss_weights = counted if valid_only else every
  sums = {'loss': jnp.sum(jnp.where(loss_weights > 0, per_pixel * loss_weights, 0.0)),
          'loss_pixels': loss_weights.sum(),
          'epe': jnp.sum(jnp.where(counted > 0, epe * counted, 0.0)),
          'valid_pixels': counted.sum(),
          'epe_all': jnp.sum(jnp.where(every > 0, epe * every, 0.0)),
          'pixels': every.sum()}
  for t in THRESHOLDS:
    sums[f'{t}px'] = jnp.sum(jnp.where(epe < t, counted, 0.0))
  return sums


def flow_metrics(sums, xp=jnp):
  """Per-pixel means from summed totals: loss, epe, epe_all and the threshold fractions."""
  valid = xp.maximum(sums['valid_pixels'], 1.0)
  out = {'loss': sums['loss'] / xp.maximum(sums['loss_pixels'], 1.0),
         'epe': sums['epe'] / valid,
         'epe_all': sums['epe_all'] / xp.maximum(sums['pixels'], 1.0)}
  for t in THRESHOLDS:
    out[f'{t}px'] = sums[f'{t}px'] / valid
  return out


def _size(crop_size) -> tuple[int, int] | None:
  if not crop_size:
    return None
  if isinstance(crop_size, int):
    return (crop_size, crop_size)
  return tuple(int(n) for n in crop_size)


class FlowTask(Task):
  """Optical flow; the constructor arguments are config.task's fields. crop_size () keeps
  the stored size (a tuple, not None, so --config.task.crop_size='(368, 496)' can set it)."""

  name = 'flow'
  training_only = ('flip', 'curriculum_start', 'curriculum_examples')

  def __init__(self, crop_size: tuple[int, int] | int = (), flip: bool = False,
               flow_loss: str = 'epe', valid_only: bool = True,
               curriculum_start: float = 1.0, curriculum_examples: int = 0):
    """curriculum_start, curriculum_examples: the displacement curriculum (module
    docstring); 1.0 or 0 turns it off (the default)."""
    self.crop_size = crop_size
    self.flip = bool(flip)
    self.curriculum_start = curriculum_start
    self.curriculum_examples = curriculum_examples
    self.flow_loss = flow_loss
    self.valid_only = bool(valid_only)

  def check_config(self, config) -> None:
    if self.flow_loss not in FLOW_LOSSES:
      raise UserError(f'config.task.flow_loss={self.flow_loss!r} is unknown; use one of '
                      f'{", ".join(repr(x) for x in FLOW_LOSSES)}.')
    flow_curriculum.check_curriculum(self.curriculum_start, self.curriculum_examples)
    size = self.crop_size
    if size and not (isinstance(size, int) and size > 0 or (
        isinstance(size, (tuple, list)) and len(size) == 2
        and all(isinstance(n, int) and n > 0 for n in size))):
      raise UserError(f'config.task.crop_size={size!r} is not a crop; use (height, width) '
                      'in pixels, e.g. (368, 496), or () for the stored size.')
    if config.model.decoder.get('name') != 'flow':
      raise UserError(f"config.task.name='flow' needs config.model.decoder.name='flow', not "
                      f"{config.model.decoder.get('name')!r}.")

  # -- data -----------------------------------------------------------------------------------
  def features(self, builder):
    feats = builder.info.features
    if not all(k in feats for k in ('frames', 'flow', 'valid')):
      raise DatasetError(
          f"Dataset '{builder.name}' has no 'frames', 'flow' and 'valid' features, so the "
          "flow task cannot read it; use a flow dataset such as skimage_flow or flow_files, "
          "or another config.task.name.")
    return {k: (tuple(feats[k].shape), np.dtype(feats[k].np_dtype))
            for k in ('frames', 'flow', 'valid')}

  def input_shape(self, builder):
    stored = tuple(builder.info.features['frames'].shape)  # (2, H, W, 3)
    size = _size(self.crop_size)
    if size is None:
      if None in stored:
        raise DatasetError(
            f"Dataset '{builder.name}' has frames of varying size {stored}; set "
            "config.task.crop_size=(height, width) so the model sees one size.")
      return stored
    return (stored[0], *size, stored[3])

  def num_classes(self, builder):
    return 2  # flow channels (dx, dy)

  def train_transforms(self, data_config):
    crop = (RandomFlowCrop(_size(self.crop_size), self.flip), ToFlowExample())
    if self.curriculum_start >= 1.0 or self.curriculum_examples <= 0:
      return crop
    # Before the crop: the whole stored frame 2 is there to warp from.
    return (flow_curriculum.FlowMagnitudeCurriculum(
        float(self.curriculum_start), int(self.curriculum_examples)), *crop)

  def eval_transforms(self, data_config):
    return (CenterFlowCrop(_size(self.crop_size)), ToFlowExample())

  # -- model and loss --------------------------------------------------------------------------
  def loss_sums(self, outputs, batch, *, train):
    """outputs: flow [batch, H, W, 2] in pixels."""
    weights = batch.get('mask')
    if weights is None:
      weights = jnp.ones(batch['flow'].shape[:1], jnp.float32)
    return {**flow_sums(outputs, batch['flow'], batch['valid'], weights,
                        flow_loss=self.flow_loss, valid_only=self.valid_only),
            'examples': weights.sum()}

  def normaliser(self, batch):
    if self.valid_only:
      return jnp.maximum(batch['valid'].sum(), 1.0)
    return float(np.prod(batch['valid'].shape))

  def train_metrics(self, sums):
    metrics = flow_metrics(sums)
    return {'loss': metrics['loss'], 'epe': metrics['epe']}

  def summarize(self, sums):
    sums = {k: float(v) for k, v in sums.items()}
    metrics = {k: float(v) for k, v in flow_metrics(sums, np).items()}
    return {**metrics, 'num_pixels': int(sums['valid_pixels']),
            'num_examples': int(sums['examples'])}

  # -- prediction -------------------------------------------------------------------------------
  def predict_example(self, data_config, raw, input_shape):
    """raw: two RGB frames uint8 [2, H, W, 3] (frame 1, frame 2) of the model's size;
    predict returns flow float32 [H, W, 2] (dx, dy) in pixels from frame 1 to frame 2."""
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
      raise UserError(f'Flow frames have dtype {raw.dtype}; pass the two frames as uint8 RGB '
                      'images (image files, or arrays [2, height, width, 3]).')
    check_shape('A frame pair', raw.shape, input_shape)
    return {'inputs': scale_frames(raw)}
