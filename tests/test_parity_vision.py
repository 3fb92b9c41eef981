"""Parity of the vision models with Hugging Face's Perceiver: the ImageNet classifiers
(PerceiverForImageClassificationLearned / Fourier / ConvProcessing) and
PerceiverForOpticalFlow.

Each fixture (tools/parity_fixtures/vision.py) holds a tiny HF model with perturbed
weights (BatchNorm statistics included), its inputs, logits or flow, final latents, and
the parameter count of the released model. The tiny model here is
configs/pretrained/<name>.py with the fixture's `model_overrides`, so the released
config's structure is what is tested; outputs are compared in eval mode.
"""

import functools
import importlib
import json
import math
import os

import jax
import numpy as np
import pytest
from flax import nnx

from perceiver_jax.convert import common, hf_vision
from perceiver_jax.model.build import build_model
from tests.helpers import assert_matches_reference, outputs_with_model_errors

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
NAMES = ('vision_perceiver_learned', 'vision_perceiver_fourier', 'vision_perceiver_conv',
         'optical_flow_perceiver')


@functools.lru_cache(maxsize=None)
def load_fixture(name):
  with np.load(os.path.join(FIXTURES, f'{name}.npz')) as data:
    groups = {'state_dict': {}, 'inputs': {}, 'outputs': {}}
    for key in data.files:
      if key != 'meta':
        group, field = key.split('/', 1)
        groups[group][field] = data[key]
    groups['meta'] = json.loads(str(data['meta']))
  return groups


def released(name):
  return importlib.import_module(f'configs.pretrained.{name}')


def tiny_model_config(name):
  """configs/pretrained/<name>.py with the fixture's tiny sizes."""
  cfg = released(name).get_config().model
  for key, value in load_fixture(name)['meta']['model_overrides'].items():
    *parents, leaf = key.split('.')
    node = cfg
    for p in parents:
      node = node[p]
    node[leaf] = tuple(value) if isinstance(value, list) else value
  return cfg


def build_tiny(name):
  """The tiny model, abstract: every variable is then written by assign_params (random
  initialisation op by op would cost seconds on CPU)."""
  fx = load_fixture(name)
  cfg, shape = tiny_model_config(name), tuple(fx['meta']['input_shape'])
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: build_model(cfg, input_shape=shape,
                                              rngs=nnx.Rngs(params=0)))


@nnx.jit
def _outputs_and_latents(model, x):
  prep = model.preprocessor(x)
  return model(x), model.encoder(prep.inputs)


@functools.lru_cache(maxsize=None)
def converted_outputs(name):
  fx = load_fixture(name)
  model = build_tiny(name)
  common.assign_params(model, hf_vision.convert_hf_state_dict(fx['state_dict'], model))
  (x,) = fx['inputs'].values()
  out, latents = _outputs_and_latents(model, x)
  return model, np.asarray(out), np.asarray(latents)


def max_diff(a, b):
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(np.asarray(a, np.float64) - b)))


def reference_output(fx):
  """HF's logits, or flow for the flow model."""
  return fx['outputs']['flow' if 'flow' in fx['outputs'] else 'logits']


@pytest.mark.parametrize('name', NAMES)
def test_outputs_and_latents_match_hf(name):
  fx = load_fixture(name)
  model, out, latents = converted_outputs(name)
  expected = reference_output(fx)
  assert np.abs(expected).max() > 1e-3  # a zero output would match anything
  print(f'{name}: max |ours - HF| = {max_diff(out, expected):.3g} (output, max |HF| '
        f'{np.abs(expected).max():.3g}), {max_diff(latents, fx["outputs"]["latents"]):.3g} '
        f'(latents)')
  assert_matches_reference(out, expected, f'{name} output')
  assert_matches_reference(latents, fx['outputs']['latents'], f'{name} latents')
  if name == 'optical_flow_perceiver':
    # Flow is divided by 100 at the end (the comparison above is relative to its scale).
    assert model.decoder.rescale_factor == 100.0 and out.shape == (2, 6, 8, 2)


@pytest.mark.parametrize('name', NAMES)
def test_output_check_catches_a_wrong_activation_or_query_residual(name):
  # The check of test_outputs_and_latents_match_hf on the output alone, on models with a
  # deliberate error (MODEL_ERRORS; the decoder ones leave the latents untouched).
  fx = load_fixture(name)
  (x,) = fx['inputs'].values()
  outputs = outputs_with_model_errors(converted_outputs(name)[0], x)
  for error, out in outputs.items():
    with pytest.raises(AssertionError, match='max [|]ours - reference[|]'):
      assert_matches_reference(out, reference_output(fx), f'{name} output ({error})')


def test_flow_decoded_in_chunks_matches_hf():
  fx = load_fixture('optical_flow_perceiver')
  model = nnx.clone(converted_outputs('optical_flow_perceiver')[0])
  model.decoder.decoder.query_chunk_size = 20  # 48 pixels: chunks of 20, 20 and 8
  flow = nnx.jit(lambda m, x: m(x))(model, fx['inputs']['frames'])
  assert_matches_reference(flow, fx['outputs']['flow'], 'chunked flow')


def test_conv_model_uses_running_statistics_in_eval_only():
  fx = load_fixture('vision_perceiver_conv')
  model, out, _ = converted_outputs('vision_perceiver_conv')
  train = nnx.jit(lambda m, x: m(x, deterministic=False))
  train_out = train(nnx.clone(model), fx['inputs']['images'])
  # Batch statistics give other logits than HF's eval-mode ones.
  assert max_diff(train_out, fx['outputs']['logits']) > 1e-3


@pytest.mark.parametrize('name', NAMES)
def test_full_size_parameter_count_matches_hf(name):
  module = released(name)
  cfg = module.get_config().model
  model = nnx.eval_shape(lambda: build_model(cfg, input_shape=module.INPUT_SHAPE,
                                             rngs=nnx.Rngs(params=0)))
  count = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert count == load_fixture(name)['meta']['num_params_full']


# --------------------------------------------------------------- Haiku parameter names

_LAYER_NAMES = {  # HF PerceiverLayer -> DeepMind attention block (cross, self)
    'attention.self.layernorm1': ('layer_norm', 'layer_norm'),
    'attention.self.layernorm2': ('layer_norm_1', None),
    'layernorm': ('layer_norm_2', 'layer_norm_1'),
    'attention.self.query': ('attention/linear',) * 2,
    'attention.self.key': ('attention/linear_1',) * 2,
    'attention.self.value': ('attention/linear_2',) * 2,
    'attention.output.dense': ('attention/linear_3',) * 2,
    'mlp.dense1': ('mlp/linear',) * 2,
    'mlp.dense2': ('mlp/linear_1',) * 2,
}


def _haiku_leaf(module, param, value, *, norm):
  if norm:
    return {f'{module}/{"scale" if param == "weight" else "offset"}': value}
  if param == 'weight':
    return {f'{module}/w': value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)}
  return {f'{module}/b': value}


def hf_to_haiku(state_dict, decoder):
  """The inverse of HF's convert_perceiver_haiku_to_pytorch.py renaming, for these models."""
  out = {}
  bn = 'image_preprocessor/~/conv2_d_downsample/~/batchnorm'
  for key, value in state_dict.items():
    key = key.removeprefix('perceiver.')
    if key == 'embeddings.latents':
      out['perceiver_encoder/~/trainable_position_encoding/pos_embs'] = value
      continue
    if key == 'decoder.decoder.output_position_encodings.position_embeddings':
      out[f'{decoder}/~/trainable_position_encoding/pos_embs'] = value
      continue
    if key.startswith('input_preprocessor.convnet.batchnorm.'):
      param = key.rsplit('.', 1)[1]
      shaped = np.reshape(value, (1, 1, 1, -1))
      if param in ('weight', 'bias'):
        out.update(_haiku_leaf(bn, param, shaped, norm=True))
      elif param in ('running_mean', 'running_var'):
        ema = f'{bn}/~/{"mean" if param == "running_mean" else "var"}_ema'
        out.update({f'{ema}/average': shaped, f'{ema}/hidden': shaped,
                    f'{ema}/counter': np.array(7)})
      continue
    module, param = key.rsplit('.', 1)
    prep = {'input_preprocessor.convnet_1x1': 'image_preprocessor/~/conv2_d',
            'input_preprocessor.convnet.conv': 'image_preprocessor/~/conv2_d_downsample/~/conv',
            'input_preprocessor.conv_after_patches': 'image_preprocessor/patches_linear',
            'input_preprocessor.positions_projection':
                'image_preprocessor/~_build_network_inputs/position_encoding_projector/linear'}
    if key == 'input_preprocessor.position_embeddings.position_embeddings':
      out['image_preprocessor/~_build_network_inputs/trainable_position_encoding/pos_embs'] = (
          value)
    elif module in prep:
      out.update(_haiku_leaf(prep[module], param, value, norm=False))
    elif module == 'decoder.decoder.final_layer':
      out.update(_haiku_leaf(f'{decoder}/output', param, value, norm=False))
    else:
      for hf_prefix, hk_prefix, cross in (
          ('encoder.cross_attention.', 'perceiver_encoder/~/cross_attention', True),
          ('decoder.decoder.decoding_cross_attention.', f'{decoder}/cross_attention', True),
          ('encoder.self_attends.', 'perceiver_encoder/~/self_attention', False)):
        if module.startswith(hf_prefix):
          rest = module[len(hf_prefix):]
          if not cross:
            index, rest = rest.split('.', 1)
            hk_prefix += '' if index == '0' else f'_{index}'
          hk_module = _LAYER_NAMES[rest][0 if cross else 1]
          out.update(_haiku_leaf(f'{hk_prefix}/{hk_module}', param, value,
                                 norm=hk_module.startswith('layer_norm')))
          break
      else:
        raise AssertionError(f'unmapped HF key {key}')
  return out


@pytest.mark.parametrize('name', NAMES)
def test_haiku_names_give_the_same_weights_as_hf(name):
  fx = load_fixture(name)
  model = build_tiny(name)
  from_hf = hf_vision.convert_hf_state_dict(fx['state_dict'], model)
  decoder = ('flow_decoder' if name == 'optical_flow_perceiver'
             else 'classification_decoder') + '/~/basic_decoder'
  from_haiku = hf_vision.convert_haiku_params(hf_to_haiku(fx['state_dict'], decoder), model)
  assert sorted(from_haiku) == sorted(from_hf)
  for key, value in from_hf.items():
    np.testing.assert_array_equal(np.reshape(from_haiku[key], np.shape(value)), value,
                                  err_msg=key)
    assert np.shape(from_haiku[key]) == np.shape(value), key


def test_checkpoint_of_another_model_is_refused():
  fourier = build_tiny('vision_perceiver_fourier')
  learned_weights = load_fixture('vision_perceiver_learned')['state_dict']
  with pytest.raises(ValueError, match='entries this model does not use'):
    hf_vision.convert_hf_state_dict(learned_weights, fourier)
  with pytest.raises(ValueError, match='has no entry'):
    hf_vision.convert_hf_state_dict(learned_weights, build_tiny('vision_perceiver_conv'))


def test_exact_gelu_option_reproduces_hf_released_activation():
  # HF's released configs use the exact GELU; DeepMind's (and our default) the tanh form.
  name = 'vision_perceiver_learned'
  fx = load_fixture(name)
  cfg, shape = tiny_model_config(name), tuple(fx['meta']['input_shape'])
  cfg.mlp_activation = 'gelu'
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: build_model(cfg, input_shape=shape, rngs=nnx.Rngs(0)))
  common.assign_params(model, hf_vision.convert_hf_state_dict(fx['state_dict'], model))
  out = np.asarray(nnx.jit(lambda m, x: m(x))(model, fx['inputs']['images']))
  exact, tanh = fx['outputs']['logits_exact_gelu'], fx['outputs']['logits']
  assert max_diff(exact, tanh) > 5e-6  # the fixture tells the two activations apart ...
  assert_matches_reference(out, exact, 'exact-GELU logits')  # ... and the option picks it
