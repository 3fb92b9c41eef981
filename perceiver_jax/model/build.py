"""build_model(config.model): names in the config -> modules.

Schema (all fields are in `default_model_config()`; configs start from it):

  num_classes                  int
  attention_impl               None | 'xla' | 'cudnn' (None lets JAX choose)
  preprocessor.name            'generic' | 'patches'
  preprocessor.patch_size      tuple, one window per index dim ((p,) = p on every dim)
  preprocessor.num_channels    patches: linear width after space-to-depth; 0 = no linear
  preprocessor.position_encoding.{name ('fourier' | 'trainable' | 'none'), num_bands,
      max_resolution (None -> index dims after patching), concat_pos, sine_only,
      num_channels, init_scale, project_pos_dim (-1 = none), combine ('concat' | 'add')}
  encoder.{num_latents, num_latent_channels, num_blocks, num_self_attends_per_block,
      num_cross_attend_heads, num_self_attend_heads, cross_attend_widening_factor,
      self_attend_widening_factor, qk_channels, v_channels,
      cross_attention_shape_for_attn, use_query_residual, dropout_prob,
      latent_init_scale, cross_attend_every_block, share_cross_attend_weights}
  decoder.name                 'projection' | 'classification' | 'basic'
  decoder.{num_heads, qk_channels, v_channels, widening_factor, use_query_residual,
      num_query_channels (None -> latent channels), query_init_scale}
  decoder (basic only).{output_index_dims, output_num_channels (None -> num_classes),
      final_project, position_encoding.{name ('trainable' | 'fourier'), num_bands,
      max_resolution, concat_pos, sine_only, project_pos_dim}}
  postprocessor.name           'auto' | 'classification' | 'none'; 'auto' picks
      'classification' for a basic decoder with one output query, else 'none'.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

from perceiver_jax.model import decoders as dec
from perceiver_jax.model import io_processors as io
from perceiver_jax.model import postprocessors as post
from perceiver_jax.model.encoder import PerceiverEncoder
from perceiver_jax.model.perceiver import Perceiver

Dtype = Any

PREPROCESSORS = ('generic', 'patches')
POSITION_ENCODINGS = ('fourier', 'trainable', 'none')
DECODERS = ('projection', 'classification', 'basic')
DECODER_QUERY_ENCODINGS = ('trainable', 'fourier')
POSTPROCESSORS = ('auto', 'classification', 'none')


def _optional(field_type):
  # A None default that stays overridable from the command line (--config.x=64).
  return ml_collections.FieldReference(None, field_type=field_type)


def _position_encoding_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name='fourier', num_bands=16, max_resolution=_optional(tuple), concat_pos=True,
      sine_only=False,
      num_channels=64, init_scale=0.02, project_pos_dim=-1, combine='concat'))


def default_model_config() -> ml_collections.ConfigDict:
  """All model fields with small defaults (a Perceiver IO classifier for tiny inputs)."""
  query_pe = _position_encoding_config()
  query_pe.name = 'trainable'
  return ml_collections.ConfigDict(dict(
      num_classes=10,
      attention_impl=None,
      preprocessor=dict(name='generic', patch_size=(4,), num_channels=0,
                        position_encoding=_position_encoding_config()),
      encoder=dict(
          num_latents=32, num_latent_channels=64, num_blocks=2,
          num_self_attends_per_block=2, num_cross_attend_heads=1, num_self_attend_heads=4,
          cross_attend_widening_factor=1, self_attend_widening_factor=1, qk_channels=_optional(int),
          v_channels=_optional(int), cross_attention_shape_for_attn='kv', use_query_residual=True,
          dropout_prob=0.0, latent_init_scale=0.02, cross_attend_every_block=False,
          share_cross_attend_weights=True),
      decoder=dict(
          name='classification', num_heads=1, qk_channels=_optional(int),
          v_channels=_optional(int), widening_factor=1, use_query_residual=True,
          num_query_channels=_optional(int),
          query_init_scale=0.02, output_index_dims=(1,), output_num_channels=_optional(int),
          final_project=True, position_encoding=query_pe),
      postprocessor=dict(name='auto'),
  ))


def _check_name(kind: str, name: str, valid: tuple[str, ...]):
  if name not in valid:
    raise ValueError(f'Unknown {kind} {name!r}; valid names are '
                     f'{", ".join(repr(v) for v in valid)}.')


def _build_preprocessor(cfg, input_shape, kw):
  pe_cfg = cfg.position_encoding
  _check_name('preprocessor', cfg.name, PREPROCESSORS)
  _check_name('position encoding', pe_cfg.name, POSITION_ENCODINGS)
  _check_name('position combine mode', pe_cfg.get('combine', 'concat'), io.COMBINE_MODES)
  combine = pe_cfg.get('combine', 'concat')
  if cfg.name == 'generic':
    return io.GenericPreprocessor(input_shape, position_encoding=pe_cfg, combine=combine,
                                  **kw)
  patch_size = tuple(cfg.patch_size)
  if len(patch_size) == 1:
    patch_size = patch_size * (len(input_shape) - 1)
  return io.PatchesPreprocessor(input_shape, patch_size, num_channels=cfg.num_channels,
                                position_encoding=pe_cfg, combine=combine, **kw)


def _build_decoder(cfg, num_classes, latent_channels, attention_impl, kw):
  _check_name('decoder', cfg.name, DECODERS)
  attn = dict(num_heads=cfg.num_heads, qk_channels=cfg.qk_channels,
              v_channels=cfg.v_channels, widening_factor=cfg.widening_factor,
              use_query_residual=cfg.use_query_residual, attention_impl=attention_impl)
  if cfg.name == 'projection':
    return dec.ProjectionDecoder(latent_channels, num_classes, **kw)
  if cfg.name == 'classification':
    return dec.ClassificationDecoder(
        latent_channels, num_classes, num_query_channels=cfg.num_query_channels,
        query_init_scale=cfg.get('query_init_scale', 0.02), **attn, **kw)
  query_pe = dict(cfg.position_encoding)
  _check_name('decoder query position encoding', query_pe['name'],
              DECODER_QUERY_ENCODINGS)
  # A trainable query table is as wide as the queries are meant to be.
  query_pe['num_channels'] = cfg.num_query_channels or latent_channels
  query_pe['init_scale'] = cfg.get('query_init_scale', 0.02)
  output_channels = cfg.get('output_num_channels') or num_classes
  return dec.BasicDecoder(
      latent_channels, output_channels, position_encoding=query_pe,
      output_index_dims=tuple(cfg.output_index_dims),
      final_project=cfg.get('final_project', True), **attn, **kw)


def build_model(model_config: ml_collections.ConfigDict, *, input_shape: tuple[int, ...],
                rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                param_dtype: Dtype = jnp.float32) -> Perceiver:
  """Builds a Perceiver for per-example inputs of `input_shape`, e.g. (40, 1), (8, 8, 1).

  `model_config` is `config.model`. Parameters carry logical-axis metadata
  (`out_sharding`) but are created unsharded; the caller places them on a mesh.
  """
  if 'encoder' not in model_config:
    raise ValueError('build_model expects config.model (with preprocessor, encoder and '
                     'decoder fields), not the whole experiment config.')
  input_shape = tuple(int(n) for n in input_shape)
  kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  impl = model_config.get('attention_impl')
  enc = model_config.encoder
  post_name = model_config.get('postprocessor', {}).get('name', 'auto')
  _check_name('postprocessor', post_name, POSTPROCESSORS)
  # Eager sharding would try to place every Param on a mesh as it is created.
  with nnx.use_eager_sharding(False):
    preprocessor = _build_preprocessor(model_config.preprocessor, input_shape, kw)
    decoder = _build_decoder(model_config.decoder, model_config.num_classes,
                             enc.num_latent_channels, impl, kw)
    encoder = PerceiverEncoder(
        preprocessor.num_channels, num_latents=enc.num_latents,
        num_latent_channels=enc.num_latent_channels, num_blocks=enc.num_blocks,
        num_self_attends_per_block=enc.num_self_attends_per_block,
        num_cross_attend_heads=enc.num_cross_attend_heads,
        num_self_attend_heads=enc.num_self_attend_heads,
        cross_attend_widening_factor=enc.cross_attend_widening_factor,
        self_attend_widening_factor=enc.self_attend_widening_factor,
        qk_channels=enc.qk_channels, v_channels=enc.v_channels,
        cross_attention_shape_for_attn=enc.cross_attention_shape_for_attn,
        use_query_residual=enc.use_query_residual, dropout_prob=enc.dropout_prob,
        latent_init_scale=enc.latent_init_scale,
        cross_attend_every_block=enc.cross_attend_every_block,
        share_cross_attend_weights=enc.share_cross_attend_weights,
        attention_impl=impl, **kw)
    if post_name == 'auto':
      one_query = isinstance(decoder, dec.BasicDecoder) and decoder.num_outputs == 1
      post_name = 'classification' if one_query else 'none'
    postprocessor = None
    if post_name == 'classification':
      if not isinstance(decoder, dec.BasicDecoder) or not decoder.final_project:
        raise ValueError("postprocessor 'classification' needs decoder 'basic' with "
                         "final_project=True (the other decoders already emit logits).")
      postprocessor = post.ClassificationPostprocessor(model_config.num_classes)
  return Perceiver(preprocessor, encoder, decoder, postprocessor)
