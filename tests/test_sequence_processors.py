"""Tests of the audio, one-hot and point-cloud preprocessors, the multimodal
preprocessor / decoder / postprocessor, the video autoencoding decoder and the
Perceiver's dict inputs, per-modality masks and subsampled outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perceiver_jax.model import build as build_lib
from perceiver_jax.model import build_multimodal as bmm
from perceiver_jax.model.build import part
from perceiver_jax.model import multimodal as mm
from perceiver_jax.model import position_encoding as pe
from perceiver_jax.model import postprocessors as post
from perceiver_jax.model import sequence_processors as seq
from tests.helpers import with_random_weights


@pytest.fixture(autouse=True)
def _unsharded_parameters():
  # Parameters carry logical axis names; outside a mesh they must not be placed eagerly.
  with nnx.use_eager_sharding(False):
    yield


def normal(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def fourier(num_bands, max_resolution, **kw):
  return dict(name='fourier', num_bands=num_bands, max_resolution=max_resolution,
              concat_pos=True, sine_only=False, project_pos_dim=-1, **kw)


def abstract(fn):
  return nnx.eval_shape(fn)


def jit_call(fn, *args):
  """fn(*args) compiled once: op-by-op eager execution costs seconds on CPU."""
  return nnx.jit(fn)(*args)


# ------------------------------------------------------------------------------ audio


def test_audio_patches_with_exact_fourier_positions():
  prep = seq.AudioPreprocessor((12, 1), samples_per_patch=4,
                               position_encoding=fourier(2, (12,)), rngs=nnx.Rngs(0))
  assert prep.index_dims == (3,) and prep.num_channels == 4 + 5
  audio = normal((2, 12, 1))
  out = prep(audio)
  assert out.inputs.shape == (2, 3, 9)
  np.testing.assert_array_equal(out.inputs_without_pos, audio.reshape(2, 3, 4))
  # Patch positions -1, 0, 1; bands linspace(1, 12 / 2, 2) = 1, 6.
  expected = np.array([[-1, 0, 0, -1, 1], [0, 0, 0, 1, 1], [1, 0, 0, -1, 1]], np.float32)
  np.testing.assert_allclose(out.inputs[0, :, 4:], expected, atol=1e-5)
  np.testing.assert_allclose(out.inputs[1, :, 4:], expected, atol=1e-5)


def test_audio_multichannel_samples_are_grouped_in_memory_order():
  prep = seq.AudioPreprocessor((6, 2), samples_per_patch=3, position_encoding=None,
                               rngs=nnx.Rngs(0))
  audio = jnp.arange(12, dtype=jnp.float32).reshape(1, 6, 2)
  out = prep(audio)
  assert out.pos_enc is None and prep.num_channels == 3
  np.testing.assert_array_equal(out.inputs[0], [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])


def test_audio_trainable_projected_positions_added():
  pos = dict(name='trainable', num_channels=5, init_scale=0.02, project_pos_dim=4)
  prep = seq.AudioPreprocessor((8,), samples_per_patch=4, position_encoding=pos,
                               combine='add', rngs=nnx.Rngs(0))
  assert prep.num_channels == 4
  audio = normal((2, 8))
  out = prep(audio)
  np.testing.assert_allclose(out.inputs, audio.reshape(2, 2, 4) + out.pos_enc, atol=1e-6)
  assert out.pos_enc.shape == (2, 2, 4) and float(jnp.abs(out.pos_enc).sum()) > 0


def test_audio_errors_are_one_sentence():
  with pytest.raises(ValueError, match='samples_per_patch=7'):
    seq.AudioPreprocessor((12, 1), samples_per_patch=7, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'patches'"):
    seq.AudioPreprocessor((12, 1), samples_per_patch=4, prep_type='conv', rngs=nnx.Rngs(0))
  prep = seq.AudioPreprocessor((12, 1), samples_per_patch=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'\[batch, 12, 1\]'):
    prep(jnp.zeros((2, 16, 1)))


# ---------------------------------------------------------------- one-hot, point cloud


def test_one_hot_is_one_token_without_positions():
  prep = seq.OneHotPreprocessor((5,))
  label = jax.nn.one_hot(jnp.array([1, 3]), 5)
  out = prep(label)
  assert prep.num_channels == 5 and prep.index_dims == (1,)
  np.testing.assert_array_equal(out.inputs, label[:, None, :])
  assert out.inputs_without_pos is out.inputs and out.pos_enc is None
  with pytest.raises(ValueError, match=r'\[batch, 5\]'):
    prep(jnp.zeros((2, 4)))


def test_point_cloud_concatenates_features_and_fourier_of_xyz():
  prep = seq.PointCloudPreprocessor((6, 5), num_bands=3, max_resolution=(8, 10, 12))
  assert prep.num_channels == 2 + 3 * (2 * 3 + 1)
  points = jnp.tanh(normal((2, 6, 5)))
  out = prep(points)
  assert out.inputs.shape == (2, 6, prep.num_channels)
  np.testing.assert_array_equal(out.inputs[..., :2], points[..., 3:])
  want = pe.generate_fourier_features(points[1, :, :3], 3, (8, 10, 12))
  np.testing.assert_allclose(out.inputs[1, :, 2:], want, atol=1e-6)
  # xyz come first in the Fourier block (concat_pos), then sin / cos.
  np.testing.assert_allclose(out.inputs[0, :, 2:5], points[0, :, :3], atol=1e-7)
  # Points are a set: permuting them permutes the features.
  perm = jnp.array([3, 1, 5, 0, 2, 4])
  np.testing.assert_allclose(prep(points[:, perm]).inputs, out.inputs[:, perm], atol=1e-6)


def test_point_cloud_scalar_resolution_and_errors():
  prep = seq.PointCloudPreprocessor((4, 3), num_bands=2, max_resolution=6, sine_only=True,
                                    concat_pos=False)
  assert prep.max_resolution == (6.0, 6.0, 6.0) and prep.num_channels == 6
  with pytest.raises(ValueError, match='xyz first'):
    seq.PointCloudPreprocessor((4, 2))
  with pytest.raises(ValueError, match='one value per coordinate'):
    seq.PointCloudPreprocessor((4, 3), max_resolution=(4, 4))


# ------------------------------------------------------------ multimodal preprocessor


def preprocessor(mask_probs, min_padding_size=2):
  # audio: 2 tokens x (4 + 3) channels; label: 1 token x 5; 'b_seq': 3 tokens x 2.
  mods = {
      'audio': seq.AudioPreprocessor((8, 1), samples_per_patch=4,
                                     position_encoding=fourier(1, (8,)), rngs=nnx.Rngs(0)),
      'label': seq.OneHotPreprocessor((5,)),
      'b_seq': seq.AudioPreprocessor((6,), samples_per_patch=2, rngs=nnx.Rngs(0)),
  }
  return mm.MultimodalPreprocessor(mods, mask_probs=mask_probs,
                                   min_padding_size=min_padding_size, rngs=nnx.Rngs(1))


def mm_inputs(seed=0):
  return {'audio': normal((2, 8, 1), seed), 'label': normal((2, 5), seed + 1),
          'b_seq': normal((2, 6), seed + 2)}


def test_multimodal_preprocessor_pads_and_concatenates_in_sorted_order():
  prep = preprocessor({'label': 0.0}, min_padding_size=3)
  assert prep.num_channels == 7 + 3 and prep.modality_sizes == {'audio': 2, 'label': 1,
                                                                'b_seq': 3}
  assert prep.padding['b_seq'].shape == (1, 8) and prep.mask_token['label'].shape == (1, 10)
  assert set(prep.mask_token.keys()) == {'label'}
  inputs = mm_inputs()
  out, audio_alone = jit_call(
      lambda p, x: (p(x), p.modalities['audio'](x['audio']).inputs), prep, inputs)
  assert out.inputs.shape == (2, 6, 10) and out.modality_sizes == prep.modality_sizes
  audio, b_seq, label = out.inputs[:, :2], out.inputs[:, 2:5], out.inputs[:, 5:]
  np.testing.assert_allclose(audio[..., :7], audio_alone)
  np.testing.assert_allclose(b_seq[..., :2], inputs['b_seq'].reshape(2, 3, 2))
  np.testing.assert_allclose(label[:, 0, :5], inputs['label'])
  for x, m, c in ((audio, 'audio', 7), (b_seq, 'b_seq', 2), (label, 'label', 5)):
    np.testing.assert_array_equal(x[..., c:], jnp.broadcast_to(
        prep.padding[m][...], x[..., c:].shape))
  assert set(out.inputs_without_pos) == {'audio', 'label', 'b_seq'}


def test_multimodal_masking_probabilities():
  prep = preprocessor({'audio': 0.5, 'label': 1.0, 'b_seq': 0.0})
  inputs = mm_inputs()
  plain = preprocessor(None)
  plain.padding = prep.padding
  reference = plain(inputs).inputs
  # p = 1 always replaces the tokens; 0 < p < 1 masks only in training.
  out = prep(inputs).inputs
  np.testing.assert_array_equal(out[:, 5], jnp.broadcast_to(prep.mask_token['label'][0],
                                                            (2, 9)))
  np.testing.assert_array_equal(out[:, :5], reference[:, :5])
  train = lambda seed: prep(inputs, deterministic=False, rngs=nnx.Rngs(dropout=seed)).inputs
  masked = np.all(np.asarray(train(0)[:, :2]) == np.asarray(prep.mask_token['audio'][0]), -1)
  kept = np.all(np.asarray(train(0)[:, :2]) == np.asarray(reference[:, :2]), -1)
  assert np.all(masked | kept) and masked.any() and kept.any()
  np.testing.assert_array_equal(train(0), train(0))
  with pytest.raises(ValueError, match='rngs'):
    prep(inputs, deterministic=False)


def test_multimodal_preprocessor_errors():
  with pytest.raises(ValueError, match=r"\['video'\]"):
    preprocessor({'video': 0.5})
  with pytest.raises(ValueError, match='not a probability'):
    preprocessor({'audio': 1.5})
  with pytest.raises(ValueError, match=r"modalities \['audio', 'b_seq', 'label'\]"):
    preprocessor(None)({'audio': jnp.zeros((2, 8, 1))})


# ----------------------------------------------------------------- decoders and queries


def test_decoder_queries_subsampled_fourier_points_use_reference_coordinates():
  queries = mm.DecoderQueries((2, 4), fourier(2, (4, 8)), rngs=nnx.Rngs(0))
  points = jnp.array([5, 2, 0])
  full, sub, want = jit_call(lambda q, x: (
      q.decoder_query(x), q.decoder_query(x, subsampled_points=points),
      pe.generate_fourier_features(jnp.array([[0.0, -0.5]]), 2, (4, 8))[0]),
      queries, jnp.zeros((3, 1)))
  assert full.shape == (3, 8, queries.num_channels) and queries.num_queries() == 8
  assert sub.shape == (3, 3, queries.num_channels) and queries.num_queries(points) == 3
  # Flat index 5 of (2, 4) is (1, 1) -> -1 + 2 * (1/2, 1/4) = (0, -0.5), not the linspace
  # grid's (1, -1/3).
  np.testing.assert_allclose(sub[1, 0], want, atol=1e-6)
  assert not np.allclose(sub[1, 0], full[1, 5], atol=1e-3)
  # The first point is (-1, -1) either way.
  np.testing.assert_allclose(sub[0, 2], full[0, 0], atol=1e-6)


def test_multimodal_decoder_pads_queries_and_reports_output_sizes():
  queries = {
      'audio': mm.DecoderQueries((6,), fourier(2, (6,)), rngs=nnx.Rngs(0)),  # 5 channels
      'label': mm.DecoderQueries((1,), dict(name='trainable', num_channels=3),
                                 kind='classification', rngs=nnx.Rngs(1)),
  }
  decoder = with_random_weights(abstract(lambda: mm.MultimodalDecoder(
      queries, 8, 4, min_padding_size=2, rngs=nnx.Rngs(2))))
  assert decoder.num_query_channels == 7
  assert decoder.output_sizes() == {'audio': 6, 'label': 1}
  points = {'audio': jnp.array([1, 4])}
  assert decoder.output_sizes(points) == {'audio': 2, 'label': 1}
  def outputs(decoder, z):
    query = decoder.decoder_query(z, subsampled_points=points)
    audio = decoder.modalities['audio'].decoder_query(z, subsampled_points=points['audio'])
    return query, audio, decoder(query, z)

  query, audio_query, out = jit_call(outputs, decoder, normal((2, 5, 8)))
  assert query.shape == (2, 3, 7) and out.shape == (2, 3, 4)
  np.testing.assert_allclose(query[:, :2, :5], audio_query)
  np.testing.assert_array_equal(query[:, :2, 5:], jnp.broadcast_to(
      decoder.padding['audio'][...], (2, 2, 2)))
  np.testing.assert_array_equal(query[:, 2, :3], jnp.broadcast_to(
      decoder.modalities['label'].output_pos_enc.pos_embs[...], (2, 3)))
  np.testing.assert_array_equal(query[:, 2, 3:], jnp.broadcast_to(
      decoder.padding['label'][...], (2, 4)))
  with pytest.raises(ValueError, match=r"\['video'\]"):
    decoder.output_sizes({'video': jnp.arange(2)})


def test_video_autoencoding_decoder_reshapes_the_full_grid_only():
  decoder = with_random_weights(abstract(lambda: mm.VideoAutoencodingDecoder(
      8, 3, output_index_dims=(2, 3, 4), position_encoding=fourier(2, (2, 3, 4)),
      rngs=nnx.Rngs(0))))
  def outputs(decoder, z):
    query = decoder.decoder_query(z)
    sub = decoder.decoder_query(z, subsampled_points=jnp.array([0, 23]))
    return decoder(query, z), decoder.decoder(query, z), decoder(sub, z)

  video, flat, sub = jit_call(outputs, decoder, normal((2, 5, 8)))
  assert video.shape == (2, 2, 3, 4, 3) and sub.shape == (2, 2, 3)
  assert decoder.output_shape(jnp.zeros((2, 1)))[0] == (2, 2, 3, 4, 3)
  # [b, t, h, w] is row t*H*W + h*W + w of the flat output.
  np.testing.assert_array_equal(video[1, 1, 2, 3], flat[1, 1 * 12 + 2 * 4 + 3])
  with pytest.raises(ValueError, match=r'\(T, H, W\)'):
    mm.VideoAutoencodingDecoder(8, 3, output_index_dims=(4, 4), position_encoding=None,
                                rngs=nnx.Rngs(0))


# -------------------------------------------------------------------- postprocessors


def test_audio_projection_and_multimodal_postprocessors():
  audio = with_random_weights(abstract(lambda: post.AudioPostprocessor(6, 4,
                                                                      rngs=nnx.Rngs(0))))
  proj = with_random_weights(abstract(lambda: post.ProjectionPostprocessor(
      6, 3, rngs=nnx.Rngs(0))), 1)
  x = normal((2, 5, 6))
  samples = audio(x)
  assert samples.shape == (2, 20)
  # Patch-major: samples of query 1 are 4..7.
  np.testing.assert_allclose(samples[:, 4:8], audio.linear(x)[:, 1], atol=1e-6)
  multi = post.MultimodalPostprocessor({'audio': audio, 'image': proj})
  out = multi(x, modality_sizes={'image': 3, 'audio': 2, 'label': 0})
  np.testing.assert_allclose(out['audio'], audio(x[:, :2]), atol=1e-6)
  np.testing.assert_allclose(out['image'], proj(x[:, 2:5]), atol=1e-6)
  assert out['label'].shape == (2, 0, 6)  # no postprocessor: the slice as it is
  with pytest.raises(ValueError, match='modality_sizes'):
    multi(x)
  with pytest.raises(ValueError, match='Cannot split'):
    multi(x, modality_sizes={'audio': 2, 'image': 2})


# ------------------------------------------------------------------ the full model


def tiny_multimodal_config(label_mask_prob=1.0):
  cfg = build_lib.default_model_config()
  cfg.num_classes = 3
  cfg.preprocessor = part('preprocessor', 'multimodal')
  cfg.decoder = part('decoder', 'multimodal', output_num_channels=6)
  cfg.postprocessor = part('postprocessor', 'multimodal')
  enc = cfg.encoder
  enc.num_latents, enc.num_latent_channels, enc.num_blocks = 4, 8, 1
  enc.num_self_attends_per_block, enc.num_self_attend_heads = 1, 2
  cfg.modalities.audio = bmm.modality_config(
      dict(name='audio', samples_per_patch=4, position_encoding=fourier(2, (16,))),
      mask_prob=0.0, decoder=dict(name='basic', output_index_dims=(4,),
                                  position_encoding=fourier(2, (16,))),
      postprocessor=dict(name='audio'))
  cfg.modalities.label = bmm.modality_config(
      dict(name='one_hot'), mask_prob=label_mask_prob,
      decoder=dict(name='classification', num_query_channels=4),
      postprocessor=dict(name='classification'))
  return cfg


SHAPES = {'audio': (16, 1), 'label': (3,)}


@pytest.fixture(scope='module')
def multimodal_model():
  cfg = tiny_multimodal_config(label_mask_prob=0.0)
  return with_random_weights(abstract(lambda: build_lib.build_model(
      cfg, input_shape=SHAPES, rngs=nnx.Rngs(0))))


@nnx.jit
def _apply(model, inputs, kwargs):
  return model(inputs, **kwargs)


def test_multimodal_model_outputs_and_subsampling(multimodal_model):
  inputs = {'audio': normal((2, 16, 1)), 'label': normal((2, 3), 1)}
  out = _apply(multimodal_model, inputs, {})
  assert {k: v.shape for k, v in out.items()} == {'audio': (2, 16), 'label': (2, 3)}
  assert all(v.dtype == jnp.float32 for v in out.values())
  sub = _apply(multimodal_model, inputs,
               {'subsampled_output_points': {'audio': jnp.array([2, 3]), 'label': None}})
  assert sub['audio'].shape == (2, 8)
  # Each query attends to the latents alone: the label's does not change.
  np.testing.assert_allclose(sub['label'], out['label'], atol=1e-5)
  # Decoding the 5 queries 2 at a time gives the same outputs.
  cfg = tiny_multimodal_config(label_mask_prob=0.0)
  cfg.decoder.query_chunk_size = 2
  chunked = with_random_weights(abstract(lambda: build_lib.build_model(
      cfg, input_shape=SHAPES, rngs=nnx.Rngs(0))))
  assert chunked.decoder.decoder.query_chunk_size == 2
  for m, value in _apply(chunked, inputs, {}).items():
    np.testing.assert_allclose(value, out[m], atol=1e-5)


def test_multimodal_per_modality_input_mask(multimodal_model):
  inputs = {'audio': normal((2, 16, 1)), 'label': normal((2, 3), 1)}
  mask = {'audio': jnp.array([[1, 0, 1, 1], [1, 1, 1, 0]], bool)}  # label: all valid
  out = _apply(multimodal_model, inputs, {'input_mask': mask})
  flat = jnp.concatenate([mask['audio'], jnp.ones((2, 1), bool)], 1)
  np.testing.assert_allclose(_apply(multimodal_model, inputs, {'input_mask': flat})['label'],
                             out['label'], atol=1e-6)
  # Samples of masked patches (patch 1 of example 0, patch 3 of example 1) are ignored.
  perturbed = dict(inputs, audio=inputs['audio'].at[0, 4:8].set(9.0).at[1, 12:].set(-9.0))
  np.testing.assert_allclose(_apply(multimodal_model, perturbed, {'input_mask': mask})['label'],
                             out['label'], atol=1e-5)
  assert not np.allclose(_apply(multimodal_model, perturbed, {})['label'],
                         _apply(multimodal_model, inputs, {})['label'], atol=1e-4)
  with pytest.raises(ValueError, match=r"input_mask\['audio'\]"):
    _apply(multimodal_model, inputs, {'input_mask': {'audio': jnp.ones((2, 3), bool)}})


def test_multimodal_model_in_bfloat16_matches_float32_and_returns_float32():
  cfg = tiny_multimodal_config()
  inputs = {'audio': normal((2, 16, 1)), 'label': normal((2, 3), 1)}
  models = [with_random_weights(abstract(lambda: build_lib.build_model(
      cfg, input_shape=SHAPES, rngs=nnx.Rngs(0), dtype=dtype)))  # the same weights
            for dtype in (jnp.float32, jnp.bfloat16)]
  exact, low = jit_call(lambda ms, x: [m(x) for m in ms], models, inputs)
  assert {k: (v.shape, v.dtype) for k, v in low.items()} == {
      'audio': ((2, 16), jnp.float32), 'label': ((2, 3), jnp.float32)}
  for m in ('audio', 'label'):
    # bfloat16 rounding leaves 0.6-1.1% (RMS, relative) here; losing the learned padding
    # vectors of the preprocessor (cast to an integer type) moves the outputs by 2.8-3.2%.
    error = np.linalg.norm(low[m] - exact[m]) / np.linalg.norm(exact[m])
    assert 0 < error <= 0.02, (m, error)  # 0: bfloat16 was not used


def test_multimodal_build_errors():
  cfg = tiny_multimodal_config()
  with pytest.raises(ValueError, match='input_shape as a dict'):
    abstract(lambda: build_lib.build_model(cfg, input_shape=(16, 1), rngs=nnx.Rngs(0)))
  cfg.modalities.label.decoder.name = 'flow'
  with pytest.raises(ValueError, match="modalities.label.decoder.name='flow' is unknown"):
    abstract(lambda: build_lib.build_model(cfg, input_shape=SHAPES, rngs=nnx.Rngs(0)))
  empty = tiny_multimodal_config()
  empty.modalities = {}
  with pytest.raises(ValueError, match='model.modalities'):
    abstract(lambda: build_lib.build_model(empty, input_shape=SHAPES, rngs=nnx.Rngs(0)))


def test_single_modality_audio_model_with_audio_postprocessor():
  cfg = build_lib.default_model_config()
  cfg.preprocessor = part('preprocessor', 'audio', samples_per_patch=4,
                          position_encoding=fourier(2, (16,)))
  cfg.decoder = part('decoder', 'basic', output_index_dims=(4,), output_num_channels=6)
  cfg.postprocessor = part('postprocessor', 'audio')
  model = with_random_weights(abstract(lambda: build_lib.build_model(
      cfg, input_shape=(16, 1), rngs=nnx.Rngs(0))))
  audio = normal((2, 16, 1))

  def parts(m, x):
    prep = m.preprocessor(x)
    query = m.decoder.decoder_query(prep.inputs)
    return m(x), prep.inputs_without_pos, query, m.decoder(query, m.encoder(prep.inputs))

  out, patches, query, decoded = jit_call(parts, model, audio)
  assert out.shape == (2, 16) and out.dtype == jnp.float32
  np.testing.assert_array_equal(patches, np.asarray(audio).reshape(2, 4, 4))
  # The queries are the decoder's trainable position encoding [4, 64], for each example.
  pos_embs = model.decoder.output_pos_enc.pos_embs[...]
  assert pos_embs.shape == (4, 64)
  np.testing.assert_array_equal(query, np.broadcast_to(pos_embs, (2, 4, 64)))
  # The postprocessor by hand: each decoded patch [6] -> 4 samples, patch after patch.
  linear = model.postprocessor.linear
  samples = (np.asarray(decoded, np.float64) @ np.asarray(linear.kernel[...], np.float64)
             + np.asarray(linear.bias[...], np.float64))
  assert decoded.shape == (2, 4, 6) and samples.shape == (2, 4, 4)
  np.testing.assert_allclose(out, samples.reshape(2, 16), rtol=1e-5, atol=1e-5)
  assert np.abs(samples).max() > 0.1


# ------------------------------------------------------------------------- 1-D conv stem


@pytest.mark.parametrize('length,stride,pool,tokens', [(40, 1, 2, 20), (40, 2, 2, 10),
                                                        (41, 2, 2, 11), (40, 1, 1, 40)])
def test_conv1d_token_count_and_width(length, stride, pool, tokens):
  pe_cfg = dict(name='fourier', num_bands=4, concat_pos=True, sine_only=False,
                max_resolution=None, project_pos_dim=-1)
  prep = seq.Conv1DPreprocessor((length, 1), num_channels=8, kernel_size=5, stride=stride,
                                pool_size=pool, position_encoding=pe_cfg, rngs=nnx.Rngs(0))
  x = normal((2, length, 1))
  out = prep(x)
  assert prep.index_dims == (tokens,)
  assert out.inputs.shape == (2, tokens, 8 + 1 * (2 * 4 + 1)) == (2, tokens, prep.num_channels)
  assert out.inputs_without_pos.shape == (2, tokens, 8)
  want = conv1d_by_hand(np.asarray(x, np.float64), np.asarray(prep.conv.kernel[...], np.float64),
                        np.asarray(prep.conv.bias[...], np.float64), stride, pool)
  np.testing.assert_allclose(out.inputs_without_pos, want, atol=1e-5)
  np.testing.assert_array_equal(out.inputs[..., :8], out.inputs_without_pos)
  assert (want > 0).mean() > 0.3  # the ReLU leaves values to compare


def conv1d_by_hand(x, kernel, bias, stride, pool):
  """[b, L, C] -> SAME conv (TensorFlow's: any odd padding goes after) with kernel [k, C, O]
  -> ReLU -> SAME max-pool of `pool`: [b, ceil(ceil(L / stride) / pool), O], in numpy."""
  length, k = x.shape[1], kernel.shape[0]
  n = -(-length // stride)
  pad = max((n - 1) * stride + k - length, 0)
  x = np.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
  y = np.stack([np.einsum('bkc,kco->bo', x[:, i * stride:i * stride + k], kernel)
                for i in range(n)], axis=1) + bias
  y = np.maximum(y, 0)
  tokens = -(-n // pool)
  pad = (tokens - 1) * pool + pool - n
  y = np.pad(y, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)), constant_values=-np.inf)
  return np.stack([y[:, i * pool:(i + 1) * pool].max(axis=1) for i in range(tokens)], axis=1)


def test_conv1d_tokens_see_only_their_window():
  # Kernel 5, pool 2: token t covers samples 2t-2 .. 2t+3; a change at sample 0 reaches
  # tokens 0 and 1 only.
  prep = seq.Conv1DPreprocessor((40, 1), num_channels=8, kernel_size=5, pool_size=2,
                                rngs=nnx.Rngs(0))
  x = normal((1, 40, 1))
  delta = prep(x.at[0, 0, 0].add(5.0)).inputs - prep(x).inputs
  changed = np.nonzero(np.abs(np.asarray(delta[0])).max(axis=-1) > 0)[0]
  assert set(changed) <= {0, 1} and 0 in changed


def test_conv1d_is_built_from_the_config():
  cfg = build_lib.default_model_config()
  cfg.preprocessor = part('preprocessor', 'conv1d', num_channels=16, kernel_size=3, stride=1,
                          pool_size=4, position_encoding=dict(num_bands=4))
  model = with_random_weights(abstract(lambda: build_lib.build_model(
      cfg, input_shape=(40, 1), rngs=nnx.Rngs(0))))
  assert isinstance(model.preprocessor, seq.Conv1DPreprocessor)
  assert model.preprocessor.index_dims == (10,)
  x = normal((3, 40, 1))
  logits, tokens = jit_call(lambda m, x: (m(x), m.preprocessor(x).inputs_without_pos), model, x)
  assert logits.shape == (3, 10)
  # The config's kernel size, stride and pooling are the ones applied.
  conv = model.preprocessor.conv
  want = conv1d_by_hand(np.asarray(x, np.float64), np.asarray(conv.kernel[...], np.float64),
                        np.asarray(conv.bias[...], np.float64), stride=1, pool=4)
  np.testing.assert_allclose(tokens, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='expects per-example inputs of shape'):
    build_lib.build_model(cfg, input_shape=(8, 8, 1), rngs=nnx.Rngs(0))
