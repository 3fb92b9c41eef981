"""Weights of the multimodal autoencoder (deepmind/multimodal-perceiver) -> our model.

`convert_hf_state_dict`: a Hugging Face PerceiverForMultimodalAutoencoding state dict
(keys 'perceiver.…').
`convert_haiku_params`: DeepMind's released Haiku parameters (video_autoencoding
colab; modules 'encoder', 'multimodal_preprocessor', 'multimodal_decoder',
'classification_decoder', '<kind>_postprocessor'). Its module names are those HF's
convert_perceiver_haiku_to_pytorch.py renames; the HF path is tested against a fixture.

Both return {our parameter path: array} for `common.assign_params(model, ...)`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from perceiver_jax.convert import common
from perceiver_jax.convert.common import StateDictReader
from perceiver_jax.model import multimodal as mm
from perceiver_jax.model import position_encoding as pe
from perceiver_jax.model import postprocessors as post

Array = np.ndarray


def _check_model(model) -> None:
  if not (isinstance(model.preprocessor, mm.MultimodalPreprocessor)
          and isinstance(model.decoder, mm.MultimodalDecoder)
          and isinstance(model.postprocessor, post.MultimodalPostprocessor)):
    raise ValueError('hf_multimodal converts into a multimodal model (preprocessor, decoder '
                     'and postprocessor named multimodal); build one from '
                     'configs/pretrained/multimodal_perceiver.py.')


def _hf_position_encoding(reader: StateDictReader, hf: str, ours: str, enc, out: dict,
                          table: str) -> None:
  """HF position_embeddings / positions_projection at `hf` -> our encoding at `ours`."""
  if isinstance(enc, pe.PositionEncodingProjector):
    common.hf_linear(reader, f'{hf}.positions_projection', f'{ours}/linear', out)
    enc, ours = enc.base, f'{ours}/base'
  if isinstance(enc, pe.TrainablePositionEncoding):
    out[f'{ours}/pos_embs'] = reader.take(f'{hf}.{table}.position_embeddings')


def _hf_preprocessor(reader, hf: str, ours: str, prep, out: dict) -> None:
  """The learned parts a modality preprocessor may have (the released model's have none)."""
  if getattr(prep, 'pos_enc', None) is not None:
    _hf_position_encoding(reader, hf, f'{ours}/pos_enc', prep.pos_enc, out,
                          'position_embeddings')
  if getattr(prep, 'patches_linear', None) is not None:
    common.hf_linear(reader, f'{hf}.conv_after_patches', f'{ours}/patches_linear', out)


def convert_hf_state_dict(state_dict: Mapping[str, Array], model) -> dict[str, Array]:
  """HF PerceiverForMultimodalAutoencoding state dict -> {our path: array}."""
  _check_model(model)
  reader = StateDictReader(state_dict, 'HF multimodal checkpoint')
  hf = lambda name: f'perceiver.{name}'
  out: dict[str, Array] = {}
  common.hf_perceiver_encoder(reader, 'perceiver', 'encoder', out,
                              num_self_attends=len(model.encoder.self_attends))

  prep = model.preprocessor
  for m in prep.modalities.keys():
    out[f'preprocessor/padding/{m}'] = reader.take(hf(f'input_preprocessor.padding.{m}'))
    _hf_preprocessor(reader, hf(f'input_preprocessor.modalities.{m}'),
                     f'preprocessor/modalities/{m}', prep.modalities[m], out)
  for m in prep.mask_token.keys():
    out[f'preprocessor/mask_token/{m}'] = reader.take(hf(f'input_preprocessor.mask.{m}'))

  decoder = model.decoder
  for m, queries in decoder.modalities.items():
    out[f'decoder/padding/{m}'] = reader.take(hf(f'decoder.padding.{m}'))
    # HF's ClassificationDecoder and video decoder wrap a BasicDecoder (.decoder).
    inner = '.decoder' if queries.kind in ('classification', 'video') else ''
    _hf_position_encoding(reader, hf(f'decoder.modalities.{m}{inner}'),
                          f'decoder/modalities/{m}/output_pos_enc', queries.output_pos_enc,
                          out, 'output_position_encodings')
  common.hf_perceiver_layer(reader, hf('decoder.decoder.decoding_cross_attention'),
                            'decoder/decoder/cross_attend', out, cross=True)
  common.hf_linear(reader, hf('decoder.decoder.final_layer'), 'decoder/decoder/output', out)

  for m in model.postprocessor.modalities.keys():
    common.hf_linear(reader, hf(f'output_postprocessor.modalities.{m}.classifier'),
                     f'postprocessor/modalities/{m}/linear', out)
  reader.check_all_used()
  return out


# Haiku module of each kind of modality decoder and postprocessor in the released model.
HAIKU_QUERY_MODULES = {
    'basic': 'basic_decoder',
    'video': 'basic_video_autoencoding_decoder/~/basic_decoder',
    'classification': 'classification_decoder/~/basic_decoder',
}
HAIKU_POSTPROCESSORS = {
    post.AudioPostprocessor: 'audio_postprocessor',
    post.ProjectionPostprocessor: 'projection_postprocessor',
    post.ClassificationPostprocessor: 'classification_postprocessor',
}


def convert_haiku_params(params: Mapping[str, Array], model) -> dict[str, Array]:
  """DeepMind's Haiku parameters ({'module/path/param': array}, as
  common.load_checkpoint_file reads the pickle) -> {our path: array}."""
  _check_model(model)
  reader = StateDictReader(params, 'Haiku multimodal checkpoint')
  out: dict[str, Array] = {}
  common.haiku_perceiver_encoder(reader, 'encoder', 'encoder', out,
                                 num_self_attends=len(model.encoder.self_attends))
  prep = model.preprocessor
  for m in prep.modalities.keys():
    out[f'preprocessor/padding/{m}'] = reader.take(
        f'multimodal_preprocessor/{m}_padding/pos_embs')
  for m in prep.mask_token.keys():
    out[f'preprocessor/mask_token/{m}'] = reader.take(
        f'multimodal_preprocessor/{m}_mask_token/pos_embs')
  decoder = model.decoder
  for m, queries in decoder.modalities.items():
    out[f'decoder/padding/{m}'] = reader.take(
        f'multimodal_decoder/~decoder_query/{m}_padding/pos_embs')
    if isinstance(queries.output_pos_enc, pe.TrainablePositionEncoding):
      module = HAIKU_QUERY_MODULES[queries.kind]
      out[f'decoder/modalities/{m}/output_pos_enc/pos_embs'] = reader.take(
          f'{module}/~/trainable_position_encoding/pos_embs')
  common.haiku_attention_block(reader, 'multimodal_decoder/~/basic_decoder/cross_attention',
                               'decoder/decoder/cross_attend', out, cross=True)
  common.haiku_linear(reader, 'multimodal_decoder/~/basic_decoder/output',
                      'decoder/decoder/output', out)
  for m, postprocessor in model.postprocessor.modalities.items():
    module = HAIKU_POSTPROCESSORS[type(postprocessor)]
    common.haiku_linear(reader, f'{module}/linear', f'postprocessor/modalities/{m}/linear', out)
  reader.check_all_used()
  return out
