"""Parity of the multimodal autoencoder with Hugging Face's PerceiverForMultimodalAutoencoding.

The fixture (tools/parity_fixtures/multimodal.py) holds a tiny HF model with perturbed
weights, its inputs, subsampled output points and per-modality outputs. The tiny model
here is configs/pretrained/multimodal_perceiver.py with the fixture's small sizes, so
the released config's structure is what is tested.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.pretrained import multimodal_perceiver as released
from perceiver_jax.convert import common
from perceiver_jax.convert import hf_multimodal
from perceiver_jax.model.build import build_model
from perceiver_jax.model.summary import count_params
from tests.helpers import assert_matches_reference, outputs_with_model_errors

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'multimodal_perceiver.npz')
MODALITIES = ('audio', 'image', 'label')


@pytest.fixture(scope='module')
def fixture():
  with np.load(FIXTURE) as data:
    groups = {'state_dict': {}, 'inputs': {}, 'outputs': {}}
    for key in data.files:
      if key != 'meta':
        group, name = key.split('/', 1)
        groups[group][name] = data[key]
    groups['meta'] = json.loads(str(data['meta']))
  return groups


def tiny_config(hf: dict, mask_probs: dict):
  """The released config shrunk to the fixture's HF config."""
  model = released.get_config().model
  num_samples = hf['num_frames'] * hf['audio_samples_per_frame']
  spp = hf['samples_per_patch']
  model.num_classes = hf['num_labels']
  enc = model.encoder
  enc.num_latents, enc.num_latent_channels = hf['num_latents'], hf['d_latents']
  enc.num_self_attends_per_block = hf['num_self_attends_per_block']
  enc.num_self_attend_heads = hf['num_self_attention_heads']
  enc.num_cross_attend_heads = hf['num_cross_attention_heads']
  model.decoder.output_num_channels = hf['output_num_channels']
  mods = model.modalities
  audio_bands, image_bands = hf['fourier_bands']['audio'], hf['fourier_bands']['image']
  image_res = (hf['num_frames'], hf['image_size'], hf['image_size'])
  for pe_cfg in (mods.audio.preprocessor.position_encoding,
                 mods.audio.decoder.position_encoding):
    pe_cfg.num_bands, pe_cfg.max_resolution = audio_bands, (num_samples,)
  for pe_cfg in (mods.image.preprocessor.position_encoding,
                 mods.image.decoder.position_encoding):
    pe_cfg.num_bands, pe_cfg.max_resolution = image_bands, image_res
  mods.audio.preprocessor.samples_per_patch = spp
  mods.audio.postprocessor.samples_per_patch = spp
  mods.audio.decoder.output_index_dims = (num_samples // spp,)
  mods.image.decoder.output_index_dims = tuple(hf['output_shape'][1:])
  mods.label.decoder.num_query_channels = hf['label_trainable_num_channels']
  mods.label.postprocessor.num_classes = hf['num_labels']
  for m in MODALITIES:
    mods[m].mask_prob = mask_probs[m]
  return model


def input_shapes(inputs):
  return {m: inputs[m].shape[1:] for m in MODALITIES}


def converted_model(fixture, mask_probs):
  cfg = tiny_config(fixture['meta']['hf_config'], mask_probs)
  # Abstract build: random init op by op costs seconds on CPU and is overwritten anyway.
  model = nnx.eval_shape(lambda: build_model(
      cfg, input_shape=input_shapes(fixture['inputs']), rngs=nnx.Rngs(params=0)))
  common.assign_params(model, hf_multimodal.convert_hf_state_dict(fixture['state_dict'],
                                                                  model))
  return model


@pytest.fixture(scope='module')
def models(fixture):
  """{'released': label mask_prob 1 (as HF), 'unmasked': every mask_prob 0}."""
  probs = fixture['meta']['hf_config']['mask_probs']
  return {'released': converted_model(fixture, probs),
          'unmasked': converted_model(fixture, {m: 0.0 for m in probs})}


@nnx.jit
def _forward(model, inputs, points):
  """Per-modality outputs and the encoder's final latents."""
  outputs = model(inputs, subsampled_output_points=points)
  z = model.encoder(model.preprocessor(inputs).inputs)
  return outputs, z


def run_inputs(fixture, label=None):
  """(inputs, subsampled output points) of the fixture, the label replaced by `label`."""
  inputs = {m: jnp.asarray(fixture['inputs'][m]) for m in MODALITIES}
  if label is not None:
    inputs['label'] = label
  points = {'image': jnp.asarray(fixture['inputs']['subsampled_image'], jnp.int32),
            'audio': jnp.asarray(fixture['inputs']['subsampled_audio'], jnp.int32),
            'label': None}
  return inputs, points


def run(model, fixture, label=None):
  return _forward(model, *run_inputs(fixture, label))


def max_diff(a, b):
  assert np.shape(a) == np.shape(b), (np.shape(a), np.shape(b))
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize('variant', ['released', 'unmasked'])
def test_outputs_and_latents_match_hf(fixture, models, variant):
  prefix = '' if variant == 'released' else 'unmasked_'
  outputs, latents = run(models[variant], fixture)
  expected = fixture['outputs']
  diffs = {m: max_diff(outputs[m], expected[prefix + m]) for m in MODALITIES}
  diffs['latents'] = max_diff(latents, expected[prefix + 'latents'])
  print(f'{variant}: max |ours - HF| = {diffs}')
  for m in MODALITIES:
    assert_matches_reference(outputs[m], expected[prefix + m], f'{variant} {m}')
  assert_matches_reference(latents, expected[prefix + 'latents'], f'{variant} latents')
  # The fixture is not degenerate: outputs vary and have the reference's shapes.
  assert outputs['image'].shape == (2, 40, 3) and outputs['audio'].shape == (2, 80)
  assert np.std(np.asarray(outputs['image'])) > 1e-2


def test_output_check_catches_a_wrong_activation_or_query_residual(fixture, models):
  # test_outputs_and_latents_match_hf's check of each modality's output fails on models with
  # a deliberate error (tests/helpers.py MODEL_ERRORS).
  inputs, points = run_inputs(fixture)
  broken = outputs_with_model_errors(models['released'], inputs,
                                     subsampled_output_points=points)
  for error, outputs in broken.items():
    for m in MODALITIES:
      with pytest.raises(AssertionError, match='max [|]ours - reference[|]'):
        assert_matches_reference(outputs[m], fixture['outputs'][m], f'{m} ({error})')


def test_released_masking_hides_the_label_and_unmasked_uses_it(fixture, models):
  assert fixture['meta']['hf_config']['mask_probs']['label'] == 1.0
  other_label = jnp.asarray(np.random.default_rng(5).standard_normal((2, 5)), jnp.float32)
  masked, unmasked = models['released'], models['unmasked']
  np.testing.assert_array_equal(run(masked, fixture)[0]['label'],
                                run(masked, fixture, other_label)[0]['label'])
  assert max_diff(run(unmasked, fixture)[0]['label'],
                  run(unmasked, fixture, other_label)[0]['label']) > 1e-3


def test_full_size_parameter_count_matches_hf(fixture):
  config = released.get_config()
  abstract = nnx.eval_shape(lambda: build_model(
      config.model, input_shape=released.INPUT_SHAPE, rngs=nnx.Rngs(params=0)))
  assert count_params(abstract) == fixture['meta']['num_params_full'] == 19_858_855
  assert abstract.preprocessor.num_channels == 704
  assert abstract.decoder.num_query_channels == 1026


def test_checkpoint_of_another_config_is_refused(fixture, models):
  probs = fixture['meta']['hf_config']['mask_probs']
  cfg = tiny_config(fixture['meta']['hf_config'], probs)
  cfg.modalities.label.decoder.num_query_channels = 10  # HF's is 12
  model = nnx.eval_shape(lambda: build_model(
      cfg, input_shape=input_shapes(fixture['inputs']), rngs=nnx.Rngs(params=0)))
  with pytest.raises(ValueError, match=r"'decoder/(padding|modalities)/label[^']*' has "
                                       r"shape \(1, \d+\) in the model but \(1, \d+\)"):
    common.assign_params(model, hf_multimodal.convert_hf_state_dict(
        fixture['state_dict'], model))
  extra = dict(fixture['state_dict'], **{'perceiver.decoder.padding.video': np.zeros((1, 3))})
  with pytest.raises(ValueError, match='perceiver.decoder.padding.video'):
    hf_multimodal.convert_hf_state_dict(extra, models['released'])


def _hf_layer_to_haiku(rest: str, cross: bool) -> str:
  """HF PerceiverLayer parameter name -> DeepMind's, per HF's conversion script."""
  table = [('attention.self.layernorm1.', 'layer_norm/'),
           ('attention.self.layernorm2.', 'layer_norm_1/'),
           ('attention.self.query.', 'attention/linear/'),
           ('attention.self.key.', 'attention/linear_1/'),
           ('attention.self.value.', 'attention/linear_2/'),
           ('attention.output.dense.', 'attention/linear_3/'),
           ('layernorm.', 'layer_norm_2/' if cross else 'layer_norm_1/'),
           ('mlp.dense1.', 'mlp/linear/'), ('mlp.dense2.', 'mlp/linear_1/')]
  for hf, hk in table:
    if rest.startswith(hf):
      return hk + rest[len(hf):]
  raise AssertionError(rest)


def hf_to_haiku(state_dict: dict) -> dict:
  """Inverse of the renaming in HF's convert_perceiver_haiku_to_pytorch.py (multimodal)."""
  out = {}
  prefixes = [('perceiver.encoder.cross_attention.', 'encoder/~/cross_attention/', True),
              ('perceiver.decoder.decoder.decoding_cross_attention.',
               'multimodal_decoder/~/basic_decoder/cross_attention/', True)]
  fixed = {
      'perceiver.embeddings.latents': 'encoder/~/trainable_position_encoding/pos_embs',
      'perceiver.decoder.modalities.label.decoder.output_position_encodings.'
      'position_embeddings': 'classification_decoder/~/basic_decoder/~/'
                             'trainable_position_encoding/pos_embs',
  }
  post = {'audio': 'audio_postprocessor', 'image': 'projection_postprocessor',
          'label': 'classification_postprocessor'}
  for key, value in state_dict.items():
    hk = fixed.get(key)
    for hf, hk_prefix, cross in prefixes:
      if key.startswith(hf):
        hk = hk_prefix + _hf_layer_to_haiku(key[len(hf):], cross)
    if key.startswith('perceiver.encoder.self_attends.'):
      i, rest = key[len('perceiver.encoder.self_attends.'):].split('.', 1)
      hk = f'encoder/~/self_attention{"" if i == "0" else "_" + i}/' + _hf_layer_to_haiku(
          rest, cross=False)
    for m in MODALITIES:
      hk = {f'perceiver.input_preprocessor.padding.{m}':
            f'multimodal_preprocessor/{m}_padding/pos_embs',
            f'perceiver.input_preprocessor.mask.{m}':
            f'multimodal_preprocessor/{m}_mask_token/pos_embs',
            f'perceiver.decoder.padding.{m}':
            f'multimodal_decoder/~decoder_query/{m}_padding/pos_embs'}.get(key, hk)
      if key.startswith(f'perceiver.output_postprocessor.modalities.{m}.classifier.'):
        hk = f'{post[m]}/linear/' + key.rsplit('.', 1)[1]
    if key.startswith('perceiver.decoder.decoder.final_layer.'):
      hk = 'multimodal_decoder/~/basic_decoder/output/' + key.rsplit('.', 1)[1]
    assert hk is not None, key
    hk = hk.replace('/weight', '/w' if 'norm' not in hk else '/scale')
    hk = hk.replace('/bias', '/b' if 'norm' not in hk else '/offset')
    # Haiku Linear weights are [in, out]; torch's are [out, in].
    out[hk] = value.T if hk.endswith('/w') else value
  return out


def test_haiku_names_convert_to_the_same_weights(fixture, models):
  model = models['released']
  from_hf = hf_multimodal.convert_hf_state_dict(fixture['state_dict'], model)
  from_haiku = hf_multimodal.convert_haiku_params(hf_to_haiku(fixture['state_dict']), model)
  assert set(from_hf) == set(from_haiku)
  for key in from_hf:
    np.testing.assert_array_equal(from_hf[key], from_haiku[key], err_msg=key)
