"""Tests of the image/video preprocessor: output shapes of every prep_type, video
downsampling, TF-SAME vs HF padding of the conv stem, BatchNorm train/eval behaviour,
optical-flow patches, extra position MLPs, and the flow decoder/postprocessor wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perceiver_jax.model import build as build_lib
from perceiver_jax.model.build import part
from perceiver_jax.model import image_processors as img
from perceiver_jax.model import postprocessors as post

FOURIER = dict(name='fourier', num_bands=2, max_resolution=None, concat_pos=True,
               sine_only=False, project_pos_dim=-1)


def fourier_channels(num_dims, bands=2):
  return num_dims * (2 * bands + 1)


def make(input_shape, position_encoding=FOURIER, seed=0, **kw):
  with nnx.use_eager_sharding(False):
    return img.ImagePreprocessor(input_shape, position_encoding=position_encoding,
                                 rngs=nnx.Rngs(params=seed), **kw)


def random(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize('input_shape,kw,index_dims,features', [
    ((8, 6, 3), dict(prep_type='pixels', spatial_downsample=1), (8, 6), 3),
    ((9, 6, 3), dict(prep_type='pixels', spatial_downsample=2), (5, 3), 3),
    ((8, 6, 3), dict(prep_type='patches', spatial_downsample=2), (4, 3), 12),
    ((8, 6, 3), dict(prep_type='patches', spatial_downsample=2, conv_after_patching=True,
                     num_channels=5), (4, 3), 5),
    ((32, 28, 3), dict(prep_type='conv', num_channels=4), (8, 7), 4),
    ((32, 28, 3), dict(prep_type='conv', num_channels=4, conv_padding='transformers'),
     (7, 6), 4),
    ((9, 6, 3), dict(prep_type='conv1x1', spatial_downsample=2, num_channels=4), (5, 3), 4),
    # Videos [T, H, W, C].
    ((4, 8, 6, 3), dict(prep_type='pixels', spatial_downsample=2, temporal_downsample=2),
     (2, 4, 3), 3),
    ((4, 8, 6, 3), dict(prep_type='patches', spatial_downsample=2, temporal_downsample=2),
     (2, 4, 3), 24),
    ((3, 32, 28, 3), dict(prep_type='conv', num_channels=4), (3, 8, 7), 4),
    ((3, 8, 6, 3), dict(prep_type='conv1x1', spatial_downsample=2, num_channels=4),
     (3, 4, 3), 4),
    # Time patched down to 1 step: the video becomes an image (the flow model).
    ((2, 8, 6, 3), dict(prep_type='patches', spatial_downsample=1, temporal_downsample=2),
     (8, 6), 6),
    ((2, 8, 6, 3), dict(prep_type='patches', spatial_downsample=1, temporal_downsample=2,
                        flow_patch_size=3, conv_after_patching=True, num_channels=7),
     (8, 6), 7),
])
def test_output_shapes(input_shape, kw, index_dims, features):
  prep = make(input_shape, **kw)
  out = prep(random((2,) + input_shape))
  n = int(np.prod(index_dims))
  assert prep.index_dims == index_dims
  assert out.inputs_without_pos.shape == (2, n, features)
  assert out.pos_enc.shape == (2, n, fourier_channels(len(index_dims)))
  assert out.inputs.shape == (2, n, prep.num_channels)
  assert prep.num_channels == features + fourier_channels(len(index_dims))


def test_add_position_encoding_with_projection():
  pos = dict(name='trainable', num_channels=6, init_scale=0.02, project_pos_dim=4)
  prep = make((8, 6, 3), pos, prep_type='conv1x1', spatial_downsample=1, num_channels=4,
              combine='add')
  out = prep(random((2, 8, 6, 3)))
  assert prep.num_channels == 4 and out.inputs.shape == (2, 48, 4)
  np.testing.assert_allclose(out.inputs, out.inputs_without_pos + out.pos_enc, atol=1e-6)


@pytest.mark.parametrize('size,padding,expected', [
    (224, 'same', 56), (224, 'transformers', 55), (32, 'same', 8), (32, 'transformers', 7),
    (31, 'same', 8), (31, 'transformers', 7)])
def test_conv_downsample_shape(size, padding, expected):
  assert img.conv_downsample_shape(size, size, 1, padding) == (expected, expected)


# ------------------------------------------------------------------- pixel contents


def test_pixels_downsampling_takes_every_kth_pixel_and_frame():
  x = random((2, 4, 6, 5, 3))
  prep = make((4, 6, 5, 3), prep_type='pixels', spatial_downsample=2,
              temporal_downsample=2)
  out = prep(x).inputs_without_pos
  np.testing.assert_array_equal(out, x[:, ::2, ::2, ::2].reshape(2, -1, 3))


def test_video_conv_sees_frames_independently():
  video = make((3, 16, 12, 3), prep_type='conv', num_channels=4, conv2d_use_batchnorm=False)
  image = make((16, 12, 3), prep_type='conv', num_channels=4, conv2d_use_batchnorm=False,
               seed=5)
  nnx.update(image.convnet, nnx.state(video.convnet))
  x = random((2, 3, 16, 12, 3))
  per_video = video(x).inputs_without_pos.reshape(2, 3, -1, 4)
  for t in range(3):
    np.testing.assert_allclose(per_video[:, t], image(x[:, t]).inputs_without_pos,
                               atol=1e-5)


def _reference_stem(x, kernel, conv_pads, pool_pads):
  y = jax.lax.conv_general_dilated(x, kernel, (2, 2), conv_pads,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                   precision='highest')
  y = jax.nn.relu(y)
  return jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0),) + pool_pads + ((0, 0),))


@pytest.mark.parametrize('padding,conv_pads,pool_pads', [
    # TF SAME on 32 -> 16 -> 8: the conv pads 2 before and 3 after, the pool 0 and 1.
    ('same', ((2, 3), (2, 3)), ((0, 1), (0, 1))),
    # HF: 3 pixels each side for the conv, no padding for the pool (16 -> 7).
    ('transformers', ((3, 3), (3, 3)), ((0, 0), (0, 0))),
])
def test_conv_stem_padding_semantics(padding, conv_pads, pool_pads):
  with nnx.use_eager_sharding(False):
    stem = img.Conv2DDownsample(3, num_channels=4, use_batchnorm=False, padding=padding,
                                rngs=nnx.Rngs(params=0))
  x = random((2, 32, 32, 3))
  expected = _reference_stem(x, stem.layers[0].conv.kernel[...], conv_pads, pool_pads)
  out = stem(x)
  assert out.shape == expected.shape
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_batchnorm_batch_statistics_in_training_running_averages_in_eval():
  prep = make((16, 16, 3), prep_type='conv', num_channels=4)
  bn = prep.convnet.layers[0].batchnorm
  bn.mean[...] = jnp.full((4,), 0.5)
  bn.var[...] = jnp.full((4,), 2.0)
  x = random((4, 16, 16, 3))
  eval_out = prep(x, deterministic=True).inputs_without_pos
  np.testing.assert_array_equal(bn.mean[...], 0.5)  # eval leaves the averages alone
  conv = prep.convnet.layers[0].conv(x)
  batch_mean, batch_var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
  train_out = prep(x, deterministic=False).inputs_without_pos
  # Running averages move 10% of the way to the batch statistics (momentum 0.9).
  np.testing.assert_allclose(bn.mean[...], 0.9 * 0.5 + 0.1 * batch_mean, atol=1e-5)
  np.testing.assert_allclose(bn.var[...], 0.9 * 2.0 + 0.1 * batch_var, atol=1e-5)
  assert not np.allclose(train_out, eval_out, atol=1e-3)
  # In eval the stem normalises with the stored statistics: redo it by hand.
  scale, bias = bn.scale[...], bn.bias[...]
  normed = (conv - 0.5) / jnp.sqrt(2.0 + 1e-5) * scale + bias
  expected = nnx.max_pool(jax.nn.relu(normed), (3, 3), (2, 2), 'SAME')
  np.testing.assert_allclose(eval_out, expected.reshape(4, -1, 4), atol=1e-5)


def test_batch_stats_are_batchstat_variables_not_params():
  prep = make((16, 16, 3), prep_type='conv', num_channels=4)
  stats = jax.tree.leaves(nnx.state(prep, nnx.BatchStat))
  assert len(stats) == 2 and all(s.shape == (4,) for s in stats)
  names = {'/'.join(map(str, p)) for p, v in nnx.iter_graph(prep) if isinstance(v, nnx.Param)}
  assert 'convnet/layers/0/batchnorm/scale' in names
  assert not any(n.endswith(('/mean', '/var')) for n in names)


# --------------------------------------------------------------------- optical flow


def test_patches_for_flow_matches_a_loop_over_the_neighbourhood():
  frames = random((1, 2, 4, 5, 2))
  out = np.asarray(img.patches_for_flow(frames))
  padded = np.pad(np.asarray(frames), [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])
  assert out.shape == (1, 2, 4, 5, 18)
  for y in range(4):
    for x in range(5):
      # (row offset, col offset, channel) order, zero outside the image.
      expected = padded[:, :, y:y + 3, x:x + 3, :].reshape(1, 2, 18)
      np.testing.assert_array_equal(out[:, :, y, x], expected)
  np.testing.assert_array_equal(out[..., 8:10], frames)  # the centre is the pixel itself


def test_flow_inputs_stack_both_frames_per_pixel():
  prep = make((2, 4, 5, 3), None, prep_type='patches', spatial_downsample=1,
              temporal_downsample=2, flow_patch_size=3)
  frames = random((2, 2, 4, 5, 3))
  out = prep(frames).inputs
  patches = img.patches_for_flow(frames)
  expected = jnp.concatenate([patches[:, 0], patches[:, 1]], axis=-1).reshape(2, 20, 54)
  np.testing.assert_array_equal(out, expected)


def test_flow_match_costs_match_a_loop_over_displacements_and_window():
  frames = random((1, 2, 5, 6, 2))
  out = np.asarray(img.flow_match_costs(frames, radius=1, window=3))
  f1, f2 = np.asarray(frames[0, 0]), np.asarray(frames[0, 1])
  f2 = np.pad(f2, [(1, 1), (1, 1), (0, 0)], mode='edge')  # frame 2 repeats its border
  assert out.shape == (1, 5, 6, 9)
  for k, (dy, dx) in enumerate((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
    cost = ((f1 - f2[1 + dy:6 + dy, 1 + dx:7 + dx]) ** 2).mean(-1)
    for y in range(5):
      for x in range(6):  # the mean over the 3x3 pixels around that lie in the image
        expected = cost[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].mean()
        np.testing.assert_allclose(out[0, y, x, k], expected, rtol=1e-5)


def test_flow_match_probabilities_peak_at_the_true_shift():
  # Frame 1 shows frame 2 moved by (dy, dx) = (1, -2): frame1(y, x) = frame2(y + 1, x - 2).
  frame2 = random((1, 12, 12, 3))
  frame1 = jnp.roll(frame2, shift=(-1, 2), axis=(1, 2))
  prep = make((2, 12, 12, 3), None, prep_type='patches', spatial_downsample=1,
              temporal_downsample=2, flow_patch_size=3, flow_cost_radius=2, flow_cost_window=3)
  out = np.asarray(prep(jnp.stack([frame1, frame2], 1)).inputs).reshape(1, 12, 12, -1)
  assert out.shape[-1] == 54 + 25  # both frames' patches, then one value per displacement
  probs = out[0, 3:9, 3:9, 54:]  # away from the wrapped border
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert (probs.argmax(-1) == (1 + 2) * 5 + (-2 + 2)).all()


def test_extra_position_mlps_are_residual():
  prep = make((8, 6, 3), prep_type='pixels', spatial_downsample=1, n_extra_pos_mlp=2)
  assert len(prep.extra_pos_mlp) == 2
  base = prep.pos_enc(2)
  x = random((2, 8, 6, 3))
  for layer in prep.extra_pos_mlp:
    layer.kernel[...] = jnp.zeros_like(layer.kernel[...])
    layer.bias[...] = jnp.zeros_like(layer.bias[...])
  # Zero layers: pos + 0, then the ReLU between the layers, then + 0.
  np.testing.assert_allclose(prep(x).pos_enc, jax.nn.relu(base), atol=1e-6)
  first, second = prep.extra_pos_mlp
  first.bias[...] = jnp.ones_like(first.bias[...])
  second.bias[...] = jnp.full_like(second.bias[...], 2.0)
  # pos + 1, then ReLU, then + 2 (no ReLU after the last layer).
  np.testing.assert_allclose(prep(x).pos_enc, jax.nn.relu(base + 1.0) + 2.0, atol=1e-5)


def _flow_config(flow_scale):
  cfg = build_lib.default_model_config()
  cfg.preprocessor = part('preprocessor', 'image', prep_type='patches', spatial_downsample=1,
                          temporal_downsample=2, flow_patch_size=3, conv_after_patching=True,
                          num_channels=6, position_encoding=dict(num_bands=2))
  enc = cfg.encoder
  enc.num_latents, enc.num_latent_channels, enc.num_blocks = 4, 8, 1
  enc.num_self_attends_per_block, enc.num_self_attend_heads = 1, 2
  cfg.decoder = part('decoder', 'flow')  # no query residual, as the released model
  cfg.postprocessor = part('postprocessor', 'flow', flow_scale=flow_scale)
  return cfg


def test_flow_model_outputs_flow_per_pixel():
  with nnx.use_eager_sharding(False):
    model = build_lib.build_model(_flow_config(20.0), input_shape=(2, 4, 5, 3),
                                  rngs=nnx.Rngs(params=0))
  assert isinstance(model.postprocessor, post.FlowPostprocessor)
  assert model.postprocessor.flow_scale == 20.0
  # One query per preprocessed pixel: the network inputs themselves.
  assert model.decoder.decoder.num_query_channels == model.preprocessor.num_channels
  # DeepMind zero-initialises the flow head; give it weights so outputs are not all zero.
  out = model.decoder.decoder.output
  np.testing.assert_array_equal(out.kernel[...], 0.0)
  out.kernel[...] = random(out.kernel.shape, seed=3)
  frames = random((2, 2, 4, 5, 3))
  flow = nnx.jit(lambda m, x: m(x))(model, frames)  # eager op-by-op is slow on CPU
  assert flow.shape == (2, 4, 5, 2) and float(jnp.abs(flow).max()) > 0
  with pytest.raises(ValueError, match='subsampled output points are not supported'):
    model.decoder.decoder_query(frames, subsampled_points=jnp.arange(3))


def test_flow_postprocessor_scales_and_checks_rank():
  flow = random((2, 4, 5, 2))
  np.testing.assert_allclose(post.FlowPostprocessor(20.0)(flow), 20.0 * flow, rtol=1e-6)
  with pytest.raises(ValueError, match=r'expects flow \[batch, H, W, channels\]'):
    post.FlowPostprocessor(20.0)(flow[0])


def test_every_param_has_logical_axis_names():
  valid = {'embed', 'input_channels', 'heads', 'mlp', 'latents', 'classes', 'pos_channels',
           None}
  pos = dict(name='trainable', num_channels=6, init_scale=0.02, project_pos_dim=4)
  for kw in (dict(prep_type='conv', num_channels=4),
             dict(prep_type='conv1x1', num_channels=4, spatial_downsample=1),
             dict(prep_type='patches', spatial_downsample=2, conv_after_patching=True,
                  num_channels=4, n_extra_pos_mlp=1)):
    prep = make((16, 16, 3), pos, **kw)
    params = [(p, v) for p, v in nnx.iter_graph(prep) if isinstance(v, nnx.Param)]
    assert params
    for path, v in params:
      names = v.get_metadata().get('out_sharding')
      assert names is not None and len(names) == v.ndim and set(names) <= valid, path


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize('input_shape,kw,message', [
    ((8, 8, 3), dict(prep_type='sift'), "Unknown prep_type 'sift'"),
    ((8, 8, 3), dict(prep_type='conv', spatial_downsample=2, num_channels=4),
     'power of 4'),
    ((8, 8, 3), dict(prep_type='conv', num_channels=0), 'needs num_channels > 0'),
    ((8, 8, 3), dict(prep_type='conv', num_channels=4, conv_padding='valid'),
     "Unknown conv_padding 'valid'"),
    ((8, 6, 3), dict(prep_type='patches', spatial_downsample=4), 'not divisible'),
    ((8, 8, 3), dict(prep_type='pixels', temporal_downsample=2), 'needs video inputs'),
    ((8, 8, 3), dict(prep_type='patches', flow_patch_size=3), 'needs video-shaped inputs'),
    ((2, 8, 8, 3), dict(prep_type='patches', spatial_downsample=2, temporal_downsample=2,
                        flow_cost_radius=2), 'flow_cost_radius needs two frames'),
    ((2, 8, 8, 3), dict(prep_type='patches', spatial_downsample=1, temporal_downsample=2,
                        flow_cost_radius=2, flow_cost_temperature=0.0),
     'flow_cost_temperature must be > 0'),
    ((2, 8, 8, 3), dict(prep_type='conv1x1', temporal_downsample=2, num_channels=4),
     'does not downsample in time'),
    ((8, 3), dict(prep_type='pixels'), r'input_shape \(H, W, C\) or \(T, H, W, C\)'),
])
def test_configuration_errors_are_one_clear_sentence(input_shape, kw, message):
  with pytest.raises(ValueError, match=message):
    make(input_shape, **kw)


def test_wrong_input_shape_is_refused():
  prep = make((8, 6, 3), prep_type='pixels', spatial_downsample=1)
  with pytest.raises(ValueError, match=r'built for inputs of shape \[batch, 8, 6, 3\]'):
    prep(random((2, 6, 8, 3)))
