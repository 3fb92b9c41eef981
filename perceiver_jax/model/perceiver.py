"""Perceiver = preprocessor -> encoder -> decoder -> postprocessor."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from perceiver_jax.model.encoder import PerceiverEncoder


class Perceiver(nnx.Module):
  """The Perceiver / Perceiver IO model.

  inputs [batch, *index_dims, channels] -> outputs; for the projection and
  classification decoders (or a basic decoder + classification postprocessor) these
  are logits [batch, num_classes], returned in float32 so losses are full precision.
  """

  def __init__(self, preprocessor: nnx.Module | None, encoder: PerceiverEncoder,
               decoder: nnx.Module, postprocessor: nnx.Module | None = None):
    self.preprocessor = preprocessor
    self.encoder = encoder
    self.decoder = decoder
    self.postprocessor = postprocessor

  def __call__(self, inputs: jax.Array, *, input_mask: jax.Array | None = None,
               query_mask: jax.Array | None = None,
               subsampled_output_points: jax.Array | None = None,
               pos: jax.Array | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """input_mask: [batch, N] booleans over the preprocessed (flattened, patched) index,
    True = attend. rngs: needed (with a 'dropout' stream) when deterministic=False."""
    if self.preprocessor is not None:
      prep = self.preprocessor(inputs, pos=pos, deterministic=deterministic, rngs=rngs)
      inputs, modality_sizes, without_pos = prep.inputs, prep.modality_sizes, \
          prep.inputs_without_pos
    else:
      modality_sizes, without_pos = None, None
    z = self.encoder.latents(inputs.shape[0])
    query = self.decoder.decoder_query(inputs, modality_sizes, without_pos,
                                       subsampled_points=subsampled_output_points)
    z = self.encoder(inputs, z, input_mask=input_mask, deterministic=deterministic,
                     rngs=rngs)
    outputs = self.decoder(query, z, query_mask=query_mask, deterministic=deterministic,
                           rngs=rngs)
    if self.postprocessor is not None:
      outputs = self.postprocessor(outputs, deterministic=deterministic, rngs=rngs)
    return outputs.astype(jnp.float32)
