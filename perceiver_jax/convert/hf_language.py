"""The language Perceiver (MLM): checkpoint names -> our parameter paths.

Our model: build_model with preprocessor 'text', decoder 'basic' (trainable queries,
final_project=False) and postprocessor 'embedding_decoder' (configs/pretrained/
language_perceiver.py). The embedding table is one tied Param; it is given here as
'preprocessor/embeddings'.

Hugging Face PerceiverForMaskedLM (deepmind/language-perceiver):
  perceiver.input_preprocessor.embeddings.weight      -> preprocessor/embeddings
  perceiver.input_preprocessor.position_embeddings.weight -> preprocessor/pos_enc/pos_embs
  perceiver.embeddings.latents, perceiver.encoder.*    -> encoder/... (common.hf_perceiver_encoder)
  perceiver.decoder.output_position_encodings.position_embeddings -> decoder/output_pos_enc/pos_embs
  perceiver.decoder.decoding_cross_attention.*         -> decoder/cross_attend/...
  embedding_decoder.bias                               -> postprocessor/bias

DeepMind's Haiku pickle (language_perceiver_io_bytes.pickle; names as in HF's
convert_perceiver_haiku_to_pytorch.py and DeepMind's masked_language_modelling colab):
  embed/embeddings, trainable_position_encoding/pos_embs, perceiver_encoder/~/...,
  basic_decoder/~/trainable_position_encoding/pos_embs, basic_decoder/cross_attention/...,
  embedding_decoder/bias.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from flax import nnx

from perceiver_jax.convert import common


def _num_self_attends(model: nnx.Module) -> int:
  return len(model.encoder.self_attends)


def _check_decoder(model: nnx.Module) -> None:
  if model.decoder.output is not None:
    raise ValueError('The language Perceiver decodes with final_project=False; build the '
                     'model from configs/pretrained/language_perceiver.py.')


def convert_hf_state_dict(state_dict: Mapping[str, np.ndarray], model: nnx.Module
                          ) -> dict[str, np.ndarray]:
  """HF PerceiverForMaskedLM state dict -> {our path: array} for `assign_params`."""
  _check_decoder(model)
  sd = common.StateDictReader(state_dict, source='Hugging Face checkpoint')
  out: dict[str, np.ndarray] = {}
  out['preprocessor/embeddings'] = sd.take('perceiver.input_preprocessor.embeddings.weight')
  out['preprocessor/pos_enc/pos_embs'] = sd.take(
      'perceiver.input_preprocessor.position_embeddings.weight')
  common.hf_perceiver_encoder(sd, 'perceiver', 'encoder', out,
                              num_self_attends=_num_self_attends(model))
  out['decoder/output_pos_enc/pos_embs'] = sd.take(
      'perceiver.decoder.output_position_encodings.position_embeddings')
  common.hf_perceiver_layer(sd, 'perceiver.decoder.decoding_cross_attention',
                            'decoder/cross_attend', out, cross=True)
  out['postprocessor/bias'] = sd.take('embedding_decoder.bias')
  sd.check_all_used()
  return out


def convert_haiku_params(params: Mapping[str, np.ndarray], model: nnx.Module
                         ) -> dict[str, np.ndarray]:
  """DeepMind's flattened Haiku params ('module/param' keys, as load_checkpoint_file
  returns them) -> {our path: array}."""
  _check_decoder(model)
  hk = common.StateDictReader(params, source='Haiku checkpoint')
  out: dict[str, np.ndarray] = {}
  out['preprocessor/embeddings'] = hk.take('embed/embeddings')
  out['preprocessor/pos_enc/pos_embs'] = hk.take('trainable_position_encoding/pos_embs')
  common.haiku_perceiver_encoder(hk, 'perceiver_encoder', 'encoder', out,
                                 num_self_attends=_num_self_attends(model))
  out['decoder/output_pos_enc/pos_embs'] = hk.take(
      'basic_decoder/~/trainable_position_encoding/pos_embs')
  common.haiku_attention_block(hk, 'basic_decoder/cross_attention', 'decoder/cross_attend',
                               out, cross=True)
  out['postprocessor/bias'] = hk.take('embedding_decoder/bias')
  hk.check_all_used()
  return out
