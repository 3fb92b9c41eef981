"""Parity of the language Perceiver (MLM) with Hugging Face's PerceiverForMaskedLM.

tests/fixtures/language_perceiver.npz was made by tools/make_parity_fixtures.py (HF at
tiny dims, every weight perturbed, padded inputs). We convert its state dict, run our
model and require max |ours - HF| <= 5e-6 x max |HF| (tests/helpers.py PARITY_RTOL) on the
MLM logits and on the latents; the released architecture built at full size must have HF's
parameter count.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.pretrained import language_perceiver
from perceiver_jax.convert import assign_params, hf_language
from perceiver_jax.model.build import build_model
from perceiver_jax.model.summary import count_params
from tests.helpers import assert_matches_reference, outputs_with_model_errors

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures',
                       'language_perceiver.npz')


def load_fixture(path=FIXTURE):
  """-> (meta, state_dict, inputs, outputs) from a parity fixture .npz."""
  with np.load(path) as data:
    groups = {'state_dict': {}, 'inputs': {}, 'outputs': {}}
    for key in data.files:
      group, _, name = key.partition('/')
      if group in groups:
        groups[group][name] = data[key]
    meta = json.loads(str(data['meta']))
  return meta, groups['state_dict'], groups['inputs'], groups['outputs']


META, STATE_DICT, INPUTS, OUTPUTS = load_fixture()


def model_config_like_hf(hf: dict):
  """The released config with the dims of an HF PerceiverConfig (as saved in the fixture).
  HF's MLM hard-codes the decoder's 8 heads and qk 256, which the released config has."""
  cfg = language_perceiver.get_config().model
  cfg.num_classes = hf['vocab_size']
  cfg.preprocessor.update(vocab_size=hf['vocab_size'], num_channels=hf['d_model'],
                          max_seq_len=hf['max_position_embeddings'])
  cfg.encoder.update(
      num_latents=hf['num_latents'], num_latent_channels=hf['d_latents'],
      num_blocks=hf['num_blocks'], num_self_attends_per_block=hf['num_self_attends_per_block'],
      num_cross_attend_heads=hf['num_cross_attention_heads'],
      num_self_attend_heads=hf['num_self_attention_heads'], qk_channels=hf['qk_channels'],
      v_channels=hf['v_channels'])
  cfg.decoder.update(output_index_dims=(hf['max_position_embeddings'],),
                     num_query_channels=hf['d_model'], v_channels=hf['d_model'])
  return cfg


def converted_model(cfg=None):
  cfg = cfg or model_config_like_hf(META['hf_config'])
  model = build_model(cfg, input_shape=INPUTS['input_ids'].shape[1:], rngs=nnx.Rngs(0))
  assign_params(model, hf_language.convert_hf_state_dict(STATE_DICT, model))
  return model


@nnx.jit
def _logits(model, ids, mask):
  return model(ids, input_mask=mask)


@nnx.jit
def _logits_query_masked(model, ids, mask, query_mask):
  return model(ids, input_mask=mask, query_mask=query_mask)


@nnx.jit
def _latents(model, ids, mask):
  inputs = model.preprocessor(ids).inputs
  z0 = model.encoder.latents(ids.shape[0])
  after_cross = model.encoder.cross_attend(z0, inputs, mask[:, None, None, :])
  return after_cross, model.encoder(inputs, input_mask=mask)


@pytest.fixture(scope='module')
def model():
  return converted_model()


def _inputs():
  return jnp.asarray(INPUTS['input_ids']), jnp.asarray(INPUTS['attention_mask'].astype(bool))


def test_fixture_has_padding_and_masked_tokens():
  ids, mask = INPUTS['input_ids'], INPUTS['attention_mask']
  assert (mask == 0).any() and (ids[mask == 0] == 0).all()  # padded with [PAD]
  assert (ids == 3).any()  # [MASK] tokens
  assert OUTPUTS['logits'].shape == (2, META['hf_config']['max_position_embeddings'], 262)


def test_mlm_logits_match_hf(model):
  ids, mask = _inputs()
  ours = np.asarray(_logits(model, ids, mask))
  ref = OUTPUTS['logits']
  diff = np.abs(ours - ref).max()
  print(f'language_perceiver logits: max |ours - HF| = {diff:.3g} (max |HF| = '
        f'{np.abs(ref).max():.3g})')
  assert_matches_reference(ours, ref, 'MLM logits')
  assert np.abs(ref).max() > 1.0  # outputs are not trivially small


def test_logits_check_catches_a_wrong_activation_or_query_residual(model):
  # test_mlm_logits_match_hf's check fails on models with a deliberate error
  # (tests/helpers.py MODEL_ERRORS).
  ids, mask = _inputs()
  for error, logits in outputs_with_model_errors(model, ids, input_mask=mask).items():
    with pytest.raises(AssertionError, match='max [|]ours - reference[|]'):
      assert_matches_reference(logits, OUTPUTS['logits'], f'MLM logits ({error})')


def test_latents_match_hf(model):
  ids, mask = _inputs()
  after_cross, latents = jax.tree.map(np.asarray, _latents(model, ids, mask))
  d_cross = np.abs(after_cross - OUTPUTS['latents_after_cross_attend']).max()
  d_latents = np.abs(latents - OUTPUTS['latents']).max()
  print(f'language_perceiver latents: after cross-attend {d_cross:.3g}, encoder {d_latents:.3g}')
  assert_matches_reference(after_cross, OUTPUTS['latents_after_cross_attend'],
                           'latents after the cross-attend')
  assert_matches_reference(latents, OUTPUTS['latents'], 'latents')


def test_query_mask_changes_only_padded_positions(model):
  # DeepMind's colab also masks the decoder queries; HF does not. Real positions agree.
  ids, mask = _inputs()
  query_mask = jnp.pad(mask, ((0, 0), (0, OUTPUTS['logits'].shape[1] - mask.shape[1])))
  ours = np.asarray(_logits_query_masked(model, ids, mask, query_mask))
  valid = np.asarray(query_mask)
  assert_matches_reference(ours[valid], OUTPUTS['logits'][valid], 'logits at real positions')
  assert np.abs(ours - OUTPUTS['logits'])[~valid].max() > 1e-3


def test_chunked_decoding_gives_the_same_logits():
  cfg = model_config_like_hf(META['hf_config'])
  cfg.decoder.query_chunk_size = 5  # 16 queries -> 4 chunks, the last one padded
  model = converted_model(cfg)
  assert model.decoder.query_chunk_size == 5
  ours = np.asarray(_logits(model, *_inputs()))
  assert_matches_reference(ours, OUTPUTS['logits'], 'logits decoded in chunks')


def test_embedding_is_tied_between_preprocessor_and_decoder(model):
  assert model.postprocessor.embeddings is model.preprocessor.embeddings
  np.testing.assert_array_equal(model.preprocessor.embeddings[...],
                                STATE_DICT['perceiver.input_preprocessor.embeddings.weight'])


def _haiku_name(hf_key: str) -> tuple[str, bool]:
  """HF key -> DeepMind Haiku name, inverting the renames of HF's
  convert_perceiver_haiku_to_pytorch.py. Returns (name, transpose)."""
  fixed = {
      'perceiver.input_preprocessor.embeddings.weight': 'embed/embeddings',
      'perceiver.input_preprocessor.position_embeddings.weight':
          'trainable_position_encoding/pos_embs',
      'perceiver.embeddings.latents': 'perceiver_encoder/~/trainable_position_encoding/pos_embs',
      'perceiver.decoder.output_position_encodings.position_embeddings':
          'basic_decoder/~/trainable_position_encoding/pos_embs',
      'embedding_decoder.bias': 'embedding_decoder/bias',
  }
  if hf_key in fixed:
    return fixed[hf_key], False
  prefixes = [('perceiver.encoder.cross_attention.', 'perceiver_encoder/~/cross_attention/'),
              ('perceiver.decoder.decoding_cross_attention.', 'basic_decoder/cross_attention/')]
  prefixes += [(f'perceiver.encoder.self_attends.{i}.',
                f'perceiver_encoder/~/self_attention{"" if i == 0 else f"_{i}"}/')
               for i in range(8)]
  for hf_prefix, hk_prefix in prefixes:
    if hf_key.startswith(hf_prefix):
      break
  cross = 'cross_attention' in hf_prefix
  module, _, param = hf_key[len(hf_prefix):].rpartition('.')
  norms = {'attention.self.layernorm1': 'layer_norm', 'attention.self.layernorm2': 'layer_norm_1',
           'layernorm': 'layer_norm_2' if cross else 'layer_norm_1'}
  linears = {'attention.self.query': 'attention/linear', 'attention.self.key': 'attention/linear_1',
             'attention.self.value': 'attention/linear_2',
             'attention.output.dense': 'attention/linear_3', 'mlp.dense1': 'mlp/linear',
             'mlp.dense2': 'mlp/linear_1'}
  if module in norms:
    return hk_prefix + norms[module] + '/' + {'weight': 'scale', 'bias': 'offset'}[param], False
  return hk_prefix + linears[module] + '/' + {'weight': 'w', 'bias': 'b'}[param], \
      param == 'weight'


def test_haiku_names_convert_to_the_same_weights(model):
  haiku = {}
  for key, value in STATE_DICT.items():
    name, transpose = _haiku_name(key)
    haiku[name] = value.T if transpose else value
  from_haiku = hf_language.convert_haiku_params(haiku, model)
  from_hf = hf_language.convert_hf_state_dict(STATE_DICT, model)
  assert set(from_haiku) == set(from_hf)
  for key in from_hf:
    np.testing.assert_array_equal(from_haiku[key], from_hf[key], err_msg=key)


def test_checkpoint_of_another_config_is_refused_with_the_parameter_and_shapes():
  cfg = model_config_like_hf(META['hf_config'])
  cfg.encoder.num_latents = 6
  model = build_model(cfg, input_shape=INPUTS['input_ids'].shape[1:], rngs=nnx.Rngs(0))
  values = hf_language.convert_hf_state_dict(STATE_DICT, model)
  with pytest.raises(ValueError, match=r"'encoder/z_pos_enc/pos_embs' has shape \(6, 32\) "
                                       r"in the model but \(8, 32\) in the checkpoint"):
    assign_params(model, values)


def test_extra_checkpoint_entries_are_reported():
  model = converted_model()
  with pytest.raises(ValueError, match='entries this model does not use: perceiver.extra'):
    hf_language.convert_hf_state_dict({**STATE_DICT, 'perceiver.extra': np.zeros(1)}, model)


def test_released_config_matches_reference_and_parameter_count():
  config = language_perceiver.get_config()
  full = META['full_config']
  enc, dec, prep = config.model.encoder, config.model.decoder, config.model.preprocessor
  assert (enc.num_latents, enc.num_latent_channels) == (full['num_latents'], full['d_latents'])
  assert enc.num_self_attends_per_block * enc.num_blocks == \
      full['num_self_attends_per_block'] * full['num_blocks'] == 26
  assert (enc.num_self_attend_heads, enc.num_cross_attend_heads) == (8, 8)
  assert (enc.qk_channels, enc.v_channels) == (full['qk_channels'], full['v_channels'])
  assert (prep.num_channels, prep.max_seq_len, prep.vocab_size) == \
      (full['d_model'], full['max_position_embeddings'], full['vocab_size'])
  assert (dec.num_heads, dec.qk_channels, dec.v_channels) == (8, 256, 768)
  abstract = nnx.eval_shape(lambda: build_model(
      config.model, input_shape=language_perceiver.INPUT_SHAPE, rngs=nnx.Rngs(0)))
  ours = count_params(abstract)
  print(f'language_perceiver parameters: ours {ours:,}, HF {META["num_params_full"]:,}')
  assert ours == META['num_params_full']
