"""Perceiver = preprocessor -> encoder -> decoder -> postprocessor."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from perceiver_jax.model.decoders import BasicDecoder, ClassificationDecoder
from perceiver_jax.model.encoder import PerceiverEncoder
from perceiver_jax.model.postprocessors import MultimodalPostprocessor

Array = jax.Array
Masks = Array | Mapping[str, Array] | None


def _flat_mask(mask: Masks, sizes: Mapping[str, int] | None, batch: int,
               what: str) -> Array | None:
  """A [batch, N] mask, or {modality: [batch, N_m]} (missing modalities = all valid)
  concatenated in sorted modality order, as the tokens are."""
  if mask is None or not isinstance(mask, Mapping):
    return mask
  if sizes is None:
    raise ValueError(f'{what} is a dict of per-modality masks but the model is not '
                     f'multimodal; pass one [batch, N] array.')
  unknown = sorted(set(mask) - set(sizes))
  if unknown:
    raise ValueError(f'{what} names modalities {unknown}; the model has {sorted(sizes)}.')
  parts = []
  for modality in sorted(sizes):
    m = mask.get(modality)
    if m is None:
      m = jnp.ones((batch, sizes[modality]), bool)
    elif m.shape != (batch, sizes[modality]):
      raise ValueError(f'{what}[{modality!r}] has shape {list(m.shape)}; expected '
                       f'[{batch}, {sizes[modality]}] (one entry per token).')
    parts.append(m.astype(bool))
  return jnp.concatenate(parts, axis=1)


class Perceiver(nnx.Module):
  """The Perceiver / Perceiver IO model.

  inputs [batch, *index_dims, channels] (or, for a multimodal model, a dict
  {modality: [batch, *shape_m]}) -> outputs; for the projection and classification
  decoders (or a basic decoder + classification postprocessor) these are logits
  [batch, num_classes]. A multimodal model returns {modality: output}. Outputs are
  returned in float32 so losses are full precision.
  """

  def __init__(self, preprocessor: nnx.Module | None, encoder: PerceiverEncoder,
               decoder: nnx.Module, postprocessor: nnx.Module | None = None):
    self.preprocessor = preprocessor
    self.encoder = encoder
    self.decoder = decoder
    self.postprocessor = postprocessor

  def __call__(self, inputs: Array | Mapping[str, Array], *, input_mask: Masks = None,
               query_mask: Masks = None,
               subsampled_output_points: Array | Mapping[str, Array | None] | None = None,
               pos: Array | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None,
               attention_probs: dict | None = None) -> Array | dict[str, Array]:
    """input_mask: [batch, N] booleans over the preprocessed (flattened, patched) index,
    True = attend; for a multimodal model also {modality: [batch, N_m]}.
    query_mask: [batch, M] booleans over the decoder queries (or per modality).
    subsampled_output_points: [M] flat indices of the outputs to decode, or for a
    multimodal model {modality: [M_m] or None (all)}.
    rngs: needed (with a 'dropout' stream) when deterministic=False.
    attention_probs: a dict to fill with cross-attention probabilities [batch, heads,
    queries, keys] (telemetry.py): 'cross_attend' (the encoder's first), 'cross_attend_<b>'
    (block b's, iterative encoders) and 'decoder' (basic and classification decoders);
    None computes nothing extra."""
    if isinstance(inputs, Mapping) and self.preprocessor is None:
      raise ValueError('A dict of inputs needs a multimodal preprocessor; this model has '
                       'no preprocessor.')
    if self.preprocessor is not None:
      prep = self.preprocessor(inputs, pos=pos, deterministic=deterministic, rngs=rngs)
      inputs, modality_sizes, without_pos = (prep.inputs, prep.modality_sizes,
                                             prep.inputs_without_pos)
    else:
      modality_sizes, without_pos = None, None
    batch = inputs.shape[0]
    output_sizes = None
    if hasattr(self.decoder, 'output_sizes'):
      output_sizes = self.decoder.output_sizes(subsampled_output_points)
    input_mask = _flat_mask(input_mask, modality_sizes, batch, 'input_mask')
    query_mask = _flat_mask(query_mask, output_sizes, batch, 'query_mask')

    z = self.encoder.latents(batch)
    query = self.decoder.decoder_query(inputs, modality_sizes, without_pos,
                                       subsampled_points=subsampled_output_points)
    encoder_probs = None if attention_probs is None else []
    z = self.encoder(inputs, z, input_mask=input_mask, deterministic=deterministic,
                     rngs=rngs, attention_probs=encoder_probs)
    decoder_kw = {}
    if attention_probs is not None:
      blocks = range(self.encoder.num_blocks) if self.encoder.cross_attend_every_block else [0]
      attention_probs.update({('cross_attend' if b == 0 else f'cross_attend_{b}'): p
                              for b, p in zip(blocks, encoder_probs)})
      # Only these decoders cross-attend their queries to the latents in one place.
      if isinstance(self.decoder, (BasicDecoder, ClassificationDecoder)):
        decoder_kw['attention_probs'] = decoder_probs = []
    outputs = self.decoder(query, z, query_mask=query_mask, deterministic=deterministic,
                           rngs=rngs, **decoder_kw)
    if decoder_kw:
      attention_probs['decoder'] = decoder_probs[0]
    if isinstance(self.postprocessor, MultimodalPostprocessor):
      outputs = self.postprocessor(outputs, modality_sizes=output_sizes or modality_sizes,
                                   deterministic=deterministic, rngs=rngs)
    elif self.postprocessor is not None:
      outputs = self.postprocessor(outputs, deterministic=deterministic, rngs=rngs)
    return jax.tree.map(lambda x: x.astype(jnp.float32), outputs)
