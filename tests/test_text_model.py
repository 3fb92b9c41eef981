"""The language-model pieces: text preprocessor, tied embedding decoder, padded inputs,
and chunked decoding of many queries in BasicDecoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perceiver_jax.model import build as build_lib
from perceiver_jax.model.build import part
from perceiver_jax.model import text_processors as text
from perceiver_jax.model.decoders import BasicDecoder
from perceiver_jax.model.summary import count_params

VOCAB, WIDTH, MAX_LEN = 262, 8, 10


def mlm_config(**decoder):
  cfg = build_lib.default_model_config()
  cfg.num_classes = VOCAB
  cfg.preprocessor = part('preprocessor', 'text', num_channels=WIDTH, max_seq_len=MAX_LEN)
  cfg.encoder.update(num_latents=4, num_latent_channels=12, num_blocks=1,
                     num_self_attends_per_block=1, num_cross_attend_heads=2,
                     num_self_attend_heads=2, qk_channels=8, v_channels=12)
  cfg.decoder = part('decoder', 'basic', num_heads=2, qk_channels=8, v_channels=WIDTH,
                     use_query_residual=False, final_project=False,
                     num_query_channels=WIDTH, output_index_dims=(MAX_LEN,), **decoder)
  cfg.postprocessor = part('postprocessor', 'embedding_decoder')
  return cfg


def build(cfg, seq_len=8):
  return build_lib.build_model(cfg, input_shape=(seq_len,), rngs=nnx.Rngs(0))


@pytest.fixture(scope='module')
def mlm():
  return build(mlm_config())


@nnx.jit
def _run(model, ids, input_mask, query_mask):
  return model(ids, input_mask=input_mask, query_mask=query_mask)


def token_ids(seed=0, shape=(2, 8)):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape), jnp.int32)


# ----------------------------------------------------------------- text preprocessor


def test_text_preprocessor_adds_the_first_positions(mlm):
  prep = mlm.preprocessor
  ids = token_ids(shape=(2, 6))  # shorter than max_seq_len: positions 0..5
  out = prep(ids)
  table = np.asarray(prep.embeddings[...])
  pos = np.asarray(prep.pos_enc.pos_embs[...])
  np.testing.assert_allclose(out.inputs_without_pos, table[np.asarray(ids)], rtol=0, atol=0)
  np.testing.assert_allclose(out.inputs, table[np.asarray(ids)] + pos[None, :6], atol=1e-7)
  assert out.inputs.shape == (2, 6, WIDTH) and prep.num_channels == WIDTH
  assert pos.shape == (MAX_LEN, WIDTH) and table.shape == (VOCAB, WIDTH)


def test_text_preprocessor_errors(mlm):
  with pytest.raises(ValueError, match='expects integer token ids'):
    mlm.preprocessor(jnp.zeros((1, 4), jnp.float32))
  with pytest.raises(ValueError, match='Got 11 tokens but max_seq_len is 10'):
    mlm.preprocessor(jnp.zeros((1, 11), jnp.int32))
  with pytest.raises(ValueError, match='exceeds preprocessor.max_seq_len=10'):
    build(mlm_config(), seq_len=11)
  with pytest.raises(ValueError, match=r'per-example shape \(seq,\)'):
    build_lib.build_model(mlm_config(), input_shape=(8, 1), rngs=nnx.Rngs(0))


# ------------------------------------------------------------ tied embedding decoder


def test_embedding_decoder_is_tied_and_exact(mlm):
  head = mlm.postprocessor
  assert isinstance(head, text.EmbeddingDecoder)
  assert head.embeddings is mlm.preprocessor.embeddings
  head.bias[...] = jnp.arange(VOCAB, dtype=jnp.float32) / VOCAB
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, WIDTH)), jnp.float32)
  expected = np.asarray(x) @ np.asarray(mlm.preprocessor.embeddings[...]).T + \
      np.arange(VOCAB) / VOCAB
  np.testing.assert_allclose(head(x), expected, atol=1e-5)
  # Changing the preprocessor's table changes the decoder: one Param, not a copy.
  mlm.preprocessor.embeddings[...] = mlm.preprocessor.embeddings[...] * 2
  np.testing.assert_allclose(head(x) - head.bias[...], 2 * (expected - np.arange(VOCAB) / VOCAB),
                             atol=1e-4)
  with pytest.raises(ValueError, match='decoder outputs with 8 channels'):
    head(jnp.zeros((1, 2, 5)))


def test_tied_table_counted_once():
  model = build(mlm_config())
  prep, dec, enc = model.preprocessor, model.decoder, model.encoder
  untied = count_params(prep) + count_params(dec) + count_params(enc) + VOCAB  # + bias
  assert count_params(model) == untied


def test_embedding_decoder_needs_the_text_preprocessor():
  cfg = mlm_config()
  cfg.preprocessor = part('preprocessor', 'generic')
  with pytest.raises(ValueError, match="'embedding_decoder' needs preprocessor 'text'"):
    build_lib.build_model(cfg, input_shape=(8, 1), rngs=nnx.Rngs(0))


# ----------------------------------------------------------------- padded inputs


def test_padding_is_ignored_with_an_input_mask(mlm):
  ids = np.asarray(token_ids(1))
  mask = np.ones(ids.shape, bool)
  mask[1, 5:] = False
  other = ids.copy()
  other[1, 5:] = 0  # different tokens only where the mask says padding
  out = _run(mlm, jnp.asarray(ids), jnp.asarray(mask), None)
  assert out.shape == (2, MAX_LEN, VOCAB)
  np.testing.assert_allclose(_run(mlm, jnp.asarray(other), jnp.asarray(mask), None), out,
                             atol=1e-6)
  unmasked = _run(mlm, jnp.asarray(other), None, None)
  assert np.abs(np.asarray(unmasked) - np.asarray(out))[1].max() > 1e-4


# -------------------------------------------------------------- chunked decoding


def small_decoder(chunk=0):
  query_pe = dict(name='trainable', num_channels=12, init_scale=0.5, project_pos_dim=-1)
  with nnx.use_eager_sharding(False):
    return BasicDecoder(16, 5, position_encoding=query_pe, output_index_dims=(37,),
                        num_heads=2, qk_channels=8, query_chunk_size=chunk,
                        rngs=nnx.Rngs(0))


@nnx.jit
def _decode(decoder, query, z, query_mask):
  return decoder(query, z, query_mask=query_mask)


@pytest.mark.parametrize('chunk', [1, 8, 36])
def test_chunked_decoding_gives_the_same_outputs(chunk):
  decoder = small_decoder()
  z = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 16)), jnp.float32)
  query = decoder.decoder_query(z)
  mask = jnp.asarray(np.random.default_rng(1).random((2, 37)) > 0.3)
  whole = [np.asarray(_decode(decoder, query, z, m)) for m in (None, mask)]
  decoder.query_chunk_size = chunk
  for m, expected in zip((None, mask), whole):
    out = np.asarray(_decode(decoder, query, z, m))
    assert out.shape == (2, 37, 5)
    # Same maths per query; only float rounding of differently shaped matmuls differs.
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_chunked_decoding_gradients_match():
  z = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 16)), jnp.float32)

  def grads(chunk):
    decoder = small_decoder(chunk)
    loss = lambda d: jnp.sum(d(d.decoder_query(z), z) ** 2)
    return nnx.jit(nnx.grad(loss))(decoder)

  whole, chunked = grads(0), grads(8)
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_decoding_bounds_memory():
  """Compiled temporary memory for 4096 queries: chunks of 256 need a fraction of it."""
  with nnx.use_eager_sharding(False):
    decoder = BasicDecoder(16, 4, num_query_channels=8, num_heads=1, qk_channels=64,
                           v_channels=64, widening_factor=4, rngs=nnx.Rngs(0))
  z = jax.ShapeDtypeStruct((1, 32, 16), jnp.float32)
  query = jax.ShapeDtypeStruct((1, 4096, 8), jnp.float32)

  def temp_bytes(chunk):
    decoder.query_chunk_size = chunk
    graphdef, state = nnx.split(decoder)
    fn = jax.jit(lambda s, q, z: nnx.merge(graphdef, s)(q, z))
    return fn.lower(state, query, z).compile().memory_analysis().temp_size_in_bytes

  whole, chunked = temp_bytes(0), temp_bytes(256)
  print(f'decoder temp memory, 4096 queries: whole {whole} B, chunks of 256 {chunked} B')
  assert chunked < whole / 4


def test_query_chunk_size_is_validated_and_wired_through_build():
  with pytest.raises(ValueError, match='query_chunk_size must be >= 0'):
    small_decoder(-1)
  model = build(mlm_config(query_chunk_size=4))
  assert model.decoder.query_chunk_size == 4
  assert build(mlm_config()).decoder.query_chunk_size == 0
