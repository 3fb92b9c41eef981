"""Config helpers of a multimodal model: `modality_config` makes one entry of
`model.modalities`; `input_shapes` normalises an input shape or {modality: shape}.

A multimodal model has preprocessor, decoder and postprocessor sections named
'multimodal' and one `model.modalities.<m>` per modality; build_model then takes
`input_shape` as {modality: shape}. The builders are in registry.py.
"""

from __future__ import annotations

from typing import Any, Mapping

try:
  import ml_collections
except ImportError:  # the modules import without it (bare accelerator hosts); configs need it
  ml_collections = None

from perceiver_jax.model.registry import part


def _section(kind: str, spec: Mapping[str, Any], default_name: str):
  spec = dict(spec)
  return part(kind, spec.pop('name', default_name), **spec)


def modality_config(preprocessor: Mapping[str, Any], decoder: Mapping[str, Any],
                    postprocessor: Mapping[str, Any], mask_prob: float | None = None
                    ) -> ml_collections.ConfigDict:
  """One entry of `model.modalities`, every field present (each stays overridable from
  the command line); each argument is `dict(name=..., **fields)`, completed by part():

    preprocessor   a preprocessor section ('audio', 'one_hot', 'point_cloud', 'image',
                   'patches', 'generic').
    mask_prob      None = no mask token; else the probability of replacing each token
                   by the learned mask token (1.0 hides the modality, as the released
                   model does for the label).
    decoder        the modality's queries, kind 'query': 'basic' (position-encoding
                   queries over output_index_dims; the default), 'video' (the same over
                   (T, H, W)) or 'classification' (one trainable query).
    postprocessor  kind 'modality_postprocessor': 'audio', 'projection', 'classification'
                   or 'none' (the default).
  """
  return ml_collections.ConfigDict(dict(
      preprocessor=_section('preprocessor', preprocessor, 'generic'),
      mask_prob=ml_collections.FieldReference(mask_prob, field_type=float),
      decoder=_section('query', decoder, 'basic'),
      postprocessor=_section('modality_postprocessor', postprocessor, 'none')))


def input_shapes(input_shape) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
  """(n, ...) -> tuple of ints; {modality: shape} -> {modality: tuple of ints}."""
  if isinstance(input_shape, Mapping):
    return {m: tuple(int(n) for n in s) for m, s in input_shape.items()}
  return tuple(int(n) for n in input_shape)
