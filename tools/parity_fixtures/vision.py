"""Parity fixtures of the vision models at tiny dims: the three ImageNet classifiers
(HF PerceiverForImageClassificationLearned / Fourier / ConvProcessing, deepmind/
vision-perceiver-*) and the optical-flow model (PerceiverForOpticalFlow,
deepmind/optical-flow-perceiver).

HF's classes hardcode the widths of their image preprocessors (256-channel conv1x1 and
positions, 64 Fourier bands, 64 conv/patch channels), which would make every input
hundreds of channels wide and each fixture megabytes. The tiny models are built by the
real classes with those constructor arguments of PerceiverImagePreprocessor rewritten
(`_PREPROCESSOR_OVERRIDES`); every other line of HF's code runs as released. Every
parameter gets random noise after HF's init, and the conv model's BatchNorm running
statistics are set to non-trivial values.

Images are stored channels-last as our models take them ([batch, H, W, 3]; HF gets
[batch, 3, H, W]). The flow model's input is stored as two raw frames [batch, 2, H, W, 3];
HF gets the 3x3 patches around every pixel, made here with torch ([batch, 2, 27, H, W],
DeepMind's patches_for_flow layout), so the fixture also checks our patch extraction.

Each fixture's meta holds `model_overrides` (dotted config.model fields, applied on top of
configs/pretrained/<name>.py to get the tiny model) and `input_shape`.

HF's config uses the exact (erf) GELU; the tiny models use hidden_act='gelu_new', the
tanh approximation that DeepMind's models (jax.nn.gelu) and ours use. The classifiers
also record `logits_exact_gelu`: the same weights under hidden_act='gelu', which our
model reproduces with model.mlp_activation='gelu'.
"""

from __future__ import annotations

import contextlib

import numpy as np

from tools.parity_fixtures import count_params_meta, perturb_parameters, state_dict_numpy

SEED = 0
BATCH = 2
TINY = dict(num_latents=8, d_latents=16, num_blocks=2, num_self_attends_per_block=2,
            num_self_attention_heads=2, num_cross_attention_heads=1, num_labels=5,
            hidden_act='gelu_new', attention_probs_dropout_prob=0.0)
TINY_OURS = {'num_classes': 5, 'encoder.num_latents': 8, 'encoder.num_latent_channels': 16,
             'encoder.num_blocks': 2, 'encoder.num_self_attends_per_block': 2,
             'encoder.num_self_attend_heads': 2, 'encoder.num_cross_attend_heads': 1}
TINY_FLOW = dict(TINY, num_blocks=1, train_size=[6, 8], num_labels=2)

# Released configs (HF's convert_perceiver_haiku_to_pytorch.py; PerceiverConfig defaults
# otherwise, e.g. train_size (368, 496) for flow).
FULL_IMAGENET = dict(num_latents=512, d_latents=1024, d_model=512, num_blocks=8,
                     num_self_attends_per_block=6, num_cross_attention_heads=1,
                     num_self_attention_heads=8, qk_channels=None, v_channels=None,
                     num_labels=1000)
FULL_FLOW = dict(num_latents=2048, d_latents=512, d_model=322, num_blocks=1,
                 num_self_attends_per_block=24, num_self_attention_heads=16,
                 num_cross_attention_heads=1)

# Rewritten PerceiverImagePreprocessor arguments of each tiny model (dicts are merged
# into HF's kwargs dicts).
_PREPROCESSOR_OVERRIDES = {
    'vision_perceiver_learned': dict(
        out_channels=8, project_pos_dim=6,
        trainable_position_encoding_kwargs=dict(num_channels=8, index_dims=8 * 6)),
    'vision_perceiver_fourier': dict(
        fourier_position_encoding_kwargs=dict(num_bands=3, max_resolution=(10, 7))),
    'vision_perceiver_conv': dict(
        out_channels=8, fourier_position_encoding_kwargs=dict(num_bands=3,
                                                              max_resolution=(9, 8))),
    'optical_flow_perceiver': dict(
        out_channels=8, fourier_position_encoding_kwargs=dict(num_bands=3)),
}


@contextlib.contextmanager
def _image_preprocessor_overrides(overrides: dict):
  """HF model classes construct PerceiverImagePreprocessor(...) with these arguments
  rewritten while the context is open."""
  from transformers.models.perceiver import modeling_perceiver as mp
  original = mp.PerceiverImagePreprocessor

  class TinyImagePreprocessor(original):

    def __init__(self, config, **kwargs):
      for key, value in overrides.items():
        kwargs[key] = {**kwargs.get(key, {}), **value} if isinstance(value, dict) else value
      super().__init__(config, **kwargs)

  mp.PerceiverImagePreprocessor = TinyImagePreprocessor
  try:
    yield
  finally:
    mp.PerceiverImagePreprocessor = original


def _build_tiny(name: str, cls, config):
  import torch
  torch.manual_seed(SEED)
  with _image_preprocessor_overrides(_PREPROCESSOR_OVERRIDES[name]):
    model = cls(config)
  model.eval()
  perturb_parameters(model, seed=SEED + 1)
  return model


def _run(model, inputs) -> dict:
  """Logits and the encoder's final latents (PerceiverModel returns both)."""
  import torch
  with torch.no_grad():
    out = model.perceiver(inputs=inputs, return_dict=True)
  return {'logits': out.logits.numpy(), 'latents': out.last_hidden_state.numpy()}


def _images(shape) -> np.ndarray:
  return np.random.default_rng(SEED).standard_normal((BATCH,) + shape).astype(np.float32)


def _classifier_fixture(name: str, cls, image_shape, full_config, model_overrides,
                        config_kwargs=None) -> dict:
  import torch
  from transformers import PerceiverConfig
  config = PerceiverConfig(**TINY, **(config_kwargs or {}))
  model = _build_tiny(name, cls, config)
  if name == 'vision_perceiver_conv':
    bn = model.perceiver.input_preprocessor.convnet.batchnorm
    gen = torch.Generator().manual_seed(SEED + 2)
    with torch.no_grad():
      bn.running_mean.copy_(0.5 * torch.randn(bn.running_mean.shape, generator=gen))
      bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=gen))
  images = _images(image_shape)
  outputs = _run(model, torch.from_numpy(images).permute(0, 3, 1, 2))
  # The same weights under HF's released activation (exact GELU), for mlp_activation='gelu'.
  exact_config = PerceiverConfig(**{**TINY, **(config_kwargs or {}), 'hidden_act': 'gelu'})
  exact = _build_tiny(name, cls, exact_config)
  exact.load_state_dict(model.state_dict())
  outputs['logits_exact_gelu'] = _run(exact, torch.from_numpy(images).permute(0, 3, 1, 2))[
      'logits']
  return {
      'hf_config': dict(TINY, **(config_kwargs or {}),
                        image_preprocessor_overrides=_PREPROCESSOR_OVERRIDES[name]),
      'state_dict': state_dict_numpy(model),
      'inputs': {'images': images},
      'outputs': outputs,
      'num_params_full': count_params_meta(lambda: cls(PerceiverConfig(**full_config))),
      'meta': {'model_overrides': {**TINY_OURS, **model_overrides},
               'input_shape': list(image_shape)},
  }


def vision_perceiver_learned() -> dict:
  from transformers import PerceiverForImageClassificationLearned as cls
  # HF decodes with the query residual (DeepMind's colab without it).
  return _classifier_fixture(
      'vision_perceiver_learned', cls, (8, 6, 3),
      dict(FULL_IMAGENET, image_size=224),
      {'preprocessor.num_channels': 8, 'preprocessor.position_encoding.num_channels': 8,
       'preprocessor.position_encoding.project_pos_dim': 6,
       'decoder.num_query_channels': 16, 'decoder.use_query_residual': True})


def vision_perceiver_fourier() -> dict:
  from transformers import PerceiverForImageClassificationFourier as cls
  return _classifier_fixture(
      'vision_perceiver_fourier', cls, (8, 6, 3), dict(FULL_IMAGENET, d_model=261),
      {'preprocessor.position_encoding.num_bands': 3,
       'preprocessor.position_encoding.max_resolution': [10, 7],
       'decoder.num_query_channels': 16})


def vision_perceiver_conv() -> dict:
  from transformers import PerceiverForImageClassificationConvProcessing as cls
  # 32x28 -> conv 16x14 -> HF's unpadded max-pool 7x6.
  return _classifier_fixture(
      'vision_perceiver_conv', cls, (32, 28, 3), dict(FULL_IMAGENET, d_model=322),
      {'preprocessor.num_channels': 8, 'preprocessor.conv_padding': 'transformers',
       'preprocessor.position_encoding.num_bands': 3,
       'preprocessor.position_encoding.max_resolution': [9, 8],
       'decoder.num_query_channels': 16})


def torch_patches_for_flow(frames):
  """[batch, T, H, W, C] torch -> HF's flow input [batch, T, 9C, H, W]: the zero-padded
  3x3 neighbourhood of each pixel, ordered (row offset, col offset, C)."""
  import torch.nn.functional as F
  b, t, h, w, c = frames.shape
  x = frames.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w)
  cols = F.unfold(F.pad(x, [1, 1, 1, 1]), kernel_size=3)  # [b*t, c*3*3, h*w], c-major
  cols = cols.reshape(b * t, c, 9, h, w).permute(0, 2, 1, 3, 4)  # -> (offset, c)
  return cols.reshape(b, t, 9 * c, h, w)


def optical_flow_perceiver() -> dict:
  import torch
  from transformers import PerceiverConfig, PerceiverForOpticalFlow as cls
  name = 'optical_flow_perceiver'
  model = _build_tiny(name, cls, PerceiverConfig(**TINY_FLOW))
  height, width = TINY_FLOW['train_size']
  frames = _images((2, height, width, 3))
  outputs = _run(model, torch_patches_for_flow(torch.from_numpy(frames)))
  overrides = {**TINY_OURS, 'num_classes': 2, 'encoder.num_blocks': 1,
               'preprocessor.num_channels': 8,
               'preprocessor.position_encoding.num_bands': 3,
               'preprocessor.position_encoding.max_resolution': [height, width],
               'postprocessor.flow_scale': 1.0}
  return {
      'hf_config': dict(TINY_FLOW, image_preprocessor_overrides=_PREPROCESSOR_OVERRIDES[name]),
      'state_dict': state_dict_numpy(model),
      'inputs': {'frames': frames},
      'outputs': {'flow': outputs['logits'], 'latents': outputs['latents']},
      'num_params_full': count_params_meta(lambda: cls(PerceiverConfig(**FULL_FLOW))),
      'meta': {'model_overrides': overrides, 'input_shape': [2, height, width, 3]},
  }


FIXTURES = {
    'vision_perceiver_learned': vision_perceiver_learned,
    'vision_perceiver_fourier': vision_perceiver_fourier,
    'vision_perceiver_conv': vision_perceiver_conv,
    'optical_flow_perceiver': optical_flow_perceiver,
}
