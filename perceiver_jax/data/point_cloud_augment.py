"""Point-cloud normalisation and training augmentations (numpy, per example, grain).

An example's `inputs` is float32 [num_points, 3 + F]: xyz first, then F per-point features
(e.g. normals) that the coordinate transforms leave alone (rotation turns channels 3:6 too,
which the ModelNet40 builder's normals configs store as unit normals).

  fit_unit_cube(xyz)        zero-mean, then scaled so max |coordinate| = 1 ([-1, 1]^3, the
                            range the Fourier position features expect)
  PointCloudJitter          the Perceiver paper's ModelNet40 augmentation (Sec. 4.3): random
                            per-point scaling in [0.99, 1.01] followed by zero-mean and
                            unit-cube normalisation; optionally the per-point translation
                            (+-0.02) and rotation the paper tried without gain
  PointCloudAffine          PointNet++-style practice: one random anisotropic scale per axis
                            (default [2/3, 3/2]) and translation (default +-0.2) per object,
                            not renormalised

Registered as data.augment 'point_cloud' and 'point_cloud_affine' (transforms.AUGMENTATIONS),
built from the data config by `paper_augment` / `affine_augment`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from perceiver_jax.errors import UserError

Example = dict[str, Any]


def fit_unit_cube(xyz: np.ndarray) -> np.ndarray:
  """[N, 3] -> float32 [N, 3]: centred on the mean point, largest |coordinate| 1.

  A degenerate cloud (all points equal) comes back as zeros rather than NaNs.
  """
  xyz = np.asarray(xyz, np.float32)
  centred = xyz - xyz.mean(axis=0, keepdims=True)
  extent = np.abs(centred).max()
  return centred / extent if extent > 0 else np.zeros_like(centred)


def rotation_about_z(angle: float) -> np.ndarray:
  """[3, 3] float32 rotation by `angle` radians about the up (z) axis."""
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], np.float32)


def _check_points(x: np.ndarray, who: str) -> None:
  if x.ndim != 2 or x.shape[1] < 3:
    raise ValueError(f'{who} needs inputs of shape [num_points, 3 + features] with xyz '
                     f'first, got {x.shape}.')


@dataclasses.dataclass(frozen=True)
class PointCloudJitter(grain.transforms.RandomMap):
  """Per-point random scaling (and optional translation / rotation), then `fit_unit_cube`.

  Each point's xyz is multiplied by its own factor from U[scale_low, scale_high] (one
  factor per point, the paper's "per-point scaling"), moved by U[-shift, shift] per
  coordinate if shift > 0, and the cloud is turned about the up axis by U[0, 2 pi) if
  rotate; the result is re-centred and fitted to the unit cube (unless normalize=False).
  """

  scale_low: float = 0.99
  scale_high: float = 1.01
  shift: float = 0.0
  rotate: bool = False
  normalize: bool = True

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    x = np.asarray(element['inputs'], np.float32)
    _check_points(x, 'PointCloudJitter')
    n = x.shape[0]
    xyz = x[:, :3] * rng.uniform(self.scale_low, self.scale_high, size=(n, 1))
    if self.shift:
      xyz = xyz + rng.uniform(-self.shift, self.shift, size=(n, 3))
    out = x.copy()
    if self.rotate:
      r = rotation_about_z(rng.uniform(0.0, 2.0 * np.pi))
      xyz = xyz @ r.T
      if x.shape[1] >= 6:  # normals turn with the object
        out[:, 3:6] = x[:, 3:6] @ r.T
    out[:, :3] = fit_unit_cube(xyz) if self.normalize else xyz
    return {**element, 'inputs': out}


@dataclasses.dataclass(frozen=True)
class PointCloudAffine(grain.transforms.RandomMap):
  """One anisotropic scale per axis from U[scale_low, scale_high] and one translation per
  axis from U[-shift, shift], for the whole cloud (PointNet++/DGCNN practice); features
  are unchanged."""

  scale_low: float = 2.0 / 3.0
  scale_high: float = 1.5
  shift: float = 0.2

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    x = np.asarray(element['inputs'], np.float32)
    _check_points(x, 'PointCloudAffine')
    scale = rng.uniform(self.scale_low, self.scale_high, size=(1, 3))
    shift = rng.uniform(-self.shift, self.shift, size=(1, 3))
    out = x.copy()
    out[:, :3] = (x[:, :3] * scale + shift).astype(np.float32)
    return {**element, 'inputs': out}


def _pair(value, name: str) -> tuple[float, float]:
  low, high = (float(v) for v in value)
  if not 0 < low <= high:
    raise UserError(f'config.data.{name}={tuple(value)!r} is invalid; use (low, high) with '
                     '0 < low <= high.')
  return low, high


def paper_augment(data_config) -> tuple[grain.transforms.RandomMap, ...]:
  """data.augment='point_cloud': PointCloudJitter from data.point_scale (default (0.99,
  1.01)), data.point_shift (0.0) and data.point_rotate (False)."""
  low, high = _pair(getattr(data_config, 'point_scale', None) or (0.99, 1.01), 'point_scale')
  return (PointCloudJitter(low, high, float(getattr(data_config, 'point_shift', 0.0) or 0.0),
                           bool(getattr(data_config, 'point_rotate', False))),)


def affine_augment(data_config) -> tuple[grain.transforms.RandomMap, ...]:
  """data.augment='point_cloud_affine': PointCloudAffine from data.point_scale (default
  (2/3, 3/2)) and data.point_shift (0.2)."""
  low, high = _pair(getattr(data_config, 'point_scale', None) or (2.0 / 3.0, 1.5),
                    'point_scale')
  shift = getattr(data_config, 'point_shift', None)
  return (PointCloudAffine(low, high, 0.2 if shift is None else float(shift)),)
