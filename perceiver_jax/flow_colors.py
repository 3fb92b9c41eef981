"""Optical flow as a colour image: the Middlebury colour wheel (Baker et al. 2011).

Hue gives the direction of the flow at a pixel and saturation its length relative to the
longest flow of the image: white is no motion, a fully saturated colour the longest.
The wheel runs red -> yellow -> green -> cyan -> blue -> magenta -> red with 15, 6, 4, 11,
13 and 6 steps between those six colours (the Middlebury benchmark's choice, which spaces
perceptually similar hues less finely).
"""

from __future__ import annotations

import numpy as np

# Steps from each of the six colours to the next.
SEGMENTS = (('red', 15), ('yellow', 6), ('green', 4), ('cyan', 11), ('blue', 13),
            ('magenta', 6))
_CORNERS = {'red': (255, 0, 0), 'yellow': (255, 255, 0), 'green': (0, 255, 0),
            'cyan': (0, 255, 255), 'blue': (0, 0, 255), 'magenta': (255, 0, 255)}


def color_wheel() -> np.ndarray:
  """The wheel's colours float [55, 3] in 0..255, linearly blended between the corners."""
  names = [name for name, _ in SEGMENTS]
  rows = []
  for i, (name, steps) in enumerate(SEGMENTS):
    start = np.asarray(_CORNERS[name], np.float64)
    end = np.asarray(_CORNERS[names[(i + 1) % len(names)]], np.float64)
    t = np.arange(steps)[:, None] / steps
    rows.append(start + t * (end - start))
  return np.concatenate(rows)


def flow_to_rgb(flow: np.ndarray, max_radius: float | None = None) -> np.ndarray:
  """Flow float [H, W, 2] (dx, dy) -> uint8 RGB [H, W, 3].

  max_radius: the flow length drawn fully saturated (default: the image's longest flow);
  longer vectors are darkened by a quarter. Non-finite flow is drawn black.
  """
  flow = np.asarray(flow, np.float64)
  finite = np.isfinite(flow).all(-1)
  u = np.where(finite, flow[..., 0], 0.0)
  v = np.where(finite, flow[..., 1], 0.0)
  radius = np.hypot(u, v)
  scale = max_radius if max_radius else max(float(radius.max()), 1e-12)
  radius = radius / scale
  wheel = color_wheel()
  n = len(wheel)
  # Angle -1..1 (from -v, -u: flow to the right is red, as Middlebury draws it) -> position.
  position = (np.arctan2(-v, -u) / np.pi + 1.0) / 2.0 * (n - 1)
  low = np.floor(position).astype(int)
  high = (low + 1) % n
  frac = (position - low)[..., None]
  color = ((1 - frac) * wheel[low] + frac * wheel[high]) / 255.0
  inside = (radius <= 1.0)[..., None]
  color = np.where(inside, 1.0 - radius[..., None] * (1.0 - color), color * 0.75)
  color = np.where(finite[..., None], color, 0.0)
  return np.round(color * 255.0).astype(np.uint8)
