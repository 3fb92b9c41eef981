"""build_model(config.model): names in the config -> modules.

Schema (all fields are in `default_model_config()`; configs start from it):

  num_classes                  int
  dtype                        compute dtype 'float32' | 'bfloat16' | 'float16'; parameters
      stay float32 (param_dtype), LayerNorm statistics, softmax and outputs float32
  attention_impl               None | 'xla' | 'cudnn' (None: cuDNN's fused kernel on a GPU
      where it applies, else XLA; see attention.dot_product_attention)
  attention_chunk_size         > 0: every attention takes keys/values this many at a time
      with an online softmax (chunked_attention.py; memory linear in kv_len, same
      results); 0 = only when attention_auto_chunk_threshold says so
  attention_auto_chunk_threshold  > 0: the chunked path for any attention whose
      q_len * kv_len exceeds it (chunks of attention_chunk_size, or 1024 if 0); 0 = never
  mlp_activation               'gelu_tanh' (DeepMind's, default) | 'gelu' (exact erf, as
      Hugging Face's port computes it): the GELU of every attention block's MLP
  preprocessor.name            'generic' | 'patches' | 'image'
  preprocessor (image only).{prep_type ('pixels' | 'patches' | 'conv' | 'conv1x1'),
      spatial_downsample, temporal_downsample (video inputs (T, H, W, C)),
      conv_after_patching (patches: linear to num_channels), conv2d_use_batchnorm,
      conv_padding ('same' = DeepMind/TF | 'transformers' = HF's port),
      flow_patch_size (>0: each pixel -> its k x k neighbourhood first; the flow model),
      n_extra_pos_mlp}; num_channels = conv / conv1x1 / patches-linear width
  preprocessor.patch_size      tuple, one window per index dim ((p,) = p on every dim)
  preprocessor.num_channels    patches: linear width after space-to-depth; 0 = no linear
  preprocessor.position_encoding.{name ('fourier' | 'trainable' | 'none'), num_bands,
      max_resolution (None -> index dims after patching), concat_pos, sine_only,
      num_channels, init_scale, project_pos_dim (-1 = none), combine ('concat' | 'add')}
  encoder.{num_latents, num_latent_channels, num_blocks, num_self_attends_per_block,
      num_cross_attend_heads, num_self_attend_heads, cross_attend_widening_factor,
      self_attend_widening_factor, qk_channels, v_channels,
      cross_attention_shape_for_attn, use_query_residual, dropout_prob,
      latent_init_scale, cross_attend_every_block, share_cross_attend_weights,
      remat ('none' | 'full' | 'dots_saveable': what each block keeps for the backward pass),
      scan_blocks (True: the weight-shared blocks run as one jax.lax.scan, compiled once)}
  decoder.name                 'projection' | 'classification' | 'basic' | 'flow'
  decoder (flow only).rescale_factor; queries = the preprocessed inputs, output
      [batch, H, W, output_num_channels (None -> 2)] on the preprocessed grid
  decoder.{num_heads, qk_channels, v_channels, widening_factor, use_query_residual,
      num_query_channels (None -> latent channels), query_init_scale}
  decoder (basic only).{output_index_dims, output_num_channels (None -> num_classes),
      final_project, position_encoding.{name ('trainable' | 'fourier'), num_bands,
      max_resolution, concat_pos, sine_only, project_pos_dim}}
  postprocessor.name           'auto' | 'classification' | 'flow' | 'none'; 'auto' picks
      'classification' for a basic decoder with one output query, else 'none'.
  postprocessor.flow_scale     flow: output multiplier (DeepMind's colab: 20)
  decoder.query_chunk_size     basic decoders: decode this many queries at a time
      (0 = all at once); bounds decoder memory for huge outputs, same results

  Text (the language Perceiver; input_shape = (seq_len,), integer token ids):
  preprocessor.name 'text'     learned byte embedding (preprocessor.vocab_size, width
      preprocessor.num_channels) + learned positions (preprocessor.max_seq_len)
  postprocessor.name 'embedding_decoder'  logits = decoder output @ embedding^T + bias,
      tied to the text preprocessor's table (use decoder 'basic', final_project=False)

  Audio, one-hot, point cloud, video autoencoding (build_multimodal.py):
  preprocessor.name 'audio'    raw samples -> patches of preprocessor.samples_per_patch,
      position features over the patch index (position_encoding as above)
  preprocessor.name 'conv1d'   1-D signals: conv (preprocessor.kernel_size, stride) to
      preprocessor.num_channels -> ReLU -> max-pool (pool_size), then position features
  preprocessor.name 'one_hot'  [batch, C] -> one token of C channels, no positions
  preprocessor.name 'point_cloud'  [batch, points, 3 + F] -> F + Fourier(xyz) channels
      (position_encoding.{num_bands, max_resolution (required), concat_pos, sine_only})
  decoder.name 'video'         basic decoder over output_index_dims (T, H, W), reshaped
      to [batch, T, H, W, C]
  postprocessor.name 'audio' | 'projection'  linear to postprocessor.samples_per_patch
      (None -> preprocessor.samples_per_patch) samples per query, flattened, | to
      postprocessor.num_outputs (None -> num_classes) channels per query

  Multimodal (input_shape = {modality: shape}; outputs {modality: array}):
  preprocessor.name = decoder.name = postprocessor.name = 'multimodal'
  preprocessor.min_padding_size  channels = max modality channels + this (learned padding)
  decoder.{min_padding_size, output_num_channels, num_heads, qk_channels, v_channels,
      widening_factor, use_query_residual, query_chunk_size}: the one decoder shared
      by all modalities
  modalities.<name>.{preprocessor (a preprocessor config as above), mask_prob (None =
      no mask token), decoder (queries only: name 'basic' | 'video' | 'classification',
      output_index_dims, num_query_channels, query_init_scale, position_encoding),
      postprocessor (name 'audio' | 'projection' | 'classification' | 'none',
      samples_per_patch, num_outputs, num_classes)}; build_multimodal.modality_config
      makes one with every field.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
try:
  import ml_collections
except ImportError:  # the modules import without it (bare accelerator hosts); configs need it
  ml_collections = None
from flax import nnx

from perceiver_jax.model import build_multimodal as bmm
from perceiver_jax.model import decoders as dec
from perceiver_jax.model.attention import MLP, MLP_ACTIVATIONS
from perceiver_jax.model import image_processors as img
from perceiver_jax.model import io_processors as io
from perceiver_jax.model import postprocessors as post
from perceiver_jax.model import text_processors as text
from perceiver_jax.model.encoder import PerceiverEncoder
from perceiver_jax.model.perceiver import Perceiver
from perceiver_jax.precision import compute_dtype

Dtype = Any

PREPROCESSORS = ('generic', 'patches', 'image') + bmm.SEQUENCE_PREPROCESSORS + ('multimodal',)
PREPROCESSORS += ('text',)
POSITION_ENCODINGS = ('fourier', 'trainable', 'none')
DECODERS = ('projection', 'classification', 'basic', 'flow', 'video', 'multimodal')
DECODER_QUERY_ENCODINGS = ('trainable', 'fourier')
POSTPROCESSORS = ('auto', 'classification', 'flow', 'none') + bmm.POSTPROCESSORS
POSTPROCESSORS += ('embedding_decoder',)


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
      dtype='float32',  # compute dtype: float32 | bfloat16 | float16 (params stay float32)
      attention_impl=None,
      attention_chunk_size=0,  # keys per chunk of the memory-efficient path; 0 = auto only
      attention_auto_chunk_threshold=2 ** 28,  # chunk when q_len*kv_len > this; 0 = never
      mlp_activation='gelu_tanh',
      preprocessor=dict(name='generic', patch_size=(4,), num_channels=0,
                        position_encoding=_position_encoding_config(),
                        # image only
                        prep_type='conv', spatial_downsample=4, temporal_downsample=1,
                        conv_after_patching=False, conv2d_use_batchnorm=True,
                        conv_padding='same', flow_patch_size=0, n_extra_pos_mlp=0,
                        samples_per_patch=96,  # audio only
                        kernel_size=5, stride=1, pool_size=2,  # conv1d only
                        vocab_size=262, max_seq_len=2048,  # text only
                        min_padding_size=2),  # multimodal only
      encoder=dict(
          num_latents=32, num_latent_channels=64, num_blocks=2,
          num_self_attends_per_block=2, num_cross_attend_heads=1, num_self_attend_heads=4,
          cross_attend_widening_factor=1, self_attend_widening_factor=1, qk_channels=_optional(int),
          v_channels=_optional(int), cross_attention_shape_for_attn='kv', use_query_residual=True,
          dropout_prob=0.0, latent_init_scale=0.02, cross_attend_every_block=False,
          share_cross_attend_weights=True,
          remat='none',  # recompute each block in the backward pass: none | full | dots_saveable
          scan_blocks=True),  # weight-shared blocks as one jax.lax.scan (compiled once)
      decoder=dict(
          name='classification', num_heads=1, qk_channels=_optional(int),
          v_channels=_optional(int), widening_factor=1, use_query_residual=True,
          num_query_channels=_optional(int),
          query_init_scale=0.02, output_index_dims=(1,), output_num_channels=_optional(int),
          final_project=True, position_encoding=query_pe,
          rescale_factor=100.0,  # flow only
          query_chunk_size=0,
          min_padding_size=2),  # multimodal only
      postprocessor=dict(name='auto', flow_scale=1.0,
                         num_outputs=_optional(int), samples_per_patch=_optional(int)),
      modalities=ml_collections.ConfigDict(),  # multimodal only: {name: modality_config}
  ))


def _check_name(kind: str, name: str, valid: tuple[str, ...]):
  if name not in valid:
    raise ValueError(f'Unknown {kind} {name!r}; valid names are '
                     f'{", ".join(repr(v) for v in valid)}.')


def _build_preprocessor(cfg, input_shape, kw):
  if cfg.name in bmm.SEQUENCE_PREPROCESSORS:
    return bmm.build_sequence_preprocessor(cfg, input_shape, kw)
  if cfg.name == 'text':
    return text.TextPreprocessor(
        input_shape, vocab_size=cfg.vocab_size, num_channels=cfg.num_channels,
        max_seq_len=cfg.max_seq_len,
        position_init_scale=cfg.position_encoding.get('init_scale', 0.02), **kw)
  pe_cfg = cfg.position_encoding
  _check_name('preprocessor', cfg.name, PREPROCESSORS)
  _check_name('position encoding', pe_cfg.name, POSITION_ENCODINGS)
  _check_name('position combine mode', pe_cfg.get('combine', 'concat'), io.COMBINE_MODES)
  combine = pe_cfg.get('combine', 'concat')
  if cfg.name == 'image':
    return img.build_image_preprocessor(cfg, input_shape, **kw)
  if cfg.name == 'generic':
    return io.GenericPreprocessor(input_shape, position_encoding=pe_cfg, combine=combine,
                                  **kw)
  patch_size = tuple(cfg.patch_size)
  if len(patch_size) == 1:
    patch_size = patch_size * (len(input_shape) - 1)
  return io.PatchesPreprocessor(input_shape, patch_size, num_channels=cfg.num_channels,
                                position_encoding=pe_cfg, combine=combine, **kw)


def _build_decoder(cfg, num_classes, latent_channels, attention_impl, kw,
                   preprocessor=None, chunking=None):
  _check_name('decoder', cfg.name, DECODERS)
  attn = dict(num_heads=cfg.num_heads, qk_channels=cfg.qk_channels,
              v_channels=cfg.v_channels, widening_factor=cfg.widening_factor,
              use_query_residual=cfg.use_query_residual, attention_impl=attention_impl,
              **(chunking or {}))
  if cfg.name == 'projection':
    return dec.ProjectionDecoder(latent_channels, num_classes, **kw)
  if cfg.name == 'flow':
    # One query per preprocessed pixel: the network inputs themselves.
    return dec.FlowDecoder(
        latent_channels, preprocessor.num_channels, preprocessor.index_dims,
        output_num_channels=cfg.get('output_num_channels') or 2,
        rescale_factor=cfg.get('rescale_factor', 100.0),
        query_chunk_size=cfg.get('query_chunk_size'), **attn, **kw)
  if cfg.name == 'video':
    return bmm.build_video_decoder(cfg, num_classes, latent_channels, attn, kw)
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
      final_project=cfg.get('final_project', True),
      query_chunk_size=cfg.get('query_chunk_size'), **attn, **kw)


def build_model(model_config: ml_collections.ConfigDict, *,
                input_shape: tuple[int, ...] | dict[str, tuple[int, ...]],
                rngs: nnx.Rngs, dtype: Dtype | None = None,
                param_dtype: Dtype = jnp.float32) -> Perceiver:
  """Builds a Perceiver for per-example inputs of `input_shape`, e.g. (40, 1), (8, 8, 1),
  or {modality: shape} for a multimodal model.

  `model_config` is `config.model`. Parameters carry logical-axis metadata
  (`out_sharding`) but are created unsharded; the caller places them on a mesh.
  `dtype` (the compute dtype) defaults to `model_config.dtype`.
  """
  if 'encoder' not in model_config:
    raise ValueError('build_model expects config.model (with preprocessor, encoder and '
                     'decoder fields), not the whole experiment config.')
  input_shape = bmm.input_shapes(input_shape)
  if dtype is None:
    dtype = compute_dtype(model_config.get('dtype', 'float32'))
  kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  impl = model_config.get('attention_impl')
  # Memory-efficient attention selection, handed to every attention block.
  chunking = dict(
      attention_chunk_size=model_config.get('attention_chunk_size', 0) or 0,
      attention_auto_chunk_threshold=model_config.get('attention_auto_chunk_threshold', 0) or 0)
  enc = model_config.encoder
  post_name = model_config.get('postprocessor', {}).get('name', 'auto')
  _check_name('postprocessor', post_name, POSTPROCESSORS)
  # Eager sharding would try to place every Param on a mesh as it is created.
  with nnx.use_eager_sharding(False):
    if model_config.preprocessor.name == 'multimodal':
      preprocessor = bmm.build_multimodal_preprocessor(model_config, input_shape, kw,
                                                       _build_preprocessor)
    else:
      preprocessor = _build_preprocessor(model_config.preprocessor, input_shape, kw)
    if model_config.decoder.name == 'multimodal':
      decoder = bmm.build_multimodal_decoder(model_config, enc.num_latent_channels, impl, kw)
    else:
      decoder = _build_decoder(model_config.decoder, model_config.num_classes,
                               enc.num_latent_channels, impl, kw, preprocessor, chunking)
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
        attention_impl=impl, remat=enc.get('remat', 'none'),
        scan_blocks=enc.get('scan_blocks', True), **chunking, **kw)
    if post_name == 'auto':
      one_query = isinstance(decoder, dec.BasicDecoder) and decoder.num_outputs == 1
      post_name = 'classification' if one_query else 'none'
    postprocessor = None
    if post_name == 'classification':
      if not isinstance(decoder, dec.BasicDecoder) or not decoder.final_project:
        raise ValueError("postprocessor 'classification' needs decoder 'basic' with "
                         "final_project=True (the other decoders already emit logits).")
      postprocessor = post.ClassificationPostprocessor(model_config.num_classes)
    elif post_name in bmm.POSTPROCESSORS:
      postprocessor = bmm.build_postprocessor(model_config, post_name, decoder, kw)
    elif post_name == 'embedding_decoder':
      if not isinstance(preprocessor, text.TextPreprocessor):
        raise ValueError("postprocessor 'embedding_decoder' needs preprocessor 'text' "
                         "(it reuses that embedding table).")
      postprocessor = text.EmbeddingDecoder(preprocessor.embeddings, dtype=dtype,
                                            param_dtype=param_dtype)
    elif post_name == 'flow':
      if not isinstance(decoder, dec.FlowDecoder):
        raise ValueError("postprocessor 'flow' needs decoder 'flow'.")
      postprocessor = post.FlowPostprocessor(
          model_config.postprocessor.get('flow_scale', 1.0))
  model = Perceiver(preprocessor, encoder, decoder, postprocessor)
  _set_mlp_activation(model, model_config.get('mlp_activation', 'gelu_tanh'))
  return model


def _set_mlp_activation(model: nnx.Module, activation: str) -> None:
  # One model-wide choice; set here rather than threaded through every block constructor.
  if activation not in MLP_ACTIVATIONS:
    raise ValueError(f'Unknown model.mlp_activation {activation!r}; valid names are '
                     f'{", ".join(repr(a) for a in MLP_ACTIVATIONS)}.')
  for _, module in nnx.iter_modules(model):
    if isinstance(module, MLP):
      module.activation = activation
