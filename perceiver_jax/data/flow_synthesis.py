"""Random smooth optical-flow fields and bilinear backward warping (numpy).

Flow convention (the Perceiver IO flow decoder's, see below):
  `flow` is float32 [H, W, 2] in pixels on the grid of FRAME 1; channel 0 is the
  horizontal displacement dx (towards increasing column index), channel 1 the
  vertical displacement dy (towards increasing row index). The pixel at
  (row y, col x) of frame 1 moves to (y + dy, x + dx) in frame 2 ("forward" flow).
  DeepMind's optical-flow colab (perceiver/colabs/optical_flow.ipynb) reads the
  released model's output [B, H, W, 2] as `cv2.cartToPolar(flow[..., 0],
  flow[..., 1])`, i.e. (x, y) = (dx, dy), the same order as Sintel/AutoFlow
  `.flo` files (u, v); its decoder queries are frame-1 features, one per pixel.

Frame pairs with exact ground truth come from backward warping: given frame 2
and a flow on frame 1's grid, frame1(y, x) = frame2(y + dy, x + dx) (bilinear),
so each frame-1 pixel shows the frame-2 content it moves to. See
`backward_warp`; the TFDS builder `skimage_flow` uses exactly this.

Flow fields (`random_flow`) follow the spirit of AutoFlow (Sun et al., CVPR
2021): a random global affine motion, plus a smooth random deformation
(Gaussian-smoothed noise), plus a few elliptical layers with soft edges, each
with its own affine motion, composited over the background. The result is
rescaled so that its largest displacement is a random fraction of
`max_displacement` and its largest finite-difference derivative is at most
`max_gradient`; both bounds hold for every field (up to float32 rounding).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from perceiver_jax.errors import UserError


def bilinear_sample(image: np.ndarray, ys: np.ndarray, xs: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Samples `image` at real-valued pixel positions.

  Args:
    image: [H, W, C] (any real dtype; computed in float32).
    ys, xs: [...] row and column positions (pixel centres at integers).

  Returns:
    values float32 [..., C]; valid bool [...], True where 0 <= y <= H-1 and
    0 <= x <= W-1. Positions outside are clamped to the border (edge pixels
    repeated), so their values are defined but do not follow the flow.
  """
  image = np.asarray(image, np.float32)
  h, w = image.shape[:2]
  ys = np.asarray(ys, np.float32)
  xs = np.asarray(xs, np.float32)
  valid = (ys >= 0) & (ys <= h - 1) & (xs >= 0) & (xs <= w - 1)
  ys = np.clip(ys, 0, h - 1)
  xs = np.clip(xs, 0, w - 1)
  y0 = np.floor(ys).astype(np.int64)
  x0 = np.floor(xs).astype(np.int64)
  # At the last row/column the upper neighbour has weight 0; clamp its index.
  y1 = np.minimum(y0 + 1, h - 1)
  x1 = np.minimum(x0 + 1, w - 1)
  wy = (ys - y0)[..., None]
  wx = (xs - x0)[..., None]
  top = image[y0, x0] * (1 - wx) + image[y0, x1] * wx
  bottom = image[y1, x0] * (1 - wx) + image[y1, x1] * wx
  return (top * (1 - wy) + bottom * wy).astype(np.float32), valid


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Row and column indices, each float32 [height, width]."""
  ys, xs = np.meshgrid(np.arange(height, dtype=np.float32),
                       np.arange(width, dtype=np.float32), indexing='ij')
  return ys, xs


def backward_warp(frame2: np.ndarray, flow: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
  """frame1(y, x) = frame2(y + flow[y, x, 1], x + flow[y, x, 0]), bilinear.

  Args:
    frame2: [H2, W2, C] image the flow points into.
    flow: float [H, W, 2] (dx, dy) on frame 1's grid (H, W may differ from
      frame 2's; positions are in frame 2's pixel coordinates).

  Returns:
    frame1 float32 [H, W, C]; valid bool [H, W], True where the target
    position lies inside frame 2 (elsewhere frame1 repeats frame 2's border).
  """
  flow = np.asarray(flow, np.float32)
  if flow.ndim != 3 or flow.shape[-1] != 2:
    raise ValueError(f'flow must be [H, W, 2] (dx, dy), got shape {flow.shape}.')
  ys, xs = pixel_grid(*flow.shape[:2])
  return bilinear_sample(frame2, ys + flow[..., 1], xs + flow[..., 0])


def max_gradient_of(flow: np.ndarray) -> float:
  """Largest |forward difference| of either flow channel along rows or columns."""
  flow = np.asarray(flow, np.float64)
  grads = [np.abs(np.diff(flow, axis=a)).max(initial=0.0) for a in (0, 1)]
  return float(max(grads))


def _affine_motion(rng: np.random.Generator, u: np.ndarray, v: np.ndarray,
                   strength: float) -> np.ndarray:
  """Translation plus a random linear map (rotation, zoom, shear) about the
  centre; [H, W, 2] in units of the half-size of the crop."""
  angle = rng.uniform(0, 2 * np.pi)
  translation = rng.uniform(0, 1) * np.array([np.cos(angle), np.sin(angle)])
  linear = rng.normal(0, strength, size=(2, 2))
  return np.stack([translation[0] + linear[0, 0] * u + linear[0, 1] * v,
                   translation[1] + linear[1, 0] * u + linear[1, 1] * v], -1)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int],
                  sigma: float) -> np.ndarray:
  """Gaussian-smoothed white noise [H, W, 2], scaled to max |value| = 1."""
  noise = rng.normal(size=(*shape, 2))
  field = np.stack([ndimage.gaussian_filter(noise[..., c], sigma, mode='reflect')
                    for c in range(2)], -1)
  return field / max(np.abs(field).max(), 1e-12)


def _soft_ellipse(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray,
                  size: int) -> np.ndarray:
  """Opacity [H, W] in (0, 1) of a random ellipse whose edge ramps over a few px."""
  h, w = ys.shape
  cy, cx = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
  ry, rx = rng.uniform(0.15, 0.5, size=2) * size
  theta = rng.uniform(0, np.pi)
  edge = rng.uniform(0.08, 0.2) * size  # ramp width in pixels
  dy, dx = ys - cy, xs - cx
  a = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
  b = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
  # Signed distance to the boundary, approximately in pixels (exact for circles).
  dist = (1 - np.sqrt(a * a + b * b)) * np.sqrt(rx * ry)
  return 1 / (1 + np.exp(-4 * dist / edge))


def random_flow(rng: np.random.Generator, shape: tuple[int, int], *,
                max_displacement: float, max_gradient: float = 1.0,
                max_layers: int = 3, min_fraction: float = 0.1) -> np.ndarray:
  """A random smooth flow field (AutoFlow-style), float32 [H, W, 2] (dx, dy).

  Args:
    rng: the only source of randomness (same state -> same field).
    shape: (H, W) of frame 1.
    max_displacement: bound on |flow| (Euclidean, pixels) at every pixel; the
      field's largest displacement is uniform in [min_fraction, 1] times this,
      unless the gradient bound forces it lower.
    max_gradient: bound on every forward difference |f[i+1] - f[i]| of each
      channel along rows and columns (pixels per pixel).
    max_layers: up to this many soft elliptical layers with their own motion.
    min_fraction: smallest fraction of `max_displacement` drawn as the peak.
  """
  h, w = shape
  if h < 2 or w < 2 or max_displacement <= 0 or max_gradient <= 0:
    raise UserError(
        f'random_flow needs shape >= (2, 2) and positive max_displacement and '
        f'max_gradient, got shape {shape}, max_displacement {max_displacement}, '
        f'max_gradient {max_gradient}.')
  size = min(h, w)
  ys, xs = pixel_grid(h, w)
  half = max(h, w) / 2
  u, v = (xs - (w - 1) / 2) / half, (ys - (h - 1) / 2) / half
  flow = _affine_motion(rng, u, v, strength=0.3)
  flow = flow + rng.uniform(0, 0.5) * _smooth_noise(
      rng, shape, sigma=rng.uniform(0.1, 0.25) * size)
  for _ in range(rng.integers(0, max_layers + 1)):
    alpha = _soft_ellipse(rng, ys, xs, size)[..., None]
    flow = alpha * _affine_motion(rng, u, v, strength=0.2) + (1 - alpha) * flow
  peak = np.sqrt((flow ** 2).sum(-1)).max()
  flow = flow * (rng.uniform(min_fraction, 1) * max_displacement / max(peak, 1e-12))
  grad = max_gradient_of(flow)
  if grad > max_gradient:
    flow = flow * (max_gradient / grad)
  return flow.astype(np.float32)
