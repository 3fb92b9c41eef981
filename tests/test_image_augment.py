"""Tests for the ImageNet-recipe augmentations, on real photographs from scikit-image."""

import grain
import numpy as np
from PIL import Image, ImageOps
import pytest
from skimage import data as skdata
from skimage import transform as sktransform

from perceiver_jax.data import image_augment as ia
from perceiver_jax.data import randaugment as ra
from perceiver_jax.errors import UserError

ASTRONAUT = skdata.astronaut()  # 512 x 512
COFFEE = skdata.coffee()  # 400 x 600
CHELSEA = skdata.chelsea()  # 300 x 451


def rng(seed=0):
  return np.random.default_rng(seed)


def coordinate_image(n=256):
  """uint8 [n, n, 3] whose red value is the row index and green the column index."""
  yy, xx = np.mgrid[0:n, 0:n]
  return np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8)


# ---------------------------------------------------------------------------
# Crops, resize, flip
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('shape, box', [
    ((512, 512), (32, 32, 448, 448)),  # int(224/256 * 512) = 448
    ((400, 600), (25, 125, 350, 350)),
    ((300, 451), (19, 95, 262, 262)),  # odd margins put the extra pixel first
])
def test_center_crop_box_numbers(shape, box):
  assert ia.center_crop_box(*shape) == box


def test_center_crop_is_the_resized_central_window():
  out = ia.center_crop(COFFEE)
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  # skimage's resize is an independent implementation of the same window.
  ref = sktransform.resize(COFFEE[25:375, 125:475], (224, 224), order=3,
                           anti_aliasing=True) * 255
  off_by_one = sktransform.resize(COFFEE[26:376, 126:476], (224, 224), order=3,
                                  anti_aliasing=True) * 255
  assert np.abs(out - ref).mean() < 2.5  # measured 1.54 (different antialias filters)
  assert np.abs(out - off_by_one).mean() > 4.0  # measured 6.2


def test_inception_crop_boxes_obey_the_constraints_and_vary():
  h, w = CHELSEA.shape[:2]
  boxes = [ia.inception_crop_box(rng(s), h, w) for s in range(300)]
  tops, lefts, hs, ws = np.array(boxes).T
  area = hs * ws / (h * w)
  assert (tops >= 0).all() and (lefts >= 0).all()
  assert (tops + hs <= h).all() and (lefts + ws <= w).all()
  assert area.min() >= 0.1 and area.max() <= 1.0  # min_object_covered beats 0.08
  # width = round(aspect * height) with aspect in [3/4, 4/3]
  assert (ws >= np.round(0.75 * hs) - 1).all() and (ws <= np.round(4 / 3 * hs) + 1).all()
  assert area.min() < 0.2 and area.max() > 0.7
  # Positions are uniform over the free margin: relative offsets average 1/2.
  free = (hs < h) & (ws < w)
  assert abs((tops[free] / (h - hs[free])).mean() - 0.5) < 0.06
  assert abs((lefts[free] / (w - ws[free])).mean() - 0.5) < 0.06
  assert len(set(boxes)) > 250
  assert ia.inception_crop_box(rng(7), h, w) == boxes[7]


def test_inception_crop_falls_back_to_the_center_crop():
  # A 10 x 1000 strip has no 3/4..4/3 window with 8% of its area.
  assert ia.inception_crop_box(rng(), 10, 1000) == ia.center_crop_box(10, 1000)
  # A window as large as the whole image counts as a failure too.
  whole = ia.inception_crop_box(rng(), 100, 100, area_range=(1.0, 1.0),
                                aspect_ratio_range=(1.0, 1.0))
  assert whole == ia.center_crop_box(100, 100) == (7, 7, 87, 87)  # margin 13 -> 7 before


def test_inception_crop_is_a_real_sub_window():
  image = coordinate_image()
  for seed in range(4):
    top, left, h, w = ia.inception_crop_box(rng(seed), 256, 256, size=64)
    out = ia.inception_crop(image, rng(seed), size=64).astype(np.float64)
    # Output pixel i samples source coordinate top + (i + 0.5) * h / 64 - 0.5.
    rows = top + (np.arange(64) + 0.5) * h / 64 - 0.5
    cols = left + (np.arange(64) + 0.5) * w / 64 - 0.5
    np.testing.assert_allclose(out[..., 0], np.broadcast_to(rows[:, None], (64, 64)),
                               atol=0.75)
    np.testing.assert_allclose(out[..., 1], np.broadcast_to(cols[None, :], (64, 64)),
                               atol=0.75)


def test_inception_crop_on_a_photo_matches_slice_and_resize():
  top, left, h, w = ia.inception_crop_box(rng(3), *ASTRONAUT.shape[:2])
  out = ia.inception_crop(ASTRONAUT, rng(3))
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  ref = sktransform.resize(ASTRONAUT[top:top + h, left:left + w], (224, 224),
                           order=3, anti_aliasing=True) * 255
  assert np.abs(out - ref).mean() < 2.5


def test_random_flip_mirrors_half_the_time():
  flipped = 0
  for seed in range(200):
    out = ia.random_flip(CHELSEA, rng(seed))
    if np.array_equal(out, CHELSEA):
      continue
    flipped += 1
    np.testing.assert_array_equal(out[:, 0], CHELSEA[:, -1])
    np.testing.assert_array_equal(out[:, 100], CHELSEA[:, 450 - 100])
  assert 70 < flipped < 130


def test_train_preprocess_shapes_determinism_and_variety():
  for photo in (ASTRONAUT, COFFEE, CHELSEA):
    out = ia.train_preprocess(photo, rng(1))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  a = ia.train_preprocess(COFFEE, rng(5), size=96)
  np.testing.assert_array_equal(a, ia.train_preprocess(COFFEE, rng(5), size=96))
  others = [ia.train_preprocess(COFFEE, rng(s), size=96) for s in range(6, 10)]
  assert all(np.abs(a.astype(int) - o).mean() > 5 for o in others)


def test_grain_transforms_are_deterministic_under_the_seed():
  source = grain.MapDataset.source([{'inputs': CHELSEA, 'label': np.int32(3)}] * 3)
  train = source.random_map(ia.InceptionTrainAugment(size=48), seed=4)
  first, again = [train[i] for i in range(3)], [train[i] for i in range(3)]
  for x, y in zip(first, again):
    np.testing.assert_array_equal(x['inputs'], y['inputs'])
    assert x['inputs'].shape == (48, 48, 3) and x['label'] == 3
  assert not np.array_equal(first[0]['inputs'], first[1]['inputs'])
  evaluated = source.map(ia.CenterCropResize(size=48))[0]['inputs']
  np.testing.assert_array_equal(evaluated, ia.center_crop(CHELSEA, 48))


def test_bad_images_are_user_errors():
  with pytest.raises(UserError, match='uint8'):
    ia.center_crop(CHELSEA.astype(np.float32))
  with pytest.raises(UserError, match='height, width, 3'):
    ia.train_preprocess(skdata.camera(), rng())


# ---------------------------------------------------------------------------
# RandAugment ops
# ---------------------------------------------------------------------------

IMG = CHELSEA


def test_invert_is_an_involution():
  np.testing.assert_array_equal(ra.invert(ra.invert(IMG)), IMG)
  assert (IMG.astype(int) + ra.invert(IMG) == 255).all()


def test_posterize_keeps_only_the_top_bits():
  np.testing.assert_array_equal(ra.posterize(IMG, 2), IMG & 0b11000000)
  np.testing.assert_array_equal(ra.apply_op(IMG, 'Posterize', 5, rng()),
                                IMG & 0b11000000)  # int(5/10 * 4) = 2 bits
  np.testing.assert_array_equal(ra.posterize(IMG, 0), IMG & 0b10000000)
  np.testing.assert_array_equal(ra.posterize(IMG, 8), IMG)


def test_solarize_and_solarize_add():
  out = ra.solarize(IMG, 128)
  low = IMG < 128
  np.testing.assert_array_equal(out[low], IMG[low])
  np.testing.assert_array_equal(out[~low], 255 - IMG[~low])
  np.testing.assert_array_equal(ra.apply_op(IMG, 'Solarize', 10, rng()), IMG)
  np.testing.assert_array_equal(ra.apply_op(IMG, 'Solarize', 0, rng()), 255 - IMG)
  added = ra.apply_op(IMG, 'SolarizeAdd', 5, rng())  # +55 below 128
  np.testing.assert_array_equal(added[low], np.minimum(IMG[low].astype(int) + 55, 255))
  np.testing.assert_array_equal(added[~low], IMG[~low])


def gray(x):
  return x.astype(np.float64) @ [0.299, 0.587, 0.114]


def detail(x):
  """Mean absolute difference between horizontal neighbours: high-frequency energy."""
  return np.abs(np.diff(x.astype(np.float64), axis=1)).mean()


def test_enhance_ops_move_the_image_the_expected_way():
  assert ra.brightness(IMG, 1.5).mean() > IMG.mean() + 20
  np.testing.assert_array_equal(ra.brightness(IMG, 0.5), IMG // 2)
  desaturated = ra.color(IMG, 0.0)
  assert (desaturated[..., 0] == desaturated[..., 2]).all()
  assert ra.color(IMG, 1.8).std(-1).mean() > IMG.std(-1).mean() * 1.5
  assert np.unique(ra.contrast(IMG, 0.0)).size == 1
  assert gray(ra.contrast(IMG, 1.5)).std() > gray(IMG).std() * 1.3
  assert gray(ra.contrast(IMG, 0.5)).std() < gray(IMG).std() * 0.6
  assert detail(ra.sharpness(IMG, 1.9)) > detail(IMG) * 1.2
  assert detail(ra.sharpness(IMG, 0.1)) < detail(IMG) * 0.9
  smoothed = ra.sharpness(IMG, 0.0)
  np.testing.assert_array_equal(smoothed[0], IMG[0])  # the border is kept


@pytest.mark.parametrize('name', ['Color', 'Contrast', 'Brightness', 'Sharpness'])
def test_enhance_ops_are_the_identity_at_magnitude_5(name):
  # factor 5/10 * 1.8 + 0.1 = 1.0, as in the reference.
  np.testing.assert_array_equal(ra.apply_op(IMG, name, 5, rng()), IMG)
  assert not np.array_equal(ra.apply_op(IMG, name, 9, rng()), IMG)


def test_autocontrast_and_equalize_match_pil():
  dull = (IMG // 2 + 50).astype(np.uint8)
  out = ra.autocontrast(dull)
  assert (out.min(axis=(0, 1)) == 0).all() and (out.max(axis=(0, 1)) == 255).all()
  pil = np.array(ImageOps.autocontrast(Image.fromarray(dull)))
  # float32 (as TF) vs PIL's float64: the top level can round 1 apart.
  assert np.abs(out.astype(int) - pil).max() <= 1 and (out == pil).mean() > 0.999
  flat = np.full((8, 8, 3), 77, np.uint8)
  np.testing.assert_array_equal(ra.autocontrast(flat), flat)
  eq = ra.equalize(dull)
  np.testing.assert_array_equal(eq, np.array(ImageOps.equalize(Image.fromarray(dull))))
  def spread(x):  # unevenness of the green histogram over 8 bins
    return np.bincount(x[..., 1].ravel() // 32, minlength=8).std()
  assert spread(eq) < spread(dull) * 0.5  # flatter histogram


@pytest.mark.parametrize('name', ['Rotate', 'ShearX', 'ShearY', 'TranslateX',
                                  'TranslateY', 'Cutout', 'SolarizeAdd'])
def test_magnitude_0_is_the_identity(name):
  np.testing.assert_array_equal(ra.apply_op(IMG, name, 0, rng()), IMG)


def test_rotate_direction_and_fill():
  np.testing.assert_array_equal(ra.rotate(IMG, 180), IMG[::-1, ::-1])
  np.testing.assert_array_equal(ra.rotate(ASTRONAUT, 90), np.rot90(ASTRONAUT))
  out = ra.apply_op(IMG, 'Rotate', 5, rng())  # +-15 degrees
  assert (out[0, 0] == ra.FILL).all() and (out[-1, -1] == ra.FILL).all()
  np.testing.assert_array_equal(out[150, 225], IMG[150, 225])


def test_translate_and_shear_move_pixels():
  np.testing.assert_array_equal(ra.translate_x(IMG, 10)[:, :-10], IMG[:, 10:])
  assert (ra.translate_x(IMG, 10)[:, -10:] == ra.FILL).all()
  np.testing.assert_array_equal(ra.translate_y(IMG, -7)[7:], IMG[:-7])
  out = ra.apply_op(IMG, 'TranslateX', 5, rng())  # +-50 pixels
  assert (np.array_equal(out[:, :-50], IMG[:, 50:]) or
          np.array_equal(out[:, 50:], IMG[:, :-50]))
  # ShearX: output (x, y) reads input (x + level * y, y), pixel centres at +0.5.
  h, w = IMG.shape[:2]
  sheared = ra.shear_x(IMG, 0.3)
  ys, xs = np.mgrid[0:h, 0:w]
  src = np.floor(xs + 0.5 + 0.3 * (ys + 0.5)).astype(int)
  expected = np.where((src < w)[..., None], IMG[ys, np.minimum(src, w - 1)], ra.FILL)
  np.testing.assert_array_equal(sheared, expected)
  sheared_y = ra.shear_y(IMG, -0.2)
  np.testing.assert_array_equal(sheared_y[:, 0], IMG[:, 0])
  assert (sheared_y[:40, -1] == ra.FILL).all()


def test_cutout_fills_one_clipped_square():
  out = ra.apply_op(IMG, 'Cutout', 5, rng(2))  # pad 20: a square of side <= 40
  changed = np.argwhere((out != IMG).any(-1))
  (y0, x0), (y1, x1) = changed.min(0), changed.max(0) + 1
  assert 0 < y1 - y0 <= 40 and 0 < x1 - x0 <= 40
  assert (out[y0:y1, x0:x1] == ra.FILL).all()
  outside = np.ones(IMG.shape[:2], bool)
  outside[y0:y1, x0:x1] = False
  np.testing.assert_array_equal(out[outside], IMG[outside])


@pytest.mark.parametrize('name', ra.OPS)
def test_every_op_keeps_shape_and_dtype(name):
  out = ra.apply_op(IMG, name, 7, rng())
  assert out.shape == IMG.shape and out.dtype == np.uint8


def test_randaugment_determinism_variety_and_errors():
  a = ra.randaugment(IMG, rng(11))
  np.testing.assert_array_equal(a, ra.randaugment(IMG, rng(11)))
  outs = [ra.randaugment(IMG, rng(s)) for s in range(20)]
  assert len({o.tobytes() for o in outs}) >= 15
  assert sum(not np.array_equal(o, IMG) for o in outs) >= 15
  np.testing.assert_array_equal(ra.randaugment(IMG, rng(), num_layers=0), IMG)
  # Only ops that are the identity at magnitude 0 -> identity however many layers.
  np.testing.assert_array_equal(
      ra.randaugment(IMG, rng(), 6, 0, ops=('Rotate', 'Cutout', 'TranslateY')), IMG)
  with pytest.raises(UserError, match='magnitude'):
    ra.randaugment(IMG, rng(), magnitude=11)
  with pytest.raises(UserError, match='Unknown RandAugment op'):
    ra.apply_op(IMG, 'Blur', 5, rng())


# ---------------------------------------------------------------------------
# MixUp / CutMix
# ---------------------------------------------------------------------------


def constant_batch(batch=16, size=32):
  """Example i is the constant image i + 1 with one-hot label i."""
  values = np.arange(1, batch + 1, dtype=np.float32)
  images = np.broadcast_to(values[:, None, None, None], (batch, size, size, 3)).copy()
  return images, np.eye(batch, dtype=np.float32)


def test_mixup_cutmix_label_weights_match_the_pixels():
  images, labels = constant_batch()
  mixed = ia.mixup_cutmix(images, labels, rng(3))
  assert mixed.images.shape == images.shape and mixed.labels.shape == labels.shape
  np.testing.assert_allclose(mixed.labels.sum(1), 1.0, rtol=1e-6)
  for i in range(16):
    partner = (i - 1) % 16
    own, other = i + 1.0, partner + 1.0
    np.testing.assert_allclose(mixed.labels[i, i], mixed.weight[i], rtol=1e-6)
    np.testing.assert_allclose(mixed.labels[i, partner], 1 - mixed.weight[i], atol=1e-6)
    pixels = mixed.images[i, ..., 0]
    if i < 8:  # MixUp: every pixel is the same blend
      np.testing.assert_allclose((pixels - other) / (own - other), mixed.weight[i],
                                 atol=1e-5)
    else:  # CutMix: a box of the partner's pixels, the weight is what is left
      assert set(np.unique(pixels)) <= {own, other}
      np.testing.assert_allclose((pixels == own).mean(), mixed.weight[i], rtol=1e-6)
      cut = np.argwhere(pixels == other)
      if len(cut):
        (y0, x0), (y1, x1) = cut.min(0), cut.max(0) + 1
        assert len(cut) == (y1 - y0) * (x1 - x0)  # one rectangle


def test_mixup_cutmix_determinism_and_weight_distributions():
  images, labels = constant_batch(batch=2000, size=16)
  labels = labels * 0.9 + 0.1 / 2000  # smoothed rows still sum to 1 after mixing
  a = ia.mixup_cutmix(images, labels, rng(0))
  b = ia.mixup_cutmix(images, labels, rng(0))
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)
  assert not np.array_equal(a.weight, ia.mixup_cutmix(images, labels, rng(1)).weight)
  np.testing.assert_allclose(a.labels.sum(1), 1.0, rtol=1e-5)
  mixup, cutmix = a.weight[:1000], a.weight[1000:]
  assert abs(mixup.mean() - 0.5) < 0.05
  assert ((mixup < 0.1) | (mixup > 0.9)).mean() > 0.5  # Beta(0.2, 0.2) is U-shaped
  assert 0.5 < cutmix.mean() < 0.75  # boxes clipped at borders keep more of the image
  assert cutmix.min() < 0.3 and cutmix.max() == 1.0


def test_mixup_or_cutmix_alone_and_neither():
  images, labels = constant_batch(batch=8)
  only_mixup = ia.mixup_cutmix(images, labels, rng(), cutmix_alpha=None)
  assert all(np.unique(x).size == 1 for x in only_mixup.images[..., 0])
  only_cutmix = ia.mixup_cutmix(images, labels, rng(), mixup_alpha=0)
  assert all(np.unique(x).size <= 2 for x in only_cutmix.images[..., 0])
  assert (only_cutmix.weight < 1).sum() >= 6
  neither = ia.mixup_cutmix(images, labels, rng(), None, None)
  np.testing.assert_array_equal(neither.images, images)
  np.testing.assert_array_equal(neither.labels, labels)
  with pytest.raises(UserError, match='mixup_alpha'):
    ia.mixup_cutmix(images, labels, rng(), mixup_alpha=-1)


def test_mixup_cutmix_grain_transform_on_a_batch():
  images, _ = constant_batch(batch=4)
  batch = {'inputs': images, 'label': np.array([0, 1, 2, 0], np.int32)}
  out = ia.MixUpCutMix(num_classes=5).random_map(batch, rng(9))
  np.testing.assert_array_equal(out['label'], batch['label'])
  assert out['soft_label'].shape == (4, 5) and out['soft_label'].dtype == np.float32
  np.testing.assert_allclose(out['soft_label'].sum(1), 1.0, rtol=1e-6)
  assert (out['soft_label'][:, 3:] == 0).all()
