"""Parity fixture of the multimodal autoencoder (HF PerceiverForMultimodalAutoencoding,
deepmind/multimodal-perceiver) at tiny dims.

Video [2, 4, 16, 16, 3] (stored channels-last; HF takes [batch, T, C, H, W]), 192 audio
samples in patches of 8, 5 label classes. HF hardcodes the Fourier bands of the audio
(192) and video (32) encodings, which would make every query 400 channels wide and the
fixture megabytes; the tiny model is built with 8 and 4 bands instead by rewriting those
two numbers while the class is constructed (Fourier features have no parameters, so
nothing else changes). Every parameter gets random noise after HF's init.

The decoder is queried at fixed subsampled points (HF's model only decodes that way):
40 of the 4*16*16 video pixels and 10 of the 24 audio patches; the label has one query.
Outputs are recorded twice: with the released mask_probs (label masked with
probability 1, i.e. always replaced by its mask token) and with every mask_prob 0, so
the label input is used too. Both are deterministic.

HF's config uses the exact (erf) GELU; the tiny model uses hidden_act='gelu_new', the
tanh approximation that DeepMind's models (jax.nn.gelu) and ours use.
"""

from __future__ import annotations

import contextlib

import numpy as np

from tools.parity_fixtures import count_params_meta, perturb_parameters, state_dict_numpy

SEED = 0
BATCH = 2
TINY = dict(
    num_latents=8, d_latents=16, num_blocks=1, num_self_attends_per_block=2,
    num_self_attention_heads=2, num_cross_attention_heads=1, num_labels=5,
    num_frames=4, image_size=8, audio_samples_per_frame=48, samples_per_patch=8,
    output_shape=[1, 4, 16, 16], output_num_channels=12, hidden_act='gelu_new',
    attention_probs_dropout_prob=0.0)
LABEL_QUERY_CHANNELS = 12  # config._label_trainable_num_channels (1024 when released)
TINY_BANDS = {192: 8, 32: 4}  # HF's hardcoded num_bands -> the tiny model's
VIDEO_SHAPE = (4, 16, 16, 3)
AUDIO_SHAPE = (4 * 48, 1)
NUM_IMAGE_POINTS, NUM_AUDIO_POINTS = 40, 10

# deepmind/multimodal-perceiver (HF's convert_perceiver_haiku_to_pytorch.py; the rest
# are PerceiverConfig defaults: 16 frames, 1920 samples per frame, 16 per patch, output
# (16, 224, 224), 512 output channels, label queries 1024 wide).
FULL = dict(num_latents=28 * 28, d_latents=512, d_model=704, num_blocks=1,
            num_self_attends_per_block=8, num_self_attention_heads=8,
            num_cross_attention_heads=1, num_labels=700)


@contextlib.contextmanager
def _fourier_bands(mapping):
  """Rewrites num_bands of the Fourier encodings HF's class constructs."""
  from transformers.models.perceiver import modeling_perceiver as mp
  original = mp.build_position_encoding

  def patched(*args, fourier_position_encoding_kwargs=None, **kwargs):
    if fourier_position_encoding_kwargs:
      kw = dict(fourier_position_encoding_kwargs)
      kw['num_bands'] = mapping.get(kw['num_bands'], kw['num_bands'])
      fourier_position_encoding_kwargs = kw
    return original(*args, fourier_position_encoding_kwargs=fourier_position_encoding_kwargs,
                    **kwargs)

  mp.build_position_encoding = patched
  try:
    yield
  finally:
    mp.build_position_encoding = original


def _run(model, inputs, subsampling) -> dict:
  """Per-modality outputs and the final latents (PerceiverModel returns both; the
  autoencoding wrapper only the former)."""
  import torch
  with torch.no_grad():
    out = model.perceiver(inputs=inputs, subsampled_output_points=subsampling,
                          return_dict=True)
  result = {k: v.numpy() for k, v in out.logits.items()}
  result['latents'] = out.last_hidden_state.numpy()
  return result


def multimodal_perceiver() -> dict:
  import torch
  from transformers import PerceiverConfig, PerceiverForMultimodalAutoencoding

  torch.manual_seed(SEED)
  config = PerceiverConfig(**TINY)
  config._label_trainable_num_channels = LABEL_QUERY_CHANNELS
  with _fourier_bands(TINY_BANDS):
    model = PerceiverForMultimodalAutoencoding(config)
  model.eval()
  perturb_parameters(model, seed=SEED + 1)

  rng = np.random.default_rng(SEED)
  video = rng.standard_normal((BATCH,) + VIDEO_SHAPE).astype(np.float32)
  audio = rng.standard_normal((BATCH,) + AUDIO_SHAPE).astype(np.float32)
  label = rng.standard_normal((BATCH, TINY['num_labels'])).astype(np.float32)
  image_points = np.sort(rng.choice(int(np.prod(VIDEO_SHAPE[:3])), NUM_IMAGE_POINTS,
                                    replace=False)).astype(np.int64)
  num_patches = AUDIO_SHAPE[0] // TINY['samples_per_patch']
  audio_points = np.sort(rng.choice(num_patches, NUM_AUDIO_POINTS,
                                    replace=False)).astype(np.int64)

  hf_inputs = {'image': torch.from_numpy(video).permute(0, 1, 4, 2, 3),
               'audio': torch.from_numpy(audio), 'label': torch.from_numpy(label)}
  subsampling = {'image': torch.from_numpy(image_points),
                 'audio': torch.from_numpy(audio_points), 'label': None}
  outputs = _run(model, hf_inputs, subsampling)
  released_mask_probs = dict(model.perceiver.input_preprocessor.mask_probs)
  model.perceiver.input_preprocessor.mask_probs = {k: 0.0 for k in released_mask_probs}
  unmasked = _run(model, hf_inputs, subsampling)
  outputs.update({f'unmasked_{k}': v for k, v in unmasked.items()})

  hf_config = {k: v for k, v in TINY.items()}
  hf_config.update(label_trainable_num_channels=LABEL_QUERY_CHANNELS,
                   fourier_bands={'audio': TINY_BANDS[192], 'image': TINY_BANDS[32]},
                   mask_probs=released_mask_probs)

  def build_full():
    full = PerceiverConfig(**FULL)
    return PerceiverForMultimodalAutoencoding(full)

  return {
      'hf_config': hf_config,
      'state_dict': state_dict_numpy(model),
      'inputs': {'image': video, 'audio': audio, 'label': label,
                 'subsampled_image': image_points, 'subsampled_audio': audio_points},
      'outputs': outputs,
      'num_params_full': count_params_meta(build_full),
  }


FIXTURES = {'multimodal_perceiver': multimodal_perceiver}
