"""RandAugment (Cubuk et al. 2019) on uint8 images, as the Perceiver ImageNet recipe uses it.

Every op takes and returns one uint8 image [height, width, 3]. `randaugment` applies
`num_layers` ops, each drawn uniformly from `OPS` and always applied, all at the same
magnitude on a 0..`MAX_LEVEL` scale. The op list, the magnitude-to-argument mapping and
the pixel arithmetic follow the DeepMind Perceiver reference (`perceiver/train/
autoaugment.py`, itself the TF TPU RandAugment), with the same consequences:

- Color, Contrast, Brightness and Sharpness use factor m/10*1.8 + 0.1, which is exactly
  1.0 (the identity) at the recipe's magnitude 5.
- Posterize keeps int(m/10*4) bits (2 at magnitude 5; fewer bits at lower magnitudes);
  0 bits acts as 1 bit, as TF's clamped bit shifts do.
- Solarize's threshold is int(m/10*256): magnitude 0 inverts every pixel, 10 is the
  identity.
- Rotate, Shear and Translate draw a random sign; uncovered pixels become gray `FILL`.

One deliberate difference: Contrast blends towards the mean gray level (PIL's
definition); the reference's histogram code uses pixel_count/256 instead, a known bug
that does not matter at magnitude 5 where Contrast is the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math

import numpy as np
from PIL import Image

from perceiver_jax.errors import UserError

MAX_LEVEL = 10.0
FILL = 128  # gray left in pixels uncovered by geometric ops and Cutout
TRANSLATE_CONST = 100.0  # pixels at magnitude MAX_LEVEL (reference's RandAugment value)
CUTOUT_CONST = 40  # half-side in pixels at magnitude MAX_LEVEL

OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
       'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
       'TranslateX', 'TranslateY', 'Cutout', 'SolarizeAdd')

_GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)  # TF rgb_to_grayscale


# ---------------------------------------------------------------------------
# Pixel ops
# ---------------------------------------------------------------------------


def blend(degenerate: np.ndarray, image: np.ndarray, factor: float) -> np.ndarray:
  """degenerate + factor * (image - degenerate), clipped to [0, 255], truncated to uint8.

  factor 0 gives `degenerate`, 1 gives `image`; above 1 extrapolates away from
  `degenerate`. Both images are uint8 of the same shape.
  """
  if factor == 0.0:
    return np.array(degenerate, np.uint8)
  if factor == 1.0:
    return np.array(image, np.uint8)
  d = degenerate.astype(np.float32)
  out = d + np.float32(factor) * (image.astype(np.float32) - d)
  return np.clip(out, 0.0, 255.0).astype(np.uint8)


def invert(image: np.ndarray) -> np.ndarray:
  """255 - image."""
  return 255 - image


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
  """Keeps the top `bits` bits of every value (0 bits acts as 1, as TF's shifts do)."""
  shift = min(max(8 - int(bits), 0), 7)
  return ((image >> shift) << shift).astype(np.uint8)


def solarize(image: np.ndarray, threshold: int = 128) -> np.ndarray:
  """Inverts values >= threshold; threshold 256 is the identity, 0 inverts all."""
  return np.where(image < threshold, image, 255 - image).astype(np.uint8)


def solarize_add(image: np.ndarray, addition: int = 0,
                 threshold: int = 128) -> np.ndarray:
  """Adds `addition` (clipped to [0, 255]) to values below `threshold`."""
  added = np.clip(image.astype(np.int32) + int(addition), 0, 255).astype(np.uint8)
  return np.where(image < threshold, added, image)


def _gray(image: np.ndarray) -> np.ndarray:
  """Luma [height, width] float32, rounded to integer levels."""
  return np.rint(image.astype(np.float32) @ _GRAY_WEIGHTS)


def color(image: np.ndarray, factor: float) -> np.ndarray:
  """Saturation: blends from the image's grayscale version (0) to the image (1)."""
  gray = np.repeat(_gray(image)[..., None], 3, axis=-1).astype(np.uint8)
  return blend(gray, image, factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
  """Blends from a uniform image at the mean gray level (0) to the image (1)."""
  mean = math.floor(float(_gray(image).mean()) + 0.5)
  return blend(np.full_like(image, mean), image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
  """Blends from black (0) to the image (1); >1 brightens."""
  return blend(np.zeros_like(image), image, factor)


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
  """Blends from a smoothed image (0) to the image (1); >1 sharpens.

  The smoothing is PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]]/13 on the interior;
  the one-pixel border keeps its original values.
  """
  x = image.astype(np.float32)
  h, w = image.shape[:2]
  total = 4.0 * x[1:h - 1, 1:w - 1]  # centre weight 5 = 4 here + 1 in the 3x3 sum
  for dy in range(3):
    for dx in range(3):
      total = total + x[dy:h - 2 + dy, dx:w - 2 + dx]
  smooth = np.array(image)
  smooth[1:h - 1, 1:w - 1] = np.clip(total / 13.0, 0.0, 255.0).astype(np.uint8)
  return blend(smooth, image, factor)


def autocontrast(image: np.ndarray) -> np.ndarray:
  """Stretches each channel linearly so its min maps to 0 and its max to 255.

  Constant channels are left as they are.
  """
  lo = image.min(axis=(0, 1)).astype(np.float32)
  hi = image.max(axis=(0, 1)).astype(np.float32)
  stretch = hi > lo
  scale = np.where(stretch, 255.0 / np.where(stretch, hi - lo, 1.0), 1.0)
  offset = np.where(stretch, -lo * scale, 0.0)
  out = image.astype(np.float32) * scale.astype(np.float32) + offset.astype(np.float32)
  return np.clip(out, 0.0, 255.0).astype(np.uint8)


def equalize(image: np.ndarray) -> np.ndarray:
  """Histogram equalisation per channel, with PIL ImageOps.equalize's lookup table."""
  out = np.empty_like(image)
  for c in range(image.shape[-1]):
    channel = image[..., c]
    hist = np.bincount(channel.ravel(), minlength=256)
    nonzero = hist[hist > 0]
    step = (int(nonzero.sum()) - int(nonzero[-1])) // 255
    if step == 0:  # one level (or nearly): nothing to spread
      out[..., c] = channel
      continue
    lut = (np.cumsum(hist) + step // 2) // step
    lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255).astype(np.uint8)
    out[..., c] = lut[channel]
  return out


# ---------------------------------------------------------------------------
# Geometric ops (PIL, nearest neighbour, gray fill)
# ---------------------------------------------------------------------------


def _affine(image: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
  """Output pixel (x, y) takes input (a*x + b*y + c, d*x + e*y + f), coeffs = (a..f)."""
  pil = Image.fromarray(image)
  out = pil.transform(pil.size, Image.Transform.AFFINE, coeffs,
                      resample=Image.Resampling.NEAREST, fillcolor=(FILL,) * 3)
  return np.array(out)


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
  """Rotates counterclockwise by `degrees` about the centre; corners become FILL."""
  pil = Image.fromarray(image)
  out = pil.rotate(degrees, resample=Image.Resampling.NEAREST, fillcolor=(FILL,) * 3)
  return np.array(out)


def shear_x(image: np.ndarray, level: float) -> np.ndarray:
  """Output (x, y) takes input (x + level*y, y): rows slide left by level*y."""
  return _affine(image, (1.0, level, 0.0, 0.0, 1.0, 0.0))


def shear_y(image: np.ndarray, level: float) -> np.ndarray:
  """Output (x, y) takes input (x, y + level*x): columns slide up by level*x."""
  return _affine(image, (1.0, 0.0, 0.0, level, 1.0, 0.0))


def translate_x(image: np.ndarray, pixels: float) -> np.ndarray:
  """Moves the content left by `pixels` (right if negative)."""
  return _affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0))


def translate_y(image: np.ndarray, pixels: float) -> np.ndarray:
  """Moves the content up by `pixels` (down if negative)."""
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels))


def cutout(image: np.ndarray, pad_size: int, rng: np.random.Generator) -> np.ndarray:
  """Fills a square of side up to 2*pad_size with FILL, centred at a uniform pixel.

  The square is clipped at the borders; pad_size 0 is the identity.
  """
  h, w = image.shape[:2]
  cy, cx = int(rng.integers(h)), int(rng.integers(w))
  out = np.array(image)
  out[max(0, cy - pad_size):min(h, cy + pad_size),
      max(0, cx - pad_size):min(w, cx + pad_size)] = FILL
  return out


# ---------------------------------------------------------------------------
# Magnitudes and the policy
# ---------------------------------------------------------------------------


def _random_sign(value: float, rng: np.random.Generator) -> float:
  return value if rng.random() < 0.5 else -value


def _enhance_factor(m: float) -> float:
  return m / MAX_LEVEL * 1.8 + 0.1


# name -> (op, magnitude and rng -> the op's arguments after the image)
_OP_TABLE: dict[str, tuple[Callable[..., np.ndarray],
                           Callable[[float, np.random.Generator], tuple]]] = {
    'AutoContrast': (autocontrast, lambda m, rng: ()),
    'Equalize': (equalize, lambda m, rng: ()),
    'Invert': (invert, lambda m, rng: ()),
    'Rotate': (rotate, lambda m, rng: (_random_sign(m / MAX_LEVEL * 30.0, rng),)),
    'Posterize': (posterize, lambda m, rng: (int(m / MAX_LEVEL * 4),)),
    'Solarize': (solarize, lambda m, rng: (int(m / MAX_LEVEL * 256),)),
    'SolarizeAdd': (solarize_add, lambda m, rng: (int(m / MAX_LEVEL * 110),)),
    'Color': (color, lambda m, rng: (_enhance_factor(m),)),
    'Contrast': (contrast, lambda m, rng: (_enhance_factor(m),)),
    'Brightness': (brightness, lambda m, rng: (_enhance_factor(m),)),
    'Sharpness': (sharpness, lambda m, rng: (_enhance_factor(m),)),
    'ShearX': (shear_x, lambda m, rng: (_random_sign(m / MAX_LEVEL * 0.3, rng),)),
    'ShearY': (shear_y, lambda m, rng: (_random_sign(m / MAX_LEVEL * 0.3, rng),)),
    'TranslateX': (translate_x, lambda m, rng: (
        _random_sign(m / MAX_LEVEL * TRANSLATE_CONST, rng),)),
    'TranslateY': (translate_y, lambda m, rng: (
        _random_sign(m / MAX_LEVEL * TRANSLATE_CONST, rng),)),
    'Cutout': (cutout, lambda m, rng: (int(m / MAX_LEVEL * CUTOUT_CONST), rng)),
}
assert set(_OP_TABLE) == set(OPS)


def op_arguments(name: str, magnitude: float, rng: np.random.Generator) -> tuple:
  """The arguments (after the image) that op `name` gets at `magnitude` (0..10).

  Draws the random sign of Rotate/Shear/Translate from `rng`; Cutout's tuple ends
  with `rng` itself, which places the square.
  """
  if name not in _OP_TABLE:
    raise UserError(f'Unknown RandAugment op {name!r}; choose from {", ".join(OPS)}.')
  return _OP_TABLE[name][1](float(magnitude), rng)


def apply_op(image: np.ndarray, name: str, magnitude: float,
             rng: np.random.Generator) -> np.ndarray:
  """Applies op `name` at `magnitude` to a uint8 [height, width, 3] image."""
  args = op_arguments(name, magnitude, rng)
  return _OP_TABLE[name][0](image, *args)


def randaugment(image: np.ndarray, rng: np.random.Generator, num_layers: int = 4,
                magnitude: float = 5.0, ops: Sequence[str] = OPS) -> np.ndarray:
  """RandAugment: `num_layers` ops drawn uniformly from `ops`, each at `magnitude`.

  Args:
    image: uint8 [height, width, 3].
    rng: draws the ops, the signs and Cutout's position; same state, same output.
    num_layers: ops applied in sequence (the recipe's N = 4).
    magnitude: shared magnitude on the 0..10 scale (the recipe's M = 5).
    ops: names to draw from (default: the reference's 16).

  Returns:
    uint8 [height, width, 3].
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise UserError(f'RandAugment needs a uint8 [height, width, 3] image, got '
                    f'{image.dtype} {list(image.shape)}.')
  if not 0 <= magnitude <= MAX_LEVEL:
    raise UserError(f'RandAugment magnitude must be in [0, {MAX_LEVEL:g}], '
                    f'got {magnitude}.')
  for _ in range(num_layers):
    name = ops[int(rng.integers(len(ops)))]
    image = apply_op(image, name, magnitude, rng)
  return image
