"""Builders for the audio / one-hot / point-cloud preprocessors, the video autoencoding
decoder, the audio / projection postprocessors and the multimodal model; `build.py`
calls them by name (see its schema).

A multimodal model has `preprocessor.name == decoder.name == postprocessor.name ==
'multimodal'` and one sub-config per modality in `model.modalities` (see
`modality_config`); build_model then takes `input_shape` as {modality: shape}.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

try:
  import ml_collections
except ImportError:  # the modules import without it (bare accelerator hosts); configs need it
  ml_collections = None
from flax import nnx

from perceiver_jax.model import multimodal as mm
from perceiver_jax.model import postprocessors as post
from perceiver_jax.model import sequence_processors as seq

SEQUENCE_PREPROCESSORS = ('audio', 'one_hot', 'point_cloud', 'conv1d')
QUERY_DECODERS = ('basic', 'video', 'classification')
MODALITY_POSTPROCESSORS = ('audio', 'projection', 'classification', 'none')
POSTPROCESSORS = ('audio', 'projection', 'multimodal')


def _optional(field_type):
  return ml_collections.FieldReference(None, field_type=field_type)


def _check(kind: str, name: str, valid: tuple[str, ...]):
  if name not in valid:
    raise ValueError(f'Unknown {kind} {name!r}; valid names are '
                     f'{", ".join(repr(v) for v in valid)}.')


def modality_config(preprocessor: Mapping[str, Any], decoder: Mapping[str, Any],
                    postprocessor: Mapping[str, Any], mask_prob: float | None = None
                    ) -> ml_collections.ConfigDict:
  """One entry of `model.modalities`, with every field present (so each stays
  overridable from the command line):

    preprocessor   a `model.preprocessor`-style config for this modality ('audio',
                   'one_hot', 'point_cloud', 'image', 'patches', 'generic').
    mask_prob      None = no mask token; else the probability of replacing each token
                   by the learned mask token (1.0 hides the modality, as the released
                   model does for the label).
    decoder        the modality's query maker: name 'basic' (position-encoding queries
                   over output_index_dims), 'video' (the same over (T, H, W)) or
                   'classification' (one trainable query); num_query_channels (trainable
                   width, None -> latent channels), query_init_scale, position_encoding.
    postprocessor  name 'audio' (samples_per_patch), 'projection' (num_outputs),
                   'classification' (num_classes, None -> model.num_classes) or 'none'.
  """
  from perceiver_jax.model.build import default_model_config  # build imports this module
  base = default_model_config()
  prep = base.preprocessor
  prep.update(dict(preprocessor))
  query = ml_collections.ConfigDict(dict(
      name='basic', output_index_dims=(1,), num_query_channels=_optional(int),
      query_init_scale=0.02, position_encoding=base.decoder.position_encoding))
  query.update(dict(decoder))
  postproc = ml_collections.ConfigDict(dict(
      name='none', num_outputs=_optional(int), samples_per_patch=_optional(int),
      num_classes=_optional(int)))
  postproc.update(dict(postprocessor))
  return ml_collections.ConfigDict(dict(
      preprocessor=prep, mask_prob=ml_collections.FieldReference(mask_prob, field_type=float),
      decoder=query, postprocessor=postproc))


def input_shapes(input_shape) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
  """(n, ...) -> tuple of ints; {modality: shape} -> {modality: tuple of ints}."""
  if isinstance(input_shape, Mapping):
    return {m: tuple(int(n) for n in s) for m, s in input_shape.items()}
  return tuple(int(n) for n in input_shape)


def build_sequence_preprocessor(cfg, input_shape, kw) -> nnx.Module:
  """'audio' | 'one_hot' | 'point_cloud' | 'conv1d' from a `model.preprocessor`-style config."""
  pe_cfg = cfg.get('position_encoding')
  if cfg.name == 'one_hot':
    return seq.OneHotPreprocessor(input_shape, dtype=kw['dtype'])
  if cfg.name == 'point_cloud':
    if pe_cfg is None or pe_cfg.get('max_resolution') is None:
      raise ValueError("preprocessor 'point_cloud' needs position_encoding.max_resolution "
                       "(one value, or one per x, y, z) for its Fourier features.")
    return seq.PointCloudPreprocessor(
        input_shape, num_bands=pe_cfg.num_bands, max_resolution=pe_cfg.max_resolution,
        concat_pos=pe_cfg.get('concat_pos', True), sine_only=pe_cfg.get('sine_only', False),
        dtype=kw['dtype'])
  if pe_cfg is not None and pe_cfg.name == 'none':
    pe_cfg = None
  if cfg.name == 'conv1d':
    return seq.Conv1DPreprocessor(
        input_shape, num_channels=cfg.num_channels, kernel_size=cfg.get('kernel_size', 5),
        stride=cfg.get('stride', 1), pool_size=cfg.get('pool_size', 2),
        position_encoding=pe_cfg, combine=(pe_cfg or {}).get('combine', 'concat'), **kw)
  return seq.AudioPreprocessor(
      input_shape, samples_per_patch=cfg.get('samples_per_patch', 96),
      position_encoding=pe_cfg, combine=(pe_cfg or {}).get('combine', 'concat'),
      n_extra_pos_mlp=cfg.get('n_extra_pos_mlp', 0), **kw)


def _modalities(model_config) -> Mapping[str, Any]:
  modalities = model_config.get('modalities')
  if not modalities:
    raise ValueError("A multimodal model needs model.modalities: one sub-config per "
                     "modality (see build_multimodal.modality_config).")
  return modalities


def build_multimodal_preprocessor(model_config, input_shape, kw,
                                  build_one: Callable) -> mm.MultimodalPreprocessor:
  """`build_one(cfg, shape, kw)` builds one modality's preprocessor (build.py's)."""
  modalities = _modalities(model_config)
  if not isinstance(input_shape, Mapping) or set(input_shape) != set(modalities):
    given = sorted(input_shape) if isinstance(input_shape, Mapping) else input_shape
    raise ValueError(f'A multimodal model needs input_shape as a dict with the modalities '
                     f'{sorted(modalities)}; got {given}.')
  nested = sorted(m for m, cfg in modalities.items() if cfg.preprocessor.name == 'multimodal')
  if nested:
    raise ValueError(f"Modalities {nested} have preprocessor 'multimodal'; each modality "
                     f"needs its own kind ('audio', 'image', 'one_hot', ...).")
  preps = {m: build_one(cfg.preprocessor, input_shape[m], kw) for m, cfg in modalities.items()}
  mask_probs = {m: cfg.mask_prob for m, cfg in modalities.items()
                if cfg.get('mask_prob') is not None}
  return mm.MultimodalPreprocessor(
      preps, mask_probs=mask_probs,
      min_padding_size=model_config.preprocessor.get('min_padding_size', 2), **kw)


def build_decoder_queries(cfg, latent_channels: int, kw) -> mm.DecoderQueries:
  _check('modality decoder', cfg.name, QUERY_DECODERS)
  query_pe = dict(cfg.position_encoding)
  index_dims = tuple(cfg.output_index_dims)
  if cfg.name == 'classification':
    query_pe = dict(query_pe, name='trainable', project_pos_dim=-1)
    index_dims = (1,)
  if cfg.name == 'video' and len(index_dims) != 3:
    raise ValueError(f"Modality decoder 'video' needs output_index_dims (T, H, W), got "
                     f"{index_dims}.")
  query_pe['num_channels'] = cfg.get('num_query_channels') or latent_channels
  query_pe['init_scale'] = cfg.get('query_init_scale', 0.02)
  return mm.DecoderQueries(index_dims, query_pe, kind=cfg.name, **kw)


def build_multimodal_decoder(model_config, latent_channels: int, attention_impl,
                             kw) -> mm.MultimodalDecoder:
  cfg = model_config.decoder
  queries = {m: build_decoder_queries(mcfg.decoder, latent_channels, kw)
             for m, mcfg in _modalities(model_config).items()}
  return mm.MultimodalDecoder(
      queries, latent_channels, cfg.get('output_num_channels') or model_config.num_classes,
      min_padding_size=cfg.get('min_padding_size', 2), num_heads=cfg.num_heads,
      qk_channels=cfg.qk_channels, v_channels=cfg.v_channels,
      widening_factor=cfg.widening_factor, use_query_residual=cfg.use_query_residual,
      query_chunk_size=cfg.get('query_chunk_size'), attention_impl=attention_impl,
      attention_chunk_size=model_config.get('attention_chunk_size', 0),
      attention_auto_chunk_threshold=model_config.get('attention_auto_chunk_threshold', 0),
      **kw)


def build_video_decoder(cfg, num_classes: int, latent_channels: int, attn: dict,
                        kw) -> mm.VideoAutoencodingDecoder:
  """decoder.name 'video': a full VideoAutoencodingDecoder (queries + cross-attend)."""
  query_pe = dict(cfg.position_encoding)
  query_pe['num_channels'] = cfg.num_query_channels or latent_channels
  query_pe['init_scale'] = cfg.get('query_init_scale', 0.02)
  return mm.VideoAutoencodingDecoder(
      latent_channels, cfg.get('output_num_channels') or num_classes,
      output_index_dims=tuple(cfg.output_index_dims), position_encoding=query_pe,
      final_project=cfg.get('final_project', True),
      query_chunk_size=cfg.get('query_chunk_size'), **attn, **kw)


def _one_postprocessor(cfg, in_channels: int, num_classes: int, samples_per_patch, kw):
  _check('modality postprocessor', cfg.name, MODALITY_POSTPROCESSORS)
  if cfg.name == 'none':
    return None
  if cfg.name == 'audio':
    spp = cfg.get('samples_per_patch') or samples_per_patch
    if not spp:
      raise ValueError("postprocessor 'audio' needs samples_per_patch.")
    return post.AudioPostprocessor(in_channels, spp, **kw)
  if cfg.name == 'projection':
    return post.ProjectionPostprocessor(in_channels, cfg.get('num_outputs') or num_classes,
                                        **kw)
  return post.ClassificationPostprocessor(cfg.get('num_classes') or num_classes,
                                          num_input_channels=in_channels, **kw)


def _decoder_channels(decoder) -> int:
  if isinstance(decoder, mm.MultimodalDecoder):
    return decoder.output_num_channels
  inner = getattr(decoder, 'decoder', decoder)
  return inner.output_num_channels if inner.final_project else inner.num_query_channels


def build_postprocessor(model_config, name: str, decoder, kw) -> nnx.Module:
  """postprocessor.name 'audio' | 'projection' | 'multimodal'."""
  num_classes = model_config.num_classes
  if name == 'multimodal':
    if not isinstance(decoder, mm.MultimodalDecoder):
      raise ValueError("postprocessor 'multimodal' needs decoder 'multimodal'.")
    parts = {}
    for m, mcfg in _modalities(model_config).items():
      p = _one_postprocessor(mcfg.postprocessor, decoder.output_num_channels, num_classes,
                             mcfg.preprocessor.get('samples_per_patch'), kw)
      if p is not None:
        parts[m] = p
    return post.MultimodalPostprocessor(parts)
  cfg = model_config.postprocessor
  return _one_postprocessor(cfg, _decoder_channels(decoder), num_classes,
                            model_config.preprocessor.get('samples_per_patch'), kw)
