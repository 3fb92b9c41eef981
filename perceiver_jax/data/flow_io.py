"""Optical-flow file formats: Middlebury `.flo` and 16-bit PNG (KITTI), numpy only.

`.flo` (Middlebury; used by Sintel, FlyingChairs, AutoFlow), little-endian:
  float32 202021.25 (the bytes 'PIEH'), int32 width, int32 height, then
  float32 [height, width, 2] row by row, channel 0 = u = dx (columns),
  channel 1 = v = dy (rows), in pixels.

KITTI flow PNG: 16-bit RGB, R = u, G = v as (value - 2**15) / 64 pixels, B = 1
where the flow is known. Pillow reads 16-bit RGB PNGs as 8-bit RGB (it keeps
only the high byte of each sample), so PNGs are decoded here: zlib inflates the
data and the five PNG row filters are undone in numpy, along anti-diagonals of
the image (a byte depends only on its left, upper and upper-left neighbours,
so a whole anti-diagonal can be computed at once). Greyscale, grey+alpha, RGB
and RGBA at 8 or 16 bits are supported; palette and interlaced PNGs are not
(no flow file uses them).
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from perceiver_jax.errors import UserError

FLO_MAGIC = 202021.25
# Middlebury marks unknown flow with values above this.
FLO_UNKNOWN = 1e9
KITTI_SCALE = 64.0
KITTI_OFFSET = 2 ** 15

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


# ---------------------------------------------------------------------------
# Middlebury .flo
# ---------------------------------------------------------------------------


def read_flo(path) -> np.ndarray:
  """Flow float32 [H, W, 2] (dx, dy) from a `.flo` file; UserError if malformed."""
  with open(path, 'rb') as f:
    data = f.read()
  if len(data) < 12 or np.frombuffer(data[:4], '<f4')[0] != FLO_MAGIC:
    raise UserError(f"'{path}' is not a .flo file (its first 4 bytes are not "
                    "the float 202021.25); replace it with the dataset's file.")
  width, height = (int(v) for v in np.frombuffer(data[4:12], '<i4'))
  expected = 12 + 8 * width * height
  if width <= 0 or height <= 0 or len(data) != expected:
    raise UserError(f"'{path}' says it holds {width}x{height} flow but has "
                    f"{len(data)} bytes instead of {expected}; the file is "
                    'truncated or damaged, replace it.')
  return np.frombuffer(data[12:], '<f4').reshape(height, width, 2).astype(np.float32)


def write_flo(path, flow: np.ndarray) -> None:
  """Writes flow [H, W, 2] (dx, dy) as a `.flo` file."""
  flow = np.asarray(flow, np.float32)
  if flow.ndim != 3 or flow.shape[2] != 2:
    raise ValueError(f'flow must be [H, W, 2], got {flow.shape}.')
  height, width = flow.shape[:2]
  with open(path, 'wb') as f:
    f.write(np.float32(FLO_MAGIC).astype('<f4').tobytes())
    f.write(np.array([width, height], '<i4').tobytes())
    f.write(flow.astype('<f4').tobytes())


# ---------------------------------------------------------------------------
# PNG (8 or 16 bits per sample)
# ---------------------------------------------------------------------------


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
  """PNG's Paeth predictor on int arrays: a left, b up, c upper-left."""
  p = a + b - c
  pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
  return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(filtered: np.ndarray, kinds: np.ndarray) -> np.ndarray:
  """Undoes PNG row filters. filtered uint8 [H, W, B] (B bytes per pixel),
  kinds [H] filter types 0..4; returns the raw bytes uint8 [H, W, B]."""
  h, w, _ = filtered.shape
  if np.all(kinds == 0):
    return filtered
  x = filtered.astype(np.int32)
  # Row 0 and column 0 of `out` are PNG's zero bytes outside the image.
  out = np.zeros((h + 1, w + 1, x.shape[2]), np.int32)
  kinds = np.asarray(kinds)
  for d in range(h + w - 1):
    rows = np.arange(max(0, d - w + 1), min(h, d + 1))
    cols = d - rows
    a, b, c = out[rows + 1, cols], out[rows, cols + 1], out[rows, cols]
    kind = kinds[rows][:, None]
    pred = np.select([kind == 1, kind == 2, kind == 3, kind == 4],
                     [a, b, (a + b) // 2, _paeth(a, b, c)], 0)
    out[rows + 1, cols + 1] = (x[rows, cols] + pred) & 0xFF
  return out[1:, 1:].astype(np.uint8)


def read_png(path) -> np.ndarray:
  """Decodes a PNG to uint8 or uint16 [H, W, C] (C = 1, 2, 3 or 4)."""
  with open(path, 'rb') as f:
    data = f.read()
  if not data.startswith(_PNG_SIGNATURE):
    raise UserError(f"'{path}' is not a PNG file; replace it with the "
                    "dataset's file.")
  pos, header, idat = len(_PNG_SIGNATURE), None, []
  while pos + 8 <= len(data):
    length, kind = struct.unpack('>I4s', data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + length]
    pos += 12 + length
    if kind == b'IHDR':
      header = struct.unpack('>IIBBBBB', body)
    elif kind == b'IDAT':
      idat.append(body)
    elif kind == b'IEND':
      break
  if header is None or not idat:
    raise UserError(f"'{path}' is a damaged PNG (no header or no image "
                    'data); replace it.')
  width, height, depth, colour, _, _, interlace = header
  if colour not in _PNG_CHANNELS or depth not in (8, 16) or interlace:
    raise UserError(f"'{path}' is a PNG with colour type {colour}, "
                    f"{depth} bits and interlace {interlace}; only "
                    'non-interlaced 8- or 16-bit grey/RGB(A) PNGs are read.')
  channels = _PNG_CHANNELS[colour]
  bpp = channels * depth // 8  # bytes per pixel
  try:
    raw = np.frombuffer(zlib.decompress(b''.join(idat)), np.uint8)
  except zlib.error as e:
    raise UserError(f"'{path}' is a damaged PNG ({e}); replace it.") from e
  if raw.size != height * (1 + width * bpp):
    raise UserError(f"'{path}' is a damaged PNG ({raw.size} image bytes "
                    f'for {width}x{height}); replace it.')
  rows = raw.reshape(height, 1 + width * bpp)
  if rows[:, 0].max(initial=0) > 4:
    raise UserError(f"'{path}' is a damaged PNG (unknown row filter); replace it.")
  pixels = _unfilter(rows[:, 1:].reshape(height, width, bpp), rows[:, 0])
  if depth == 16:
    return pixels.reshape(height, width * channels * 2).view('>u2').astype(
        np.uint16).reshape(height, width, channels)
  return pixels.reshape(height, width, channels)


def _filter_rows(raw: np.ndarray, kinds: np.ndarray) -> np.ndarray:
  """Applies PNG row filters to raw bytes uint8 [H, W, B]; returns [H, 1+W*B]."""
  x = raw.astype(np.int32)
  a = np.pad(x, ((0, 0), (1, 0), (0, 0)))[:, :-1]   # left
  b = np.pad(x, ((1, 0), (0, 0), (0, 0)))[:-1]      # up
  c = np.pad(x, ((1, 0), (1, 0), (0, 0)))[:-1, :-1]  # upper-left
  kind = kinds[:, None, None]
  pred = np.select([kind == 1, kind == 2, kind == 3, kind == 4],
                   [a, b, (a + b) // 2, _paeth(a, b, c)], 0)
  out = ((x - pred) & 0xFF).astype(np.uint8).reshape(raw.shape[0], -1)
  return np.concatenate([kinds[:, None].astype(np.uint8), out], axis=1)


def write_png(path, image: np.ndarray, filters=(0,)) -> None:
  """Writes uint8 or uint16 [H, W, C] (C = 1..4) as a PNG; row r uses filter
  filters[r % len(filters)] (0 none, 1 sub, 2 up, 3 average, 4 Paeth)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[:, :, None]
  if image.dtype not in (np.uint8, np.uint16) or image.shape[2] not in (1, 2, 3, 4):
    raise ValueError(f'Need uint8/uint16 [H, W, 1..4], got {image.dtype} {image.shape}.')
  height, width, channels = image.shape
  depth = 8 * image.dtype.itemsize
  colour = {v: k for k, v in _PNG_CHANNELS.items()}[channels]
  raw = np.ascontiguousarray(image.astype(f'>u{image.dtype.itemsize}')).view(
      np.uint8).reshape(height, width, -1)
  kinds = np.resize(np.asarray(filters, np.uint8), height)
  body = zlib.compress(_filter_rows(raw, kinds).tobytes())

  def chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack('>I', len(payload)) + kind + payload
            + struct.pack('>I', zlib.crc32(kind + payload)))

  header = struct.pack('>IIBBBBB', width, height, depth, colour, 0, 0, 0)
  with open(path, 'wb') as f:
    f.write(_PNG_SIGNATURE + chunk(b'IHDR', header) + chunk(b'IDAT', body)
            + chunk(b'IEND', b''))


# ---------------------------------------------------------------------------
# KITTI flow PNG
# ---------------------------------------------------------------------------


def read_kitti_flow(path) -> tuple[np.ndarray, np.ndarray]:
  """Flow float32 [H, W, 2] (dx, dy) and valid bool [H, W] from a KITTI flow
  PNG; flow is 0 where not valid."""
  png = read_png(path)
  if png.dtype != np.uint16 or png.shape[2] != 3:
    raise UserError(f"'{path}' is a {png.dtype} PNG with {png.shape[2]} "
                    'channels, but a KITTI flow file is 16-bit RGB; replace it.')
  valid = png[..., 2] > 0
  flow = (png[..., :2].astype(np.float32) - KITTI_OFFSET) / KITTI_SCALE
  return np.where(valid[..., None], flow, 0.0).astype(np.float32), valid


def write_kitti_flow(path, flow: np.ndarray, valid: np.ndarray) -> None:
  """Writes flow [H, W, 2] (dx, dy) and valid [H, W] as a KITTI flow PNG
  (flow rounded to 1/64 px, clipped to the 16-bit range)."""
  flow = np.asarray(flow, np.float64)
  coded = np.clip(np.round(flow * KITTI_SCALE + KITTI_OFFSET), 0, 2 ** 16 - 1)
  valid = np.asarray(valid, bool)
  image = np.concatenate([coded, valid[..., None]], axis=-1).astype(np.uint16)
  image[~valid, :2] = 0  # as KITTI's own files: no flow value where unknown
  write_png(os.fspath(path), image)
