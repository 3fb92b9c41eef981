"""Vision family: HF PerceiverForImageClassificationLearned / Fourier / ConvProcessing and
PerceiverForOpticalFlow state dicts, and DeepMind's Haiku parameters of the same models
(imagenet_*.pystate, optical_flow_checkpoint.pystate), -> our parameter paths.

Our model is an ImagePreprocessor + PerceiverEncoder + ClassificationDecoder or
FlowDecoder (configs/pretrained/vision_perceiver_*.py, optical_flow_perceiver.py).
BatchNorm running statistics (the conv model) are converted too; HF's
num_batches_tracked and Haiku's EMA `hidden`/`counter` are not needed for inference and
are read and dropped.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from perceiver_jax.convert import common
from perceiver_jax.model import decoders as dec
from perceiver_jax.model import position_encoding as pe
from perceiver_jax.model.image_processors import ImagePreprocessor

Array = np.ndarray


def _check_model(model) -> None:
  if not isinstance(model.preprocessor, ImagePreprocessor):
    raise ValueError('The vision converter needs a model with an image preprocessor '
                     "(config.model.preprocessor.name='image').")
  if not isinstance(model.decoder, (dec.ClassificationDecoder, dec.FlowDecoder)):
    raise ValueError("The vision converter needs decoder 'classification' or 'flow'; got "
                     f'{type(model.decoder).__name__}.')


def _pos_enc_parts(prep: ImagePreprocessor):
  """(trainable table or None, projector linear or None) of the input position encoding."""
  enc, projector = prep.pos_enc, None
  if isinstance(enc, pe.PositionEncodingProjector):
    enc, projector = enc.base, enc
  trainable = enc if isinstance(enc, pe.TrainablePositionEncoding) else None
  return trainable, projector


# ------------------------------------------------------------------------------ HF


def _hf_preprocessor(r: common.StateDictReader, prep: ImagePreprocessor, out: dict):
  hf = 'perceiver.input_preprocessor'
  if prep.convnet is not None:
    if len(prep.convnet.layers) != 1:
      raise ValueError(f'HF checkpoints hold one conv+max-pool layer; this model has '
                       f'{len(prep.convnet.layers)} (spatial_downsample must be 4).')
    ours = 'preprocessor/convnet/layers/0'
    out[f'{ours}/conv/kernel'] = common.torch_conv(r.take(f'{hf}.convnet.conv.weight'))
    if prep.convnet.layers[0].batchnorm is not None:
      bn = f'{hf}.convnet.batchnorm'
      out[f'{ours}/batchnorm/scale'] = r.take(f'{bn}.weight')
      out[f'{ours}/batchnorm/bias'] = r.take(f'{bn}.bias')
      out[f'{ours}/batchnorm/mean'] = r.take(f'{bn}.running_mean')
      out[f'{ours}/batchnorm/var'] = r.take(f'{bn}.running_var')
      if f'{bn}.num_batches_tracked' in r:
        r.take(f'{bn}.num_batches_tracked')
  if prep.convnet_1x1 is not None:
    out['preprocessor/convnet_1x1/kernel'] = common.torch_conv(
        r.take(f'{hf}.convnet_1x1.weight'))
    out['preprocessor/convnet_1x1/bias'] = r.take(f'{hf}.convnet_1x1.bias')
  if prep.patches_linear is not None:
    common.hf_linear(r, f'{hf}.conv_after_patches', 'preprocessor/patches_linear', out)
  trainable, projector = _pos_enc_parts(prep)
  if trainable is not None:
    path = 'preprocessor/pos_enc/base' if projector is not None else 'preprocessor/pos_enc'
    out[f'{path}/pos_embs'] = r.take(f'{hf}.position_embeddings.position_embeddings')
  if projector is not None:
    common.hf_linear(r, f'{hf}.positions_projection', 'preprocessor/pos_enc/linear', out)


def convert_hf_state_dict(state_dict: Mapping[str, Any], model) -> dict[str, Array]:
  """HF vision/flow state dict ('perceiver.…' keys) -> {our path: array} for
  `common.assign_params(model, ...)`. Raises ValueError on missing or unused entries."""
  _check_model(model)
  r = common.StateDictReader(state_dict, 'HF checkpoint')
  out: dict[str, Array] = {}
  _hf_preprocessor(r, model.preprocessor, out)
  common.hf_perceiver_encoder(r, 'perceiver', 'encoder', out,
                              num_self_attends=len(model.encoder.self_attends))
  hf, ours = 'perceiver.decoder.decoder', 'decoder/decoder'
  if isinstance(model.decoder, dec.ClassificationDecoder):
    out[f'{ours}/output_pos_enc/pos_embs'] = r.take(
        f'{hf}.output_position_encodings.position_embeddings')
  common.hf_perceiver_layer(r, f'{hf}.decoding_cross_attention', f'{ours}/cross_attend',
                            out, cross=True)
  common.hf_linear(r, f'{hf}.final_layer', f'{ours}/output', out)
  r.check_all_used()
  return out


# --------------------------------------------------------------------------- Haiku

# Haiku module paths, as in DeepMind's colabs and HF's conversion script.
HAIKU_PREPROCESSOR = 'image_preprocessor'
HAIKU_ENCODER = 'perceiver_encoder'
HAIKU_DECODERS = {dec.ClassificationDecoder: 'classification_decoder/~/basic_decoder',
                  dec.FlowDecoder: 'flow_decoder/~/basic_decoder'}


def _suffix(i: int) -> str:
  return '' if i == 0 else f'_{i}'


def _haiku_preprocessor(r: common.StateDictReader, prep: ImagePreprocessor, out: dict):
  hk = HAIKU_PREPROCESSOR
  if prep.convnet is not None:
    for i, layer in enumerate(prep.convnet.layers):
      ds, ours = f'{hk}/~/conv2_d_downsample/~', f'preprocessor/convnet/layers/{i}'
      out[f'{ours}/conv/kernel'] = r.take(f'{ds}/conv{_suffix(i)}/w')
      if layer.batchnorm is not None:
        bn = f'{ds}/batchnorm{_suffix(i)}'
        # Haiku keeps BatchNorm parameters and statistics as [1, 1, 1, C].
        out[f'{ours}/batchnorm/scale'] = r.take(f'{bn}/scale').reshape(-1)
        out[f'{ours}/batchnorm/bias'] = r.take(f'{bn}/offset').reshape(-1)
        for ema, ours_name in (('mean_ema', 'mean'), ('var_ema', 'var')):
          out[f'{ours}/batchnorm/{ours_name}'] = r.take(f'{bn}/~/{ema}/average').reshape(-1)
          for unused in ('hidden', 'counter'):
            if f'{bn}/~/{ema}/{unused}' in r:
              r.take(f'{bn}/~/{ema}/{unused}')
  if prep.convnet_1x1 is not None:
    out['preprocessor/convnet_1x1/kernel'] = r.take(f'{hk}/~/conv2_d/w')
    out['preprocessor/convnet_1x1/bias'] = r.take(f'{hk}/~/conv2_d/b')
  if prep.patches_linear is not None:
    common.haiku_linear(r, f'{hk}/patches_linear', 'preprocessor/patches_linear', out)
  inputs = f'{hk}/~_build_network_inputs'
  trainable, projector = _pos_enc_parts(prep)
  if trainable is not None:
    path = 'preprocessor/pos_enc/base' if projector is not None else 'preprocessor/pos_enc'
    out[f'{path}/pos_embs'] = r.take(f'{inputs}/trainable_position_encoding/pos_embs')
  if projector is not None:
    common.haiku_linear(r, f'{inputs}/position_encoding_projector/linear',
                        'preprocessor/pos_enc/linear', out)
  for i in range(len(prep.extra_pos_mlp)):
    common.haiku_linear(r, f'{inputs}/linear{_suffix(i)}',
                        f'preprocessor/extra_pos_mlp/{i}', out)


def convert_haiku_params(params: Mapping[str, Any], model) -> dict[str, Array]:
  """DeepMind Haiku parameters (and BatchNorm state), flattened to 'module/path/param'
  keys as `common.load_checkpoint_file` returns them -> {our path: array}."""
  _check_model(model)
  r = common.StateDictReader(params, 'Haiku checkpoint')
  out: dict[str, Array] = {}
  _haiku_preprocessor(r, model.preprocessor, out)
  common.haiku_perceiver_encoder(r, HAIKU_ENCODER, 'encoder', out,
                                 num_self_attends=len(model.encoder.self_attends))
  hk, ours = HAIKU_DECODERS[type(model.decoder)], 'decoder/decoder'
  if isinstance(model.decoder, dec.ClassificationDecoder):
    out[f'{ours}/output_pos_enc/pos_embs'] = r.take(
        f'{hk}/~/trainable_position_encoding/pos_embs')
  common.haiku_attention_block(r, f'{hk}/cross_attention', f'{ours}/cross_attend', out,
                               cross=True)
  common.haiku_linear(r, f'{hk}/output', f'{ours}/output', out)
  r.check_all_used()
  return out
