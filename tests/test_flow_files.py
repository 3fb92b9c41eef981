"""Tests for the .flo / 16-bit PNG / KITTI codecs and the flow_files manual_dir builder."""

import os
import struct
import zlib

import numpy as np
from PIL import Image
import pytest

from perceiver_jax.data import flow_io
from perceiver_jax.data import pipeline
from perceiver_jax.data.builders import flow_files
from perceiver_jax.errors import UserError

H, W = 8, 12


def rng_image(rng, h=H, w=W):
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_rgb(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


# ---------------------------------------------------------------------------
# Codecs
# ---------------------------------------------------------------------------


def test_flo_is_read_as_u_then_v_per_pixel_and_round_trips(tmp_path):
  # Middlebury layout written by hand: magic, width, height, then u, v interleaved row by row.
  u = np.arange(6, dtype=np.float32).reshape(2, 3) + 0.25
  v = -10 * u
  body = np.stack([u, v], -1).astype('<f4').tobytes()
  (tmp_path / 'a.flo').write_bytes(struct.pack('<fii', 202021.25, 3, 2) + body)
  flow = flow_io.read_flo(tmp_path / 'a.flo')
  assert flow.shape == (2, 3, 2) and flow.dtype == np.float32
  np.testing.assert_array_equal(flow[..., 0], u)  # channel 0 = dx (columns)
  np.testing.assert_array_equal(flow[..., 1], v)
  flow_io.write_flo(tmp_path / 'b.flo', flow)
  assert (tmp_path / 'b.flo').read_bytes() == (tmp_path / 'a.flo').read_bytes()


def test_flo_with_bad_magic_or_size_is_one_sentence(tmp_path):
  (tmp_path / 'bad.flo').write_bytes(struct.pack('<fii', 1.0, 3, 2) + bytes(48))
  with pytest.raises(UserError, match=r"bad\.flo' is not a \.flo file"):
    flow_io.read_flo(tmp_path / 'bad.flo')
  (tmp_path / 'short.flo').write_bytes(struct.pack('<fii', 202021.25, 3, 2) + bytes(40))
  with pytest.raises(UserError, match='has 52 bytes instead of 60'):
    flow_io.read_flo(tmp_path / 'short.flo')


@pytest.mark.parametrize('filters', [(0,), (1,), (2,), (3,), (4,), (4, 3, 2, 1, 0)])
def test_png16_round_trips_through_every_row_filter(tmp_path, filters):
  image = np.random.default_rng(1).integers(0, 2 ** 16, (7, 9, 3)).astype(np.uint16)
  flow_io.write_png(tmp_path / 'a.png', image, filters)
  decoded = flow_io.read_png(tmp_path / 'a.png')
  assert decoded.dtype == np.uint16
  np.testing.assert_array_equal(decoded, image)


def test_png_decoder_matches_pillow_on_pillow_written_files(tmp_path):
  from skimage import data as skdata
  photo = skdata.astronaut()[100:160, 150:230]
  Image.fromarray(photo).save(tmp_path / 'rgb.png', optimize=True)
  # Pillow chose several row filters, so this exercises the decoder's unfiltering.
  payload = (tmp_path / 'rgb.png').read_bytes()
  start = payload.index(b'IDAT') + 4
  rows = np.frombuffer(zlib.decompress(payload[start:start + struct.unpack(
      '>I', payload[start - 8:start - 4])[0]]), np.uint8).reshape(60, -1)
  assert len(set(rows[:, 0].tolist())) > 1
  np.testing.assert_array_equal(flow_io.read_png(tmp_path / 'rgb.png'), photo)
  grey16 = skdata.camera()[:20, :30].astype(np.uint16) * 257 + 1
  Image.fromarray(grey16).save(tmp_path / 'grey16.png')
  np.testing.assert_array_equal(flow_io.read_png(tmp_path / 'grey16.png')[..., 0], grey16)


def test_kitti_png_codes_u_v_valid_in_r_g_b_with_64th_pixel_steps(tmp_path):
  # Hand-coded KITTI file: R = 2**15 + 64 u, G = 2**15 + 64 v, B = valid.
  png = np.zeros((2, 3, 3), np.uint16)
  png[..., 0] = 32768 + np.array([[64, -64, 1], [0, 640, 5]])
  png[..., 1] = 32768 + np.array([[-128, 32, 0], [3, 7, 9]])
  png[..., 2] = [[1, 1, 1], [1, 0, 1]]
  flow_io.write_png(tmp_path / 'k.png', png)
  flow, valid = flow_io.read_kitti_flow(tmp_path / 'k.png')
  np.testing.assert_array_equal(valid, [[True, True, True], [True, False, True]])
  np.testing.assert_array_equal(flow[..., 0], [[1, -1, 1 / 64], [0, 0, 5 / 64]])
  np.testing.assert_array_equal(flow[..., 1], [[-2, 0.5, 0], [3 / 64, 0, 9 / 64]])
  # The writer quantises to 1/64 px and the reader gives those values back exactly.
  want = np.float32([[[0.3, -7.99], [100.0, 0.0]]])
  flow_io.write_kitti_flow(tmp_path / 'w.png', want, np.ones((1, 2), bool))
  got, _ = flow_io.read_kitti_flow(tmp_path / 'w.png')
  np.testing.assert_array_equal(got, np.round(want * 64) / 64)


# ---------------------------------------------------------------------------
# Fake dataset trees
# ---------------------------------------------------------------------------


def make_sintel(root, scenes=('alley_1', 'ambush_2'), frames=3, seed=0):
  """A Sintel-complete-like tree; returns {(pass, scene, i): (frames, flow, valid)}."""
  rng = np.random.default_rng(seed)
  truth = {}
  for scene in scenes:
    images = {p: [rng_image(rng) for _ in range(frames)] for p in ('clean', 'final')}
    for p in ('clean', 'final'):
      for i, image in enumerate(images[p], 1):
        save_rgb(os.path.join(root, 'training', p, scene, f'frame_{i:04d}.png'), image)
    for i in range(1, frames + 1):
      invalid = rng.random((H, W)) < 0.2
      path = os.path.join(root, 'training', 'invalid', scene, f'frame_{i:04d}.png')
      save_rgb(path, np.repeat(invalid[..., None] * np.uint8(255), 3, -1))
      if i == frames:
        continue  # no flow out of the last frame
      flow = rng.normal(0, 3, (H, W, 2)).astype(np.float32)
      flow[0, 0] = 1e10  # Middlebury's 'unknown'
      os.makedirs(os.path.join(root, 'training', 'flow', scene), exist_ok=True)
      flow_io.write_flo(os.path.join(root, 'training', 'flow', scene, f'frame_{i:04d}.flo'), flow)
      valid = ~invalid
      valid[0, 0] = False
      for p in ('clean', 'final'):
        truth[p, scene, i] = (np.stack(images[p][i - 1:i + 1]), np.where(
            valid[..., None], flow, 0), valid)
  return truth


def make_kitti(root, indices=(0, 160), seed=1):
  rng = np.random.default_rng(seed)
  truth = {}
  for n, i in enumerate(indices):
    h, w = H + 2 * n, W + n  # KITTI's sizes vary
    pair = [rng_image(rng, h, w) for _ in range(2)]
    for t, image in zip((10, 11), pair):
      save_rgb(os.path.join(root, 'training', 'image_2', f'{i:06d}_{t}.png'), image)
    flow = rng.uniform(-20, 20, (h, w, 2))
    valid = rng.random((h, w)) < 0.7
    os.makedirs(os.path.join(root, 'training', 'flow_occ'), exist_ok=True)
    flow_io.write_kitti_flow(os.path.join(root, 'training', 'flow_occ', f'{i:06d}_10.png'),
                             flow, valid)
    truth[i] = (np.stack(pair), np.where(valid[..., None], np.round(flow * 64) / 64, 0), valid)
  return truth


def rows(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def decode(text):
  return text.decode() if isinstance(text, bytes) else str(text)


# ---------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------


def test_sintel_builds_from_manual_dir_with_exact_values_and_scene_split(tmp_path):
  manual = tmp_path / 'manual'
  truth = make_sintel(str(manual / 'sintel'))
  builder = pipeline.prepare('flow_files/sintel_final', str(tmp_path / 'data'),
                             ('train', 'validation'), manual_dir=str(manual))
  features = builder.info.features
  assert features['frames'].shape == (2, None, None, 3)
  assert features['flow'].shape == (None, None, 2) and features['valid'].shape == (None, None)
  for split, scene in (('train', 'alley_1'), ('validation', 'ambush_2')):
    got = rows(builder, split)
    assert [(decode(r['scene']), int(r['index'])) for r in got] == [(scene, 1), (scene, 2)]
    for r in got:
      frames, flow, valid = truth['final', scene, int(r['index'])]
      assert r['frames'].dtype == np.uint8 and r['flow'].dtype == np.float32
      np.testing.assert_array_equal(r['frames'], frames)
      np.testing.assert_array_equal(r['flow'], flow)
      np.testing.assert_array_equal(r['valid'], valid)
  assert 'ambush_2' in flow_files.SINTEL_VALIDATION_SCENES
  assert 'alley_1' not in flow_files.SINTEL_VALIDATION_SCENES


def test_kitti_builds_from_default_manual_dir_with_variable_sizes(tmp_path):
  data_dir = tmp_path / 'data'
  truth = make_kitti(str(data_dir / 'downloads' / 'manual' / 'kitti2015'))
  builder = pipeline.prepare('flow_files/kitti2015', str(data_dir))
  for split, index in (('train', 0), ('validation', 160)):
    (r,) = rows(builder, split)
    frames, flow, valid = truth[index]
    assert int(r['index']) == index and decode(r['scene']) == f'{index:06d}'
    np.testing.assert_array_equal(r['frames'], frames)
    np.testing.assert_array_equal(r['flow'], flow)  # exact multiples of 1/64 px
    np.testing.assert_array_equal(r['valid'], valid)
  assert rows(builder, 'train')[0]['flow'].shape != rows(builder, 'validation')[0]['flow'].shape


def test_autoflow_pairs_follow_the_layout_and_crc_split(tmp_path):
  rng = np.random.default_rng(2)
  names = ['table_0_batch_0', 'table_0_batch_1', 'table_1_batch_0']
  # A name whose crc32 is a multiple of 20 goes to validation (the documented rule).
  held_out = next(f'table_9_batch_{k}' for k in range(1000)
                  if zlib.crc32(f'table_9_batch_{k}'.encode()) % 20 == 0)
  for part, name in zip(['static_40k_png_1_of_4'] * 3 + ['static_40k_png_3_of_4'],
                        names + [held_out]):
    folder = tmp_path / part / name
    save_rgb(str(folder / 'im0.png'), rng_image(rng))
    save_rgb(str(folder / 'im1.png'), rng_image(rng))
    flow_io.write_flo(folder / 'forward.flo', rng.normal(size=(H, W, 2)).astype(np.float32))
  config = flow_files.FlowFiles.builder_configs['autoflow']
  pairs = flow_files.find_pairs(config, str(tmp_path))  # the dataset folder itself
  assert [(p.scene, p.split) for p in pairs] == (
      [(f'static_40k_png_1_of_4/{n}', 'train') for n in names]
      + [(f'static_40k_png_3_of_4/{held_out}', 'validation')])
  example = flow_files.load_pair(config, pairs[3])
  np.testing.assert_array_equal(example['flow'], flow_io.read_flo(pairs[3].flow))
  assert example['valid'].all() and example['frames'].shape == (2, H, W, 3)


def test_missing_files_fail_in_one_sentence_naming_where_they_go(tmp_path):
  data_dir, manual = tmp_path / 'data', tmp_path / 'manual'
  with pytest.raises(UserError) as info:
    pipeline.prepare('flow_files/sintel_clean', str(data_dir), manual_dir=str(manual))
  message = str(info.value)
  assert '\n' not in message and message.endswith('.')
  assert f"'{manual / 'sintel' / 'training' / 'flow'}' does not exist" in message
  assert 'training/flow/<scene>/frame_%04d.flo' in message
  assert 'MPI-Sintel-complete.zip' in message
  # A tree with a frame missing names the file.
  make_sintel(str(manual / 'sintel'), scenes=('alley_1',))
  os.remove(manual / 'sintel' / 'training' / 'clean' / 'alley_1' / 'frame_0003.png')
  with pytest.raises(UserError, match=r"1 needed files are missing \(e\.g\. '.*clean/alley_1/"
                     r"frame_0003\.png'\)"):
    pipeline.prepare('flow_files/sintel_clean', str(data_dir), manual_dir=str(manual))
  # Nothing was half-prepared: once the file is there the same call builds, and a
  # split without pairs (no held-out scene present) is left out rather than empty.
  make_sintel(str(manual / 'sintel'), scenes=('alley_1',))
  builder = pipeline.prepare('flow_files/sintel_clean', str(data_dir), manual_dir=str(manual))
  assert list(builder.info.splits.keys()) == ['train']
  assert builder.info.splits['train'].num_examples == 2
