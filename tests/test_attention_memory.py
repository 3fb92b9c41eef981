"""Memory-efficient (chunked, online-softmax) attention: equal to plain attention in values
and gradients, masks, dropout, model wiring, composition with decoder query chunking, and
compiled training-step memory that does not hold the N x M attention matrix."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import memory_scaling
from perceiver_jax.model import attention as attn_lib
from perceiver_jax.model import build as build_lib
from perceiver_jax.model import chunked_attention as chunked
from tests.helpers import ROOT, set_dotted



def arrays(shapes, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(s), dtype) for s in shapes]


def masks(kind, batch, heads, q_len, kv_len, seed=0):
  """Every mask layout the attention entry point accepts, each with a fully masked row."""
  rng = np.random.default_rng(seed)
  if kind == 'none':
    return None
  if kind == 'kv':  # [batch, 1, 1, kv]: padded inputs; example 1 has no valid input
    m = rng.random((batch, 1, 1, kv_len)) < 0.7
    m[1] = False
  elif kind == 'query':  # [batch, 1, q, 1]: masked decoder queries
    m = rng.random((batch, 1, q_len, 1)) < 0.6
    m[0, 0, 0] = False
  else:  # 'full' [batch, heads, q, kv], per head
    m = rng.random((batch, heads, q_len, kv_len)) < 0.5
    m[0, heads - 1, 1] = False
  return jnp.asarray(m)


def value_and_grads(fn, q, k, v):
  """fn's output and the gradients of a non-trivial scalar of it w.r.t. q, k, v."""
  out = jax.jit(fn)(q, k, v)
  weights = jnp.asarray(np.random.default_rng(9).standard_normal(out.shape), jnp.float32)
  loss = lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v).astype(jnp.float32)) * weights)
  return out, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


def assert_close(a, b, tol):
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                             atol=tol, rtol=tol)


# ------------------------------------------------------------------ kernel vs plain


@pytest.mark.parametrize('mask_kind,heads,kv_len,chunk,v_dim', [
    ('none', 1, 64, 16, 8),    # even chunks
    ('kv', 3, 37, 8, 8),       # uneven last chunk (37 = 4 * 8 + 5), a fully masked example
    ('query', 2, 37, 16, 12),  # query mask, v wider than q/k
    ('full', 4, 50, 7, 6),     # per-head mask, 8 chunks, last has 1 key
])
def test_chunked_equals_plain_values_and_gradients(mask_kind, heads, kv_len, chunk, v_dim):
  batch, q_len, d = 2, 5, 4
  q, k, v = arrays([(batch, q_len, heads, d), (batch, kv_len, heads, d),
                    (batch, kv_len, heads, v_dim)])
  mask = masks(mask_kind, batch, heads, q_len, kv_len)
  plain = lambda q, k, v: attn_lib.dot_product_attention(q, k, v, mask)
  chunk_fn = lambda q, k, v: attn_lib.dot_product_attention(q, k, v, mask, chunk_size=chunk)
  out_p, grads_p = value_and_grads(plain, q, k, v)
  out_c, grads_c = value_and_grads(chunk_fn, q, k, v)
  assert np.isfinite(np.asarray(out_c)).all()
  assert_close(out_c, out_p, 1e-5)
  for gc, gp in zip(grads_c, grads_p):
    assert np.abs(np.asarray(gp)).max() > 1e-3  # the gradients are not trivially zero
    assert_close(gc, gp, 1e-5)
  # The chunked path really ran: a scan over ceil(kv_len / chunk) chunks.
  jaxpr = str(jax.make_jaxpr(chunk_fn)(q, k, v))
  assert f'length={-(-kv_len // chunk)}' in jaxpr and 'length=' not in str(
      jax.make_jaxpr(plain)(q, k, v))


def test_fully_masked_rows_are_zero_with_zero_gradients():
  q, k, v = arrays([(2, 3, 2, 4), (2, 20, 2, 4), (2, 20, 2, 4)])
  mask = jnp.ones((2, 1, 3, 20), bool).at[1, :, 0, :].set(False)
  fn = lambda q, k, v: chunked.chunked_attention(q, k, v, mask, chunk_size=6)
  out, (dq, dk, dv) = value_and_grads(fn, q, k, v)
  assert all(np.isfinite(np.asarray(x)).all() for x in (out, dq, dk, dv))
  np.testing.assert_array_equal(out[1, 0], 0.0)
  np.testing.assert_array_equal(dq[1, 0], 0.0)
  assert np.abs(np.asarray(out[1, 1])).min() > 0


def test_bfloat16_inputs_match_float32_plain_attention():
  q, k, v = arrays([(2, 8, 2, 16), (2, 300, 2, 16), (2, 300, 2, 16)], seed=3)
  q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
  mask = masks('kv', 2, 2, 8, 300)
  fn = lambda q, k, v: attn_lib.dot_product_attention(q, k, v, mask, chunk_size=64)
  out, grads = value_and_grads(fn, q16, k16, v16)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  # Reference: plain attention in float32 on the same (bf16-rounded) inputs.
  ref = lambda q, k, v: attn_lib.dot_product_attention(q, k, v, mask)
  out_ref, grads_ref = value_and_grads(ref, *(x.astype(jnp.float32) for x in (q16, k16, v16)))
  assert_close(out, out_ref, 2e-2)
  for g, g_ref in zip(grads, grads_ref):
    scale = np.abs(np.asarray(g_ref)).max()
    np.testing.assert_allclose(np.asarray(g, np.float32) / scale, g_ref / scale, atol=2e-2)


def test_dropout_equals_plain_attention_with_the_same_keep_mask():
  batch, q_len, heads, kv_len, chunk, rate = 2, 4, 2, 29, 8, 0.3
  q, k, v = arrays([(batch, q_len, heads, 4), (batch, kv_len, heads, 4),
                    (batch, kv_len, heads, 4)], seed=5)
  mask = masks('kv', batch, heads, q_len, kv_len)
  rng = jax.random.key(7)
  fn = lambda q, k, v: attn_lib.dot_product_attention(
      q, k, v, mask, dropout_rate=rate, dropout_rng=rng, chunk_size=chunk)
  # The same keep-mask, drawn per chunk as the kernel does, applied to explicit softmax.
  n = -(-kv_len // chunk)
  keep = jax.jit(lambda rng: jnp.concatenate(
      [chunked.dropout_keep(rng, i, rate, (batch, heads, q_len, chunk)) for i in range(n)],
      axis=-1)[..., :kv_len])(rng)

  def ref(q, k, v):
    logits = jnp.einsum('bthd,bshd->bhts', q, k) / 2.0  # 1/sqrt(4)
    probs = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
    probs = jnp.where(mask, probs, 0.0)  # the fully masked example -> 0, not NaN
    probs = jnp.where(keep, probs / (1 - rate), 0.0)
    return jnp.einsum('bhts,bshd->bthd', probs, v)

  out, grads = value_and_grads(fn, q, k, v)
  out_ref, grads_ref = value_and_grads(ref, q, k, v)
  assert_close(out, out_ref, 1e-5)
  for g, g_ref in zip(grads, grads_ref):
    assert_close(g, g_ref, 1e-5)
  run = jax.jit(lambda rate, rng: attn_lib.dot_product_attention(
      q, k, v, mask, dropout_rate=rate, dropout_rng=rng, chunk_size=chunk),
      static_argnums=0)
  assert not np.allclose(out, run(0.0, rng), atol=1e-3)  # dropout did drop
  assert not np.allclose(out, run(rate, jax.random.key(8)), atol=1e-3)  # per-key masks


def test_chunk_length_selection_rules():
  assert chunked.chunk_length(256, 4096, 0, 0) == 0  # off
  assert chunked.chunk_length(256, 4096, 512, 0) == 512  # forced
  assert chunked.chunk_length(256, 512, 512, 0) == 0  # one chunk = plain attention
  # Automatic: above the threshold only, with the default chunk length unless given one.
  assert chunked.chunk_length(256, 4096, 0, 256 * 4096) == 0
  assert chunked.chunk_length(256, 4097, 0, 256 * 4096) == chunked.DEFAULT_CHUNK_SIZE
  assert chunked.chunk_length(256, 4097, 128, 256 * 4096) == 128
  assert chunked.chunk_length(256, 4096, 128, 2 ** 30) == 0
  with pytest.raises(ValueError, match='must be >= 0'):
    chunked.chunk_length(1, 1, -1, 0)
  with nnx.use_eager_sharding(False), pytest.raises(ValueError, match='must be >= 0'):
    attn_lib.Attention(8, 8, num_heads=2, rngs=nnx.Rngs(0), attention_auto_chunk_threshold=-5)


# ---------------------------------------------------------------- wiring into models


def tiny_config(**overrides):
  cfg = build_lib.default_model_config()
  cfg.num_classes = 3
  cfg.preprocessor.position_encoding.num_bands = 3
  enc = cfg.encoder
  enc.num_latents, enc.num_latent_channels, enc.num_blocks = 12, 8, 1
  enc.num_self_attends_per_block, enc.num_self_attend_heads = 1, 2
  return set_dotted(cfg, overrides)


def attention_modules(model):
  return [m for _, m in nnx.iter_modules(model) if isinstance(m, attn_lib.Attention)]


def loss_and_grads(model, inputs, input_mask):
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(params):
    out = nnx.merge(graphdef, params)(inputs, input_mask=input_mask)
    return jnp.sum(jnp.sin(out))

  return jax.jit(jax.value_and_grad(loss))(params)


def test_model_config_selects_chunking_everywhere_with_equal_results():
  decoder = build_lib.part('decoder', 'basic', output_index_dims=(9,), output_num_channels=3,
                           query_chunk_size=2)
  inputs = arrays([(2, 30, 2)], seed=1)[0]
  input_mask = jnp.asarray(np.arange(30)[None] < np.array([[30], [17]]))
  build = lambda **o: build_lib.build_model(tiny_config(decoder=decoder, **o),
                                            input_shape=(30, 2), rngs=nnx.Rngs(params=0))
  plain = build(attention_auto_chunk_threshold=0)
  # chunk 5: the cross-attends (30 inputs: 6 chunks), self-attends and the decoder (12
  # latents: 3 chunks) are chunked; the decoder decodes its 9 queries 2 at a time (5 query
  # chunks, the last padded), each with chunked keys: the two chunkings compose.
  forced = build(attention_chunk_size=5, attention_auto_chunk_threshold=0)
  # Automatic above 12 x 29 scores: only the 12-latent x 30-input cross-attends.
  auto = build(attention_chunk_size=5, attention_auto_chunk_threshold=12 * 29)
  modules = attention_modules(forced)
  assert len(modules) == 3 and all(m.attention_chunk_size == 5 for m in modules)
  assert all(m.attention_auto_chunk_threshold == 12 * 29 for m in attention_modules(auto))
  assert build_lib.default_model_config().attention_auto_chunk_threshold == 2 ** 28
  loss_p, grads_p = loss_and_grads(plain, inputs, input_mask)
  loss_c, grads_c = loss_and_grads(forced, inputs, input_mask)
  np.testing.assert_allclose(loss_c, loss_p, rtol=1e-5)
  for gc, gp in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads_p)):
    # Relative to each parameter's gradient scale (some, like key biases, are ~0 exactly).
    scale = max(1.0, np.abs(np.asarray(gp)).max())
    np.testing.assert_allclose(np.asarray(gc) / scale, np.asarray(gp) / scale, atol=1e-5)
  jaxpr = lambda model: str(jax.make_jaxpr(lambda x: model(x, input_mask=input_mask))(inputs))
  text = jaxpr(forced)
  assert all(f'length={n}' in text for n in (6, 3, 5))
  text = jaxpr(auto)  # 12 x 12 self-attends and 2 x 12 decoder chunks stay plain
  assert 'length=6' in text and 'length=3' not in text and 'length=5' in text
  text = jaxpr(plain)
  assert 'length=6' not in text and 'length=3' not in text and 'length=5' in text


def test_multimodal_decoder_receives_the_chunking_fields():
  cfg = tiny_config(attention_chunk_size=64, attention_auto_chunk_threshold=1000)
  cfg.preprocessor = build_lib.part('preprocessor', 'multimodal')
  cfg.decoder = build_lib.part('decoder', 'multimodal')
  cfg.postprocessor = build_lib.part('postprocessor', 'multimodal')
  cfg.modalities.label = build_lib.modality_config(
      dict(name='one_hot'), decoder=dict(name='classification', num_query_channels=4),
      postprocessor=dict(name='classification'))
  model = nnx.eval_shape(lambda: build_lib.build_model(cfg, input_shape={'label': (3,)},
                                                       rngs=nnx.Rngs(params=0)))
  modules = attention_modules(model)
  assert len(modules) >= 3
  assert all((m.attention_chunk_size, m.attention_auto_chunk_threshold) == (64, 1000)
             for m in modules)


# --------------------------------------------------------------------- compiled memory


def test_largest_fitting_search():
  calls = []
  def total(n):  # a step of 1000 + 10 bytes per token
    calls.append(n)
    return 1000 + 10 * n
  # 1000 + 10 n <= 50000 -> n <= 4900: 2^12 = 4096 fits, 8192 does not, bisected by 256.
  assert memory_scaling.largest_fitting(total, 50_000, 6, 20) == 4864
  assert all(n % 256 == 0 for n in calls if n > 4096)
  assert memory_scaling.largest_fitting(total, 50_000, 6, 10) == 1024  # capped
  assert memory_scaling.largest_fitting(total, 500, 6, 20) == 0  # 2^6 does not fit


def test_compiled_step_memory_smaller_with_chunking_without_ml_collections():
  # Run as the accelerator hosts would, which lack these packages. 4 cross-attend heads x
  # 64 latents x N = 8192 inputs: the plain step holds [4, 64, 8192] float32 arrays.
  code = (
      "import sys, json\n"
      "for m in ('ml_collections', 'grain', 'tensorflow_datasets', 'tensorflow'):\n"
      "  sys.modules[m] = None\n"
      "from benchmarks import memory_scaling as ms\n"
      "r = ms.main(['--min_log2=13', '--max_log2=13', '--device_memory_gib=0', '--batch=1',\n"
      "             '--input_channels=8', '--num_latents=64', '--latent_channels=16',\n"
      "             '--self_attends=0', '--cross_heads=4', '--num_classes=3',\n"
      "             '--chunk_size=256', '--confirm', '--confirm_gib=0.006'])\n"
      "print('RESULT', json.dumps(r))\n")
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert '| 2^13 = 8192 |' in proc.stdout  # the table
  result = json.loads(proc.stdout.split('RESULT ')[1])
  (plain,), (chunk,) = (result['paths'][p]['rows'] for p in ('plain', 'chunked'))
  matrix = 4 * 64 * 8192 * 4  # bytes of one [heads, latents, N] float32 array
  assert plain['temp'] > 2 * matrix  # the plain step holds the attention matrix (twice)
  assert chunk['temp'] < plain['temp'] - 2 * matrix
  assert chunk['temp'] < plain['temp'] / 4
  assert chunk['argument'] == plain['argument']  # the same state and batch
  # One real step ran at the size whose compiled memory fits 6 MiB: chunked only.
  assert chunk['total'] < 0.006 * 2 ** 30 < plain['total']
  assert result['paths']['chunked']['confirmed']['n'] == 8192
  assert np.isfinite(result['paths']['chunked']['confirmed']['loss'])
  assert 'confirmed' not in result['paths']['plain']


def test_negative_chunk_fields_are_a_one_sentence_user_error():
  from perceiver_jax.errors import UserError
  from perceiver_jax.validate import validate_config
  from tests.helpers import tiny_mnist1d_config
  validate_config(tiny_mnist1d_config(**{'model.attention_chunk_size': 512}))
  for field in ('attention_chunk_size', 'attention_auto_chunk_threshold'):
    with pytest.raises(UserError, match=f'config.model.{field}=-1 is invalid'):
      validate_config(tiny_mnist1d_config(**{f'model.{field}': -1}))
