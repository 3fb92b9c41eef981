"""Images of cross-attention maps for telemetry.py (matplotlib Agg, no display needed).

One row per example. 2-D inputs (images): the input, then one heatmap per latent drawn
over it. 1-D inputs (sequences): the signal, then one heat strip per latent under it.
Each token's probability is spread over the input positions it covers (token grid ->
input grid by repetition, e.g. a 2x2 patch or the 2 samples of a pool-2 conv stem); when
the grids do not correspond, maps are drawn over the token index instead, and say so.
Every map is scaled to its own maximum, so the pictures show where, not how much.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image


def tokens_to_input_grid(maps: np.ndarray, token_dims, input_dims) -> np.ndarray | None:
  """[..., prod(token_dims)] -> [..., *input_dims], each token's value repeated over the
  ceil(input / token) positions it covers along each axis; None if the grids differ in
  rank or the tokens outnumber the positions."""
  token_dims, input_dims = tuple(token_dims), tuple(input_dims)
  if len(token_dims) != len(input_dims) or any(t > n for t, n in zip(token_dims, input_dims)):
    return None
  lead = maps.shape[:-1]
  x = maps.reshape(lead + token_dims)
  for axis, (t, n) in enumerate(zip(token_dims, input_dims)):
    x = np.repeat(x, -(-n // t), axis=len(lead) + axis)
    x = np.take(x, np.arange(n), axis=len(lead) + axis)
  return x


def attention_image(inputs: np.ndarray, maps: np.ndarray, latents, token_dims
                    ) -> np.ndarray | None:
  """inputs [E, *index_dims, C], maps [E, K, N] (N tokens), latents [K] (their indices)
  -> an RGB uint8 image [height, width, 3], or None for inputs that are neither 1-D nor
  2-D or have no known token grid."""
  input_dims = inputs.shape[1:-1]
  if len(inputs) == 0 or len(input_dims) not in (1, 2):
    return None
  over_input = None
  if token_dims is not None and int(np.prod(token_dims)) == maps.shape[-1]:
    over_input = tokens_to_input_grid(np.asarray(maps, np.float32), token_dims, input_dims)
  if over_input is None and (token_dims is None or len(token_dims) != len(input_dims)
                             or int(np.prod(token_dims)) != maps.shape[-1]):
    token_dims = (maps.shape[-1],)  # draw over the flat token index
  grid = over_input if over_input is not None else maps.reshape(
      maps.shape[:2] + tuple(token_dims))
  grid = grid / np.maximum(grid.max(axis=tuple(range(2, grid.ndim)), keepdims=True), 1e-30)
  if len(input_dims) == 2 and grid.ndim == 4:
    return _draw_2d(inputs, grid, latents, over_input is not None)
  signals = inputs.reshape(inputs.shape[:2] + (-1,)) if len(input_dims) == 1 else None
  return _draw_1d(signals, grid.reshape(grid.shape[:2] + (-1,)), latents,
                  over_input is not None)


def _figure(width: float, height: float):
  fig = Figure(figsize=(width, height), dpi=80)
  FigureCanvasAgg(fig)
  return fig


def _to_array(fig) -> np.ndarray:
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _display_image(x: np.ndarray) -> tuple[np.ndarray, str | None]:
  """[H, W, C] -> something imshow draws: gray for 1 channel, RGB for 3, else the mean."""
  x = x[..., 0] if x.shape[-1] == 1 else (x if x.shape[-1] == 3 else x.mean(-1))
  x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
  return x, ('gray' if x.ndim == 2 else None)


def _draw_2d(inputs, grid, latents, over_input: bool) -> np.ndarray:
  """grid [E, K, h, w] in [0, 1]."""
  num_examples, num_latents = grid.shape[:2]
  fig = _figure(1.6 * (num_latents + 1), 1.7 * num_examples + 0.4)
  axes = fig.subplots(num_examples, num_latents + 1, squeeze=False)
  for e in range(num_examples):
    image, cmap = _display_image(np.asarray(inputs[e], np.float32))
    axes[e, 0].imshow(image, cmap=cmap)
    axes[e, 0].set_title(f'example {e}', fontsize=8)
    for k in range(num_latents):
      ax = axes[e, k + 1]
      if over_input:
        ax.imshow(image, cmap=cmap)
        ax.imshow(grid[e, k], cmap='inferno', alpha=0.6, vmin=0, vmax=1)
      else:
        ax.imshow(grid[e, k], cmap='inferno', vmin=0, vmax=1)
      ax.set_title(f'latent {int(latents[k])}', fontsize=8)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  where = 'over the input' if over_input else 'over the token grid'
  fig.suptitle(f'first cross-attend: attention per latent (mean over heads), {where}',
               fontsize=9)
  fig.tight_layout()
  return _to_array(fig)


def _draw_1d(signals, strips, latents, over_input: bool) -> np.ndarray:
  """signals [E, length, C] or None (not drawn), strips [E, K, length] in [0, 1]."""
  num_examples, num_latents, length = strips.shape
  fig = _figure(8.0, 2.0 * num_examples + 0.4)
  # A strip of its own for the title: a suptitle would collide with the subfigures.
  head, *rows = fig.subfigures(num_examples + 1, 1, squeeze=False,
                               height_ratios=[0.2] + [2.0] * num_examples)[:, 0]
  head.text(0.5, 0.3, 'first cross-attend: attention per latent (mean over heads)',
            ha='center', fontsize=9)
  for e, sub in enumerate(rows):
    top, bottom = sub.subplots(2, 1, sharex=True, gridspec_kw={
        'height_ratios': [1, 1.6], 'hspace': 0.05})
    if signals is not None:
      signal = np.asarray(signals[e], np.float32)
      top.plot(np.arange(signal.shape[0]) + 0.5, signal, linewidth=1)
    top.tick_params(labelsize=6)
    top.set_title(f'example {e}', fontsize=8)
    bottom.imshow(strips[e], aspect='auto', cmap='inferno', vmin=0, vmax=1,
                  interpolation='nearest', extent=(0, length, num_latents, 0))
    bottom.set_yticks(np.arange(num_latents) + 0.5, [str(int(l)) for l in latents],
                      fontsize=6)
    bottom.set_ylabel('latent', fontsize=7)
    bottom.tick_params(axis='x', labelsize=6)
    if e == num_examples - 1:
      bottom.set_xlabel('input position' if over_input else 'token (not input position)',
                        fontsize=7)
  return _to_array(fig)


def save_png(image: np.ndarray, path: str) -> None:
  """Writes an RGB uint8 image as PNG, creating the directory."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)
