"""Text input/output processors for the byte-level language Perceiver (MLM).

TextPreprocessor: token ids [batch, seq] -> learned token embedding + learned position
embedding [batch, seq, d_model] (DeepMind's colab: hk.Embed + TrainablePositionEncoding;
HF: PerceiverTextPreprocessor).
EmbeddingDecoder: decoder outputs [batch, M, d_model] -> vocabulary logits with the
transpose of the *same* embedding table plus a bias (DeepMind: io_processors.EmbeddingDecoder;
HF: PerceiverEmbeddingDecoder). The table is one nnx.Param shared by both modules.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from perceiver_jax.model import checks
from perceiver_jax.model.io_processors import PreprocessorOutput
from perceiver_jax.model.partitioning import logical_axes
from perceiver_jax.model.position_encoding import TrainablePositionEncoding

Dtype = Any

# The byte vocabulary the language Perceiver reads: 256 UTF-8 byte values shifted past the
# special ids [PAD] [BOS] [EOS] [MASK] [CLS] [SEP]. perceiver_jax/tokenizer.py encodes into it.
NUM_SPECIAL_TOKENS = 6
VOCAB_SIZE = 256 + NUM_SPECIAL_TOKENS


class TextPreprocessor(nnx.Module):
  """Token ids [batch, seq] (seq <= max_seq_len) -> PreprocessorOutput with
  inputs = embed(ids) + positions[:seq], inputs_without_pos = embed(ids); both
  [batch, seq, num_channels]."""
  HAIKU_NAMES = {'embeddings': 'embed/embeddings',
                 'pos_enc': 'trainable_position_encoding'}

  def __init__(self, input_shape: Sequence[int], *, vocab_size: int = VOCAB_SIZE,
               num_channels: int = 768, max_seq_len: int = 2048,
               embedding_init_scale: float = 0.02, position_init_scale: float = 0.02,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    input_shape = tuple(int(n) for n in input_shape)
    if len(input_shape) != 1:
      raise ValueError(f'The text preprocessor takes token ids of per-example shape (seq,), '
                       f'got {input_shape}; pass input_shape=(sequence_length,).')
    checks.positive(vocab_size=vocab_size, max_seq_len=max_seq_len)
    if input_shape[0] > max_seq_len:
      raise ValueError(f'Sequence length {input_shape[0]} exceeds '
                       f'preprocessor.max_seq_len={max_seq_len}; raise it or truncate.')
    if num_channels < 1:
      raise ValueError(f'The text embedding width must be >= 1, got {num_channels}; set '
                       f'preprocessor.num_channels (768 for the released model).')
    self.input_shape = input_shape
    self.index_dims = input_shape
    self.vocab_size = int(vocab_size)
    self.num_channels = int(num_channels)
    self.max_seq_len = int(max_seq_len)
    self.dtype = dtype
    init = jax.nn.initializers.truncated_normal(stddev=embedding_init_scale)
    self.embeddings = nnx.Param(init(rngs.params(), (self.vocab_size, self.num_channels),
                                     param_dtype),
                                **logical_axes(('vocab', 'input_channels')))
    self.pos_enc = TrainablePositionEncoding(
        self.max_seq_len, self.num_channels, init_scale=position_init_scale,
        channel_name='input_channels', index_name=None, dtype=dtype,
        param_dtype=param_dtype, rngs=rngs)

  def __call__(self, inputs: jax.Array, *, pos: jax.Array | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None
               ) -> PreprocessorOutput:
    del pos, deterministic, rngs  # learned positions; no dropout
    if inputs.ndim != 2 or not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f'TextPreprocessor expects integer token ids [batch, seq], got '
                       f'{inputs.dtype} {list(inputs.shape)}.')
    seq_len = inputs.shape[1]
    if seq_len > self.max_seq_len:
      raise ValueError(f'Got {seq_len} tokens but max_seq_len is {self.max_seq_len}; '
                       f'truncate the inputs or build with a larger max_seq_len.')
    table = self.embeddings[...].astype(self.dtype)
    without_pos = jnp.take(table, inputs, axis=0)
    # The first seq_len learned positions (HF's position_ids = arange(seq_len)).
    pos_enc = self.pos_enc(None)[:seq_len][None].astype(self.dtype)
    return PreprocessorOutput(without_pos + pos_enc, without_pos,
                              jnp.broadcast_to(pos_enc, without_pos.shape))


class EmbeddingDecoder(nnx.Module):
  """Decoder outputs [batch, M, C] -> logits [batch, M, vocab] = outputs @ table^T + bias.

  `embeddings` is the TextPreprocessor's table Param itself (tied, not copied).
  """
  HAIKU_NAMES = {'bias': 'embedding_decoder/bias',
                 'embeddings': 'embed/embeddings (tied)'}

  def __init__(self, embeddings: nnx.Param, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None = None):
    del rngs  # the bias starts at zero, as in both references
    self.embeddings = embeddings
    self.vocab_size, self.num_channels = embeddings.shape
    self.dtype = dtype
    self.bias = nnx.Param(jnp.zeros((self.vocab_size,), param_dtype), **logical_axes(('vocab',)))

  def __call__(self, outputs: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    if outputs.shape[-1] != self.num_channels:
      raise ValueError(f'EmbeddingDecoder expects decoder outputs with {self.num_channels} '
                       f'channels (the embedding width) but got {list(outputs.shape)}; '
                       f'set decoder.final_project=False and query channels = embedding width.')
    table = self.embeddings[...].astype(self.dtype)
    logits = jnp.einsum('bmc,vc->bmv', outputs.astype(self.dtype), table)
    return logits + self.bias[...].astype(self.dtype)
