"""Per-example numpy transforms, as grain `MapTransform`s.

Each transform takes and returns one example: a dict of numpy arrays without a
batch dimension (e.g. `inputs` [40, 1] or [8, 8, 1], `label` []). They run
inside grain's pipeline, before batching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any

import grain
import numpy as np

from perceiver_jax.data import point_cloud_augment

Example = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ToSupervised(grain.transforms.Map):
  """Keeps only the (inputs, label) pair, renamed to `inputs` and `label`.

  TFDS datasets name their features differently ('image', 'text', ...); their
  `supervised_keys` tell which pair to keep. `label` becomes an int32 scalar.
  """

  inputs_key: str = 'inputs'
  label_key: str = 'label'

  def map(self, element: Example) -> Example:
    return {
        'inputs': np.asarray(element[self.inputs_key]),
        'label': np.asarray(element[self.label_key], np.int32),
    }


@dataclasses.dataclass(frozen=True)
class Normalize(grain.transforms.Map):
  """Casts `inputs` to float32 and maps it to (x - mean) / std.

  mean/std are scalars (one statistic for the whole dataset) or sequences that
  broadcast against the trailing (channel) axis of `inputs`.
  """

  mean: float | Sequence[float] = 0.0
  std: float | Sequence[float] = 1.0

  def map(self, element: Example) -> Example:
    x = element['inputs'].astype(np.float32)
    mean = np.asarray(self.mean, np.float32)
    inv_std = np.float32(1.0) / np.asarray(self.std, np.float32)
    return {**element, 'inputs': (x - mean) * inv_std}


@dataclasses.dataclass(frozen=True)
class AddMask(grain.transforms.Map):
  """Adds `mask` float32 [] = `value` (1 for real examples, 0 for padding)."""

  value: float = 1.0

  def map(self, element: Example) -> Example:
    return {**element, 'mask': np.float32(self.value)}


@dataclasses.dataclass(frozen=True)
class RandomShift(grain.transforms.RandomMap):
  """Translates `inputs` by up to `max_shift` positions along every index axis.

  `inputs` is [*index, channels]; vacated positions repeat the edge value, which is
  the background for digits and the baseline for MNIST-1D signals.
  """

  max_shift: int = 1

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    x = element['inputs']
    s = self.max_shift
    shifts = rng.integers(-s, s + 1, size=x.ndim - 1)
    padded = np.pad(x, [(s, s)] * (x.ndim - 1) + [(0, 0)], mode='edge')
    window = tuple(slice(s - d, s - d + n) for d, n in zip(shifts, x.shape[:-1]))
    return {**element, 'inputs': padded[window]}


@dataclasses.dataclass(frozen=True)
class RandomScaleNoise(grain.transforms.RandomMap):
  """Multiplies `inputs` by one factor in [low, high] and adds Gaussian noise of `noise_std`.

  Acts on each value alone, so unlike translation it stays label-preserving under any
  fixed permutation of the positions (shuffled MNIST-1D).
  """

  low: float = 0.8
  high: float = 1.2
  noise_std: float = 0.1

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    x = element['inputs']
    scale = rng.uniform(self.low, self.high)
    noise = rng.normal(0.0, self.noise_std, size=x.shape)
    return {**element, 'inputs': (x * scale + noise).astype(x.dtype)}


def _scale_noise(data_config) -> tuple[grain.transforms.RandomMap, ...]:
  low, high = getattr(data_config, 'scale_range', None) or (0.8, 1.2)
  noise_std = getattr(data_config, 'noise_std', None)
  return (RandomScaleNoise(float(low), float(high),
                           0.1 if noise_std is None else float(noise_std)),)


# Augmentations by config name (`data.augment`): each builds the transforms applied to
# training examples only, after normalisation, from the data config. Random ones are
# `grain.transforms.RandomMap`s so they stay deterministic under the seed.
AUGMENTATIONS: dict[str, Callable[[Any], tuple[grain.transforms.Map, ...]]] = {
    '': lambda data_config: (),
    # Translation by up to data.max_shift positions per index axis (default 1).
    'random_shift': lambda data_config: (
        RandomShift(int(getattr(data_config, 'max_shift', 1) or 1)),),
    # Amplitude scaling by data.scale_range (default (0.8, 1.2)) plus Gaussian noise of
    # data.noise_std (default 0.1) per value: permutation-safe.
    'scale_noise': _scale_noise,
    # Point clouds [points, 3 + F] (perceiver_jax/data/point_cloud_augment.py): the Perceiver
    # paper's per-point scaling + unit cube, and PointNet++-style per-object scale + shift.
    'point_cloud': lambda data_config: point_cloud_augment.paper_augment(data_config),
    'point_cloud_affine': lambda data_config: point_cloud_augment.affine_augment(data_config),
}
