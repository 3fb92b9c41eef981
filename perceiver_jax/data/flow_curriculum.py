"""A displacement curriculum for optical-flow training: small motions first.

AutoFlow-style training is a curriculum: the network first learns small motions, which a
pixel's own neighbourhood can resolve, and then larger ones. `FlowMagnitudeCurriculum`
does this on a stored flow dataset (e.g. skimage_flow): training example n of the stream
gets its flow multiplied by

    scale(n) = start + (1 - start) * min(1, n / ramp_examples)

and frame 1 re-made from frame 2 by bilinear backward warping with the scaled flow
(`flow_synthesis.backward_warp`: frame1(y, x) = frame2(y + s*dy, x + s*dx)), so the pair and
its flow stay exact. `valid` becomes the frame-1 pixels whose scaled target lies inside
frame 2 (elsewhere frame 1 repeats frame 2's border, as in `backward_warp`). From example
`ramp_examples` on (scale 1) the stored example passes through unchanged.

Examples: dicts with 'frames' uint8 [2, H, W, 3] (frame 1, frame 2), 'flow' float32
[H, W, 2] (dx, dy), 'valid' bool [H, W], as the flow task reads them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from perceiver_jax.data import flow_synthesis
from perceiver_jax.errors import UserError


def curriculum_scale(index: int, start: float, ramp_examples: int) -> float:
  """The flow scale of training example `index` of the stream: start -> 1 linearly."""
  if ramp_examples <= 0 or index >= ramp_examples:
    return 1.0
  return float(start + (1.0 - start) * index / ramp_examples)


def check_curriculum(start: float, ramp_examples: int) -> None:
  """One clear sentence for a curriculum that cannot work."""
  if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0.0 < start <= 1.0:
    raise UserError(f'config.task.curriculum_start={start!r} is not a flow scale; use a '
                    'number in (0, 1] (1 turns the curriculum off).')
  if isinstance(ramp_examples, bool) or not isinstance(ramp_examples, int):
    raise UserError(f'config.task.curriculum_examples={ramp_examples!r} is not a count; use '
                    'an integer >= 0, the number of training examples over which the flow '
                    'scale reaches 1 (0 turns the curriculum off).')
  if ramp_examples < 0:
    raise UserError(f'config.task.curriculum_examples={ramp_examples!r} is negative; use '
                    'the number of training examples over which the flow scale reaches 1 '
                    '(0 turns the curriculum off).')


def rescale_pair(element: dict[str, Any], scale: float) -> dict[str, Any]:
  """The pair with its flow multiplied by `scale`: frame 1 re-warped from frame 2."""
  frame2 = element['frames'][1]
  flow = np.asarray(element['flow'], np.float32) * np.float32(scale)
  frame1, valid = flow_synthesis.backward_warp(frame2, flow)
  frame1 = np.clip(np.round(frame1), 0, 255).astype(np.uint8)
  return {**element, 'frames': np.stack([frame1, np.asarray(frame2)]), 'flow': flow,
          'valid': valid}


@dataclasses.dataclass(frozen=True)
class FlowMagnitudeCurriculum(grain.transforms.MapWithIndex):
  """Scales example n's flow by curriculum_scale(n, start, ramp_examples) (see module)."""

  start: float = 1.0
  ramp_examples: int = 0

  def map_with_index(self, index: int, element):
    scale = curriculum_scale(index, self.start, self.ramp_examples)
    if scale >= 1.0:
      return element
    return rescale_pair(element, scale)
