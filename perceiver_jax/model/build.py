"""build_model(config.model): config sections -> a Perceiver.

config.model holds the model-wide settings (settings.ModelSettings: dtype,
attention_impl, attention_chunk_size, attention_auto_chunk_threshold, mlp_activation),
num_classes, and one section per part:

  preprocessor   dict(name=..., **kwargs): 'generic' | 'patches' | 'image' | 'audio' |
                 'conv1d' | 'one_hot' | 'point_cloud' | 'text' | 'multimodal'; most take a
                 nested position_encoding section ('fourier' | 'trainable' | 'none')
  encoder        PerceiverEncoder kwargs (no name)
  decoder        'classification' | 'basic' | 'projection' | 'flow' | 'video' | 'multimodal'
  postprocessor  'auto' | 'none' | 'classification' | 'flow' | 'audio' | 'projection' |
                 'embedding_decoder' | 'multimodal'
  modalities     multimodal only: {modality: modality_config(...)}

A Perceiver AR (model/perceiver_ar.py) has no parts: its config.model is
`perceiver_ar_model_config(...)`, name='perceiver_ar', the settings, num_classes (the
vocabulary) and PerceiverAR's own kwargs as fields.

A section's fields are its constructor's kwargs (registry.py resolves the name; the
builder passes what the config cannot know: input shape, latent channels, classes).
`part(kind, name, **overrides)` makes a section with every kwarg filled from the
constructor's defaults; configs use it so every field shows in config.json and stays
overridable (--config.model.decoder.num_heads=2). To switch a part's kind, replace its
section in a config file: `config.model.decoder = part('decoder', 'basic', ...)`.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax.numpy as jnp
try:
  import ml_collections
except ImportError:  # the modules import without it (bare accelerator hosts); configs need it
  ml_collections = None
from flax import nnx

from perceiver_jax.errors import UserError
from perceiver_jax.model import registry
from perceiver_jax.model.build_multimodal import input_shapes, modality_config  # re-exported
from perceiver_jax.model.perceiver import Perceiver
from perceiver_jax.model.perceiver_ar import PerceiverAR
from perceiver_jax.model.registry import part  # re-exported for configs
from perceiver_jax.model.settings import ModelSettings

Dtype = Any


PERCEIVER_AR = 'perceiver_ar'
# PerceiverAR kwargs that are not config fields (vocab_size is config.model.num_classes).
_AR_NOT_FIELDS = ('self', 'settings', 'rngs', 'vocab_size')


def _settings_defaults() -> dict[str, Any]:
  return dict(
      dtype='float32',  # compute dtype: float32 | bfloat16 | float16 (params stay float32)
      attention_impl=None,  # None (cuDNN where it applies, else XLA) | xla | cudnn
      attention_chunk_size=0,  # keys per chunk of the memory-efficient path; 0 = auto only
      attention_auto_chunk_threshold=2 ** 28,  # chunk when q_len*kv_len > this; 0 = never
      mlp_activation='gelu_tanh')


def _ar_fields() -> dict[str, Any]:
  params = inspect.signature(PerceiverAR.__init__).parameters.items()
  return {name: p.default for name, p in params if name not in _AR_NOT_FIELDS}


def perceiver_ar_model_config(**overrides) -> ml_collections.ConfigDict:
  """config.model of a Perceiver AR: name, the model-wide settings, num_classes (the
  vocabulary: 256 bytes) and every PerceiverAR kwarg, `overrides` replacing defaults."""
  fields = dict(name=PERCEIVER_AR, num_classes=256, **_settings_defaults(), **_ar_fields())
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise UserError(f'perceiver_ar has no model field {unknown[0]!r}; its fields are '
                    f'{", ".join(sorted(fields))}.')
  return ml_collections.ConfigDict({**fields, **overrides})


def default_model_config() -> ml_collections.ConfigDict:
  """Small defaults (a Perceiver IO classifier for tiny inputs): the model-wide settings
  and one section per part, each with every field of its constructor."""
  return ml_collections.ConfigDict(dict(
      num_classes=10,
      **_settings_defaults(),
      preprocessor=part('preprocessor', 'generic'),
      encoder=part('encoder', num_latents=32, num_latent_channels=64, num_blocks=2,
                   num_self_attends_per_block=2, num_self_attend_heads=4),
      decoder=part('decoder', 'classification'),
      postprocessor=part('postprocessor', 'auto'),
      modalities=ml_collections.ConfigDict(),  # multimodal only: {name: modality_config}
  ))


def _moved_model_flags() -> dict[str, str]:
  # Fields of the old flat union schema (every part's fields in one section), by the
  # section kinds that still have them; a flag naming one a config lacks gets pointed here.
  moved = {
      'model.preprocessor.position_encoding.combine': 'model.preprocessor.combine',
      'model.preprocessor.position_encoding.init_scale':
          "model.preprocessor.position_init_scale (preprocessor 'text'), or "
          "position_encoding.init_scale of a 'trainable' encoding",
      'model.decoder.position_encoding.num_channels': 'model.decoder.num_query_channels',
      'model.decoder.position_encoding.init_scale': 'model.decoder.query_init_scale',
  }
  for field in ('num_bands', 'max_resolution', 'concat_pos', 'sine_only'):
    moved[f'model.preprocessor.position_encoding.{field}'] = (
        f"model.preprocessor.{field} (preprocessor 'point_cloud'), or "
        f"position_encoding.{field} of a 'fourier' encoding")
  for kind in ('preprocessor', 'decoder', 'postprocessor'):
    owners: dict[str, list[str]] = {}
    for name, entry in registry.REGISTRY[kind].items():
      for field in entry.field_names():
        owners.setdefault(field, []).append(name)
    for field, names in sorted(owners.items()):
      moved.setdefault(f'model.{kind}.{field}', (
          f"model.{kind}.{field} of {kind} {' / '.join(repr(n) for n in names)} only; "
          f"replace the section in the config file: part({kind!r}, {names[0]!r}, ...)"))
  return moved


# old dotted path -> where that field lives now (flag_parsing.py explains moved flags).
MOVED_MODEL_FLAGS: dict[str, str] = _moved_model_flags()


def build_model(model_config: ml_collections.ConfigDict, *,
                input_shape: tuple[int, ...] | dict[str, tuple[int, ...]],
                rngs: nnx.Rngs, dtype: Dtype | None = None,
                param_dtype: Dtype = jnp.float32) -> Perceiver:
  """Builds a Perceiver for per-example inputs of `input_shape`, e.g. (40, 1), (8, 8, 1),
  or {modality: shape} for a multimodal model.

  `model_config` is `config.model`. Parameters carry logical-axis metadata
  (partitioning.logical_axes) but are created unsharded; the caller places them on a mesh.
  `dtype` (the compute dtype) defaults to `model_config.dtype`. A constructor's
  ValueError comes back as a UserError naming its config path.
  """
  if model_config.get('name') == PERCEIVER_AR:
    return _build_perceiver_ar(model_config, input_shape, rngs, dtype, param_dtype)
  if 'encoder' not in model_config:
    raise UserError('build_model expects config.model (with preprocessor, encoder and '
                    'decoder sections), not the whole experiment config.')
  settings = ModelSettings.from_config(model_config, dtype=dtype, param_dtype=param_dtype)
  ctx = registry.Context(settings=settings, rngs=rngs,
                         num_classes=model_config.num_classes, model_config=model_config,
                         input_shape=input_shapes(input_shape),
                         latent_channels=model_config.encoder.num_latent_channels)
  at = 'config.model.'
  # This order (preprocessor, decoder, encoder, postprocessor) fixes which random
  # numbers each part's initial weights get; keep it.
  ctx.preprocessor = registry.build_part('preprocessor', model_config.preprocessor, ctx,
                                         at + 'preprocessor')
  ctx.decoder = registry.build_part('decoder', model_config.decoder, ctx, at + 'decoder')
  encoder = registry.build_part('encoder', model_config.encoder, ctx, at + 'encoder')
  postprocessor = registry.build_part(
      'postprocessor', model_config.get('postprocessor', {'name': 'auto'}), ctx,
      at + 'postprocessor')
  return Perceiver(ctx.preprocessor, encoder, ctx.decoder, postprocessor)


def _build_perceiver_ar(model_config, input_shape, rngs, dtype, param_dtype) -> PerceiverAR:
  """A PerceiverAR from config.model's fields; input_shape (context,) must fit it."""
  settings = ModelSettings.from_config(model_config, dtype=dtype, param_dtype=param_dtype)
  fields = {k: model_config[k] for k in _ar_fields() if k in model_config}
  context = tuple(input_shape)
  if len(context) != 1 or context[0] > fields.get('max_context', context[0]):
    raise UserError(f'A Perceiver AR reads token ids of shape (context,) with context <= '
                    f'config.model.max_context={fields.get("max_context")}; the inputs have '
                    f'shape {context}.')
  try:
    return PerceiverAR(vocab_size=model_config.num_classes, settings=settings, rngs=rngs,
                       **fields)
  except ValueError as e:
    raise UserError(f'config.model: {" ".join(str(e).split())}') from None
