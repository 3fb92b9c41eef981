"""Tests of the Perceiver model: position encodings, attention, weight sharing, I/O,
decoders, dropout plumbing, sharding metadata, summary and config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perceiver_jax.errors import UserError
from perceiver_jax.model import attention as attn_lib
from perceiver_jax.model import build as build_lib
from perceiver_jax.model import io_processors as io
from perceiver_jax.model import position_encoding as pe
from perceiver_jax.model.build import part
from perceiver_jax.model.summary import count_params, format_summary, model_summary
from tests.helpers import with_random_weights

INPUT_1D = (16, 2)


def tiny_config(**encoder_overrides):
  """A very small Perceiver IO classifier config."""
  cfg = build_lib.default_model_config()
  cfg.num_classes = 5
  cfg.preprocessor.position_encoding.num_bands = 3
  enc = cfg.encoder
  enc.num_latents, enc.num_latent_channels = 4, 8
  enc.num_blocks, enc.num_self_attends_per_block = 1, 1
  enc.num_self_attend_heads = 2
  for k, v in encoder_overrides.items():
    enc[k] = v
  return cfg


def build(cfg, input_shape=INPUT_1D, seed=0, **kw):
  return build_lib.build_model(cfg, input_shape=input_shape, rngs=nnx.Rngs(params=seed),
                               **kw)


@pytest.fixture(scope='module')
def base_model():
  """The tiny classifier with dropout, shared by tests so it is built and compiled once."""
  return build(tiny_config(dropout_prob=0.2, num_blocks=2))


def random_inputs(shape, seed=1):
  # numpy, not jax.random: every new shape would cost an XLA compile on CPU.
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@nnx.jit(static_argnames='deterministic')
def _apply(module, args, kwargs, deterministic):
  return module(*args, deterministic=deterministic, **kwargs)


def run(module, *args, deterministic=True, **kwargs):
  """Jitted call: one compile per model is far cheaper than eager op-by-op on CPU."""
  return _apply(module, args, kwargs, deterministic=deterministic)


# ----------------------------------------------------------------- position encodings


@pytest.mark.parametrize('index_dims,num_bands', [((16,), 4), ((4, 6), 3)])
def test_fourier_shape_with_concat_pos(index_dims, num_bands):
  enc = pe.FourierPositionEncoding(index_dims, num_bands, concat_pos=True)
  d = len(index_dims)
  out = enc(batch_size=2)
  assert out.shape == (2, int(np.prod(index_dims)), d * (2 * num_bands + 1))
  assert enc.num_channels == out.shape[-1]


@pytest.mark.parametrize('concat_pos,expected', [(True, 2 * (3 + 1)), (False, 2 * 3)])
def test_fourier_sine_only_shape(concat_pos, expected):
  enc = pe.FourierPositionEncoding((4, 5), 3, concat_pos=concat_pos, sine_only=True)
  assert enc(batch_size=1).shape == (1, 20, expected)


def test_fourier_exact_values_1d():
  # Positions linspace(-1, 1, 3) = -1, 0, 1; bands linspace(1, 3 / 2, 2) = 1, 1.5.
  out = pe.FourierPositionEncoding((3,), 2, max_resolution=(3,))(batch_size=1)[0]
  expected = np.array([
      # pos, sin(pi x), sin(1.5 pi x), cos(pi x), cos(1.5 pi x)
      [-1.0, 0.0, 1.0, -1.0, 0.0],
      [0.0, 0.0, 0.0, 1.0, 1.0],
      [1.0, 0.0, -1.0, -1.0, 0.0],
  ])
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_fourier_exact_values_2d_order():
  # Grid (2, 3): flat index 1 is (row 0, col 1) -> position (-1, 0); one band f = 1.
  out = pe.FourierPositionEncoding((2, 3), 1)(batch_size=1)[0]
  # [x1, x2, sin(pi x1), sin(pi x2), cos(pi x1), cos(pi x2)]
  np.testing.assert_allclose(out[1], [-1.0, 0.0, 0.0, 0.0, -1.0, 1.0], atol=1e-5)
  np.testing.assert_allclose(out[5], [1.0, 1.0, 0.0, 0.0, -1.0, -1.0], atol=1e-5)


def test_trainable_and_projected_position_encoding():
  with nnx.use_eager_sharding(False):
    cfg = dict(name='trainable', num_channels=6, init_scale=0.02, project_pos_dim=4)
    enc = pe.build_position_encoding(cfg, (3, 5), rngs=nnx.Rngs(params=0))
  assert enc.num_channels == 4
  assert enc.base.pos_embs.shape == (15, 6)
  assert enc(batch_size=2).shape == (2, 15, 4)


# ------------------------------------------------------------------------- attention


def test_dot_product_attention_fully_masked_row_is_zero_not_nan():
  q, k, v = (random_inputs((2, 3, 2, 4), s) for s in (1, 2, 3))
  mask = jnp.ones((2, 1, 3, 3), bool).at[1, :, 0, :].set(False)
  out = attn_lib.dot_product_attention(q, k, v, mask)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_array_equal(out[1, 0], 0.0)
  assert np.abs(np.asarray(out[1, 1])).sum() > 0


def test_explicit_attention_path_matches_fused_and_applies_dropout():
  q, k, v = (random_inputs((2, 3, 2, 4), s) for s in (1, 2, 3))
  mask = jnp.ones((2, 1, 1, 3), bool).at[0, :, :, 1].set(False)
  fused = attn_lib.dot_product_attention(q, k, v, mask)
  # A wider v cannot use the fused kernel: the explicit path must agree with it.
  wide = attn_lib.dot_product_attention(q, k, jnp.concatenate([v, v], -1), mask)
  np.testing.assert_allclose(wide, jnp.concatenate([fused, fused], -1), atol=1e-5)
  drop = lambda seed: attn_lib.dot_product_attention(
      q, k, v, mask, dropout_rate=0.5, dropout_rng=jax.random.key(seed))
  np.testing.assert_array_equal(drop(0), drop(0))
  assert not np.allclose(drop(0), fused) and not np.allclose(drop(0), drop(1))


@pytest.mark.parametrize('v_channels', [None, 12])  # 12: explicit (non-fused) path
def test_masked_kv_entries_do_not_change_output(v_channels):
  with nnx.use_eager_sharding(False):
    block = attn_lib.CrossAttention(8, 6, num_heads=2, v_channels=v_channels,
                                    rngs=nnx.Rngs(params=0))
  q, kv = random_inputs((2, 3, 8), 1), random_inputs((2, 5, 6), 2)
  kv_mask = jnp.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)  # row 2 fully masked
  mask = attn_lib.make_attention_mask(None, kv_mask)
  out = run(block, q, kv, mask)
  perturbed = jnp.where(kv_mask[..., None], kv, 100.0 * random_inputs(kv.shape, 3))
  out_perturbed = run(block, q, perturbed, mask)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(out, out_perturbed, atol=1e-5)
  # Sanity: an unmasked perturbation does change the output.
  changed = run(block, q, kv.at[0, 0].set(random_inputs((6,), 4)), mask)
  assert not np.allclose(out[0], changed[0], atol=1e-3)


def test_model_input_mask(base_model):
  model = base_model
  x = random_inputs((2,) + INPUT_1D)
  input_mask = jnp.arange(16)[None, :].repeat(2, 0) < 10
  logits = run(model, x, input_mask=input_mask)
  x_perturbed = x.at[:, 10:].set(7.0)
  np.testing.assert_allclose(logits, run(model, x_perturbed, input_mask=input_mask), atol=1e-5)
  fully_masked = run(model, x, input_mask=jnp.zeros((2, 16), bool))
  assert np.isfinite(np.asarray(fully_masked)).all()


# -------------------------------------------------------------------- weight sharing


def _self_attention_params(c, widening):
  lin = lambda i, o: i * o + o
  return 2 * c + 4 * lin(c, c) + 2 * c + lin(c, widening * c) + lin(widening * c, c)


def test_self_attends_shared_across_blocks():
  n1 = count_params(build(tiny_config(num_blocks=1)))
  assert count_params(build(tiny_config(num_blocks=4))) == n1
  n2 = count_params(build(tiny_config(num_self_attends_per_block=2)))
  assert n2 - n1 == _self_attention_params(8, 1)


def test_iterative_cross_attends():
  base = build(tiny_config(num_blocks=2))
  cross = count_params(base.encoder.cross_attend)
  shared = dict(cross_attend_every_block=True, share_cross_attend_weights=True)
  n2 = count_params(build(tiny_config(num_blocks=2, **shared)))
  assert n2 == count_params(base) + cross
  assert count_params(build(tiny_config(num_blocks=4, **shared))) == n2
  unshared = dict(cross_attend_every_block=True, share_cross_attend_weights=False)
  assert count_params(build(tiny_config(num_blocks=3, **unshared))) == (
      count_params(base) + 2 * cross)
  model = build(tiny_config(num_blocks=2, **shared))
  assert run(model, random_inputs((2,) + INPUT_1D)).shape == (2, 5)


# --------------------------------------------------------------------- preprocessors


def test_space_to_depth_order():
  x = jnp.arange(4 * 6 * 3).reshape(1, 4, 6, 3)
  out = io.space_to_depth(x, (2, 3))
  assert out.shape == (1, 2, 2, 18)
  # Patch (1, 0) holds rows 2..3, cols 0..2, flattened as (dh, dw, c).
  np.testing.assert_array_equal(out[0, 1, 0], x[0, 2:4, 0:3].reshape(-1))


@pytest.mark.parametrize('input_shape,patch_size,num_channels,expected', [
    ((16, 2), (4,), 0, (4, 4 * 2 + (2 * 3 + 1))),
    ((8, 8, 1), (2, 4), 12, (8, 12 + 2 * (2 * 3 + 1))),
])
def test_patches_preprocessor_shapes(input_shape, patch_size, num_channels, expected):
  cfg = build_lib.default_model_config().preprocessor.position_encoding
  cfg.num_bands = 3
  with nnx.use_eager_sharding(False):
    prep = io.PatchesPreprocessor(input_shape, patch_size, num_channels=num_channels,
                                  position_encoding=cfg, rngs=nnx.Rngs(params=0))
  out = prep(random_inputs((3,) + input_shape))
  assert out.inputs.shape == (3,) + expected
  assert prep.num_channels == expected[1]
  assert out.inputs_without_pos.shape[-1] == (num_channels or np.prod(patch_size) *
                                              input_shape[-1])


def test_overlapping_windows_match_space_to_depth_and_cover_the_image():
  x = jnp.arange(8 * 8 * 2, dtype=jnp.float32).reshape(1, 8, 8, 2)
  np.testing.assert_array_equal(io.extract_windows(x, (2, 2), (2, 2), (0, 0)),
                                io.space_to_depth(x, (2, 2)))
  out = io.extract_windows(x, (3, 3), (2, 2), (1, 1))  # 3x3 windows, stride 2, pad 1
  assert out.shape == (1, 4, 4, 18)
  # Window (1, 2) starts at row 2 - 1, col 4 - 1 of the unpadded image.
  np.testing.assert_array_equal(out[0, 1, 2], x[0, 1:4, 3:6].reshape(-1))
  # Window (0, 0) reaches one row and column into the zero padding.
  np.testing.assert_array_equal(out[0, 0, 0].reshape(3, 3, 2)[0], 0)
  np.testing.assert_array_equal(out[0, 0, 0].reshape(3, 3, 2)[1:, 1:],
                                x[0, 0:2, 0:2])


def test_patches_preprocessor_overlapping_grid():
  with nnx.use_eager_sharding(False):
    prep = io.PatchesPreprocessor((8, 8, 1), (3, 3), num_channels=16, patch_stride=(2,),
                                  patch_padding=(1,),
                                  position_encoding=dict(name='fourier', num_bands=2),
                                  rngs=nnx.Rngs(params=0))
    out = prep(random_inputs((2, 8, 8, 1)))
  assert out.inputs.shape == (2, 16, 16 + 2 * (2 * 2 + 1))
  for stride, padding in [((4, 4), (1, 1)), ((2, 2), (0, 0)), ((2, 2), (3, 3))]:
    with pytest.raises(ValueError, match='does not cover'):
      io.PatchesPreprocessor((8, 8, 1), (3, 3), patch_stride=stride,
                             patch_padding=padding, rngs=nnx.Rngs(params=0))


def test_patches_model_2d_with_add_and_projection():
  cfg = tiny_config()
  cfg.preprocessor = part('preprocessor', 'patches', patch_size=(2, 2), num_channels=8,
                          combine='add',
                          position_encoding=dict(num_bands=3, project_pos_dim=8))
  model = build(cfg, input_shape=(4, 4, 1))
  assert model.preprocessor.num_channels == 8
  assert run(model, random_inputs((2, 4, 4, 1))).shape == (2, 5)


# -------------------------------------------------------------------------- decoders


@pytest.mark.parametrize('name,query_pe', [
    ('projection', None), ('classification', None), ('basic', 'trainable')])
def test_decoders_yield_logits(name, query_pe):
  cfg = tiny_config()
  cfg.decoder = part('decoder', name)
  if query_pe:
    cfg.decoder.position_encoding.name = query_pe
  model = build(cfg)
  logits = run(model, random_inputs((3,) + INPUT_1D))
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


def test_projection_decoder_is_a_linear_layer_on_the_mean_latent():
  cfg = tiny_config()
  cfg.decoder = part('decoder', 'projection')
  # Random values everywhere: the layer is zero-initialised (logits would be the bias).
  with nnx.use_eager_sharding(False):
    model = with_random_weights(nnx.eval_shape(lambda: build(cfg)), seed=4)
  x = random_inputs((3,) + INPUT_1D)
  logits, z = nnx.jit(lambda m, x: (m(x), m.encoder(m.preprocessor(x).inputs)))(model, x)
  assert z.shape == (3, 4, 8)
  # By hand: the mean over the 4 latents, then [8] x [8, 5] + [5].
  kernel, bias = (np.asarray(v[...], np.float64)
                  for v in (model.decoder.logits.kernel, model.decoder.logits.bias))
  want = np.asarray(z, np.float64).mean(axis=1) @ kernel + bias
  np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-5)
  assert np.abs(want).max() > 0.1 and np.abs(kernel).min() > 0  # a non-trivial check


def test_basic_decoder_many_fourier_queries():
  cfg = tiny_config()
  cfg.decoder = part('decoder', 'basic', output_index_dims=(3, 2), output_num_channels=7,
                     position_encoding=dict(name='fourier', num_bands=2))
  model = build(cfg)
  assert model.postprocessor is None
  assert run(model, random_inputs((2,) + INPUT_1D)).shape == (2, 6, 7)


# --------------------------------------------------------------- jit, dropout, dtype


def test_jit_matches_eager(base_model):
  model = base_model
  x = random_inputs((2,) + INPUT_1D)
  eager = model(x)
  jitted = run(model, x)
  np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)


def test_dropout_uses_call_time_rngs(base_model):
  model = base_model
  x = random_inputs((2,) + INPUT_1D)
  np.testing.assert_array_equal(run(model, x), run(model, x))
  train = lambda seed: run(model, x, deterministic=False, rngs=nnx.Rngs(dropout=seed))
  np.testing.assert_array_equal(train(1), train(1))
  assert not np.allclose(train(1), train(2))
  assert not np.allclose(train(1), run(model, x))


def test_bfloat16_compute_keeps_float32_params():
  model = build(tiny_config(), dtype=jnp.bfloat16)
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(p.dtype == jnp.float32 for p in params)
  logits = run(model, random_inputs((2,) + INPUT_1D))
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


# ------------------------------------------------------------ sharding metadata, summary


def test_every_param_has_logical_axis_names():
  cfg = tiny_config(cross_attend_every_block=True, num_blocks=2)
  cfg.preprocessor = part('preprocessor', 'patches', num_channels=6, position_encoding=dict(
      name='trainable', num_channels=64, project_pos_dim=3))
  cfg.decoder = part('decoder', 'basic')
  model = build(cfg)
  params = [(path, v) for path, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)]
  assert len(params) > 50
  valid = {'embed', 'input_channels', 'heads', 'head_dim', 'mlp', 'latents', 'classes',
           'pos_channels', None}
  for path, p in params:
    names = p.get_metadata().get('out_sharding')
    assert names is not None and len(names) == p.ndim, path
    assert set(names) <= valid, (path, names)


def test_model_summary_exact_params_and_flops():
  cfg = tiny_config()
  cfg.decoder = part('decoder', 'projection')
  cfg.preprocessor.position_encoding = part('position_encoding', 'none')
  model = build(cfg)
  lin = lambda i, o: i * o + o
  c_in, d, n = 2, 8, 4  # input channels, latent channels, latents
  cross = 2 * d + 2 * c_in + 2 * lin(c_in, c_in) + lin(d, c_in) + lin(c_in, d) + (
      2 * d + lin(d, d) + lin(d, d))
  expected = n * d + cross + _self_attention_params(d, 1) + lin(d, 5)
  summary = model_summary(model, INPUT_1D)
  assert summary['num_params'] == expected
  assert summary['output_shape'] == (1, 5)
  assert summary['flops_per_example'] > 0
  text = format_summary(summary)
  assert f"{expected:,}" in text and 'GFLOPs' in text


# ----------------------------------------------------------------------- config errors


@pytest.mark.parametrize('field,value,message', [
    ('preprocessor.name', 'conv', 'preprocessor'),
    ('decoder.name', 'flowy', 'decoder'),
    ('preprocessor.position_encoding.name', 'rotary', 'preprocessor.position_encoding'),
])
def test_unknown_names_raise_clear_value_error(field, value, message):
  cfg = tiny_config()
  *parents, leaf = field.split('.')
  node = cfg
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=f"config.model.{message}.name='{value}' is unknown; "
                                       f"use one of"):
    build(cfg)


def test_part_has_every_constructor_kwarg_and_each_stays_overridable():
  section = part('decoder', 'basic', num_heads=2)
  assert section.num_heads == 2 and section.position_encoding.name == 'trainable'
  # Every BasicDecoder kwarg but the context the builder passes (latents, settings, ...).
  assert {'qk_channels', 'v_channels', 'widening_factor', 'use_query_residual',
          'final_project', 'output_index_dims', 'query_chunk_size'} <= set(section)
  section.qk_channels = 16  # a None default keeps its type, so a flag can set it
  assert part('encoder').num_latents == 512  # PerceiverEncoder's own default
  with pytest.raises(UserError, match="decoder 'basic' has no field 'num_bands'"):
    part('decoder', 'basic', num_bands=2)


def test_a_field_of_another_kind_names_the_path_and_the_valid_fields():
  cfg = tiny_config()
  cfg.decoder = part('decoder', 'projection')
  cfg.decoder.num_heads = 2  # projection has no attention
  with pytest.raises(UserError, match=r"config.model.decoder.num_heads is not a field of "
                                      r"decoder 'projection'; its fields are none"):
    build(cfg)
  assert (build_lib.MOVED_MODEL_FLAGS['model.preprocessor.position_encoding.combine']
          == 'model.preprocessor.combine')


def test_model_settings_reach_every_block():
  cfg = tiny_config()
  cfg.mlp_activation, cfg.attention_chunk_size = 'gelu', 3
  model = nnx.eval_shape(lambda: build(cfg))
  mlps = [m for _, m in nnx.iter_modules(model) if isinstance(m, attn_lib.MLP)]
  attns = [m for _, m in nnx.iter_modules(model) if isinstance(m, attn_lib.Attention)]
  assert mlps and all(m.activation == 'gelu' for m in mlps)
  assert attns and all(m.attention_chunk_size == 3 for m in attns)
  cfg.attention_impl = 'flash'
  with pytest.raises(UserError, match="config.model.attention_impl='flash' is unknown"):
    build(cfg)
