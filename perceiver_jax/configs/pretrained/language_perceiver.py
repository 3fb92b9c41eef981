"""language-perceiver: the byte-level masked language model released with Perceiver IO
(DeepMind's masked_language_modelling colab, language_perceiver_io_bytes.pickle; HF
deepmind/language-perceiver).

Inputs: UTF-8 byte ids [batch, 2048] from perceiver_jax.tokenizer.BytesTokenizer (262
ids: 256 bytes + 6 special), padded with [PAD] = 0 and an input mask. A 768-wide learned
byte embedding plus 2048 learned positions; 256 x 1280 latents, one cross-attend (8
heads) and one block of 26 self-attends (8 heads), qk 256 and v 1280 channels, widening
factor 1; a decoder of 2048 learned 768-wide queries (8 heads, qk 256, v 768, no query
residual, no final projection) whose outputs are scored against the same embedding
table plus a bias: logits [batch, 2048, 262].

Pass the input mask as input_mask (and, as DeepMind's colab does, as query_mask;
HF's model ignores it on the decoder side, which only changes the padded positions).
"""

from perceiver_jax import run
from perceiver_jax.model.build import part

MAX_SEQ_LEN = 2048
D_MODEL = 768
D_LATENTS = 1280
INPUT_SHAPE = (MAX_SEQ_LEN,)


def byte_model(model, *, seq_len: int, d_model: int, d_latents: int, heads: int,
               num_latents: int, num_self_attends: int, qk_channels: int):
  """The language Perceiver's design at any size: a d_model-wide byte embedding and
  seq_len learned positions, num_latents x d_latents latents (one block of
  num_self_attends), one query per byte decoded to d_model channels and scored against
  the same embedding table. Sets model's sections in place."""
  model.preprocessor = part('preprocessor', 'text', num_channels=d_model,
                            max_seq_len=seq_len)
  model.encoder = part('encoder', num_latents=num_latents, num_latent_channels=d_latents,
                       num_blocks=1, num_self_attends_per_block=num_self_attends,
                       num_cross_attend_heads=heads, num_self_attend_heads=heads,
                       qk_channels=qk_channels, v_channels=d_latents)
  model.decoder = part('decoder', 'basic', output_index_dims=(seq_len,),
                       num_query_channels=d_model, num_heads=heads, qk_channels=qk_channels,
                       v_channels=d_model, final_project=False, query_chunk_size=0)
  model.postprocessor = part('postprocessor', 'embedding_decoder')  # the tied table
  return model


def get_config(arg=None):
  del arg
  config = run.default_config()
  config.data.name = 'c4/en'  # the paper pretrains on English Wikipedia + C4 (mlm_c4.py)
  config.model.num_classes = 262
  byte_model(config.model, seq_len=MAX_SEQ_LEN, d_model=D_MODEL, d_latents=D_LATENTS, heads=8,
             num_latents=256, num_self_attends=26, qk_channels=8 * 32)
  # What convert.py needs to build the model without a dataset.
  config.convert = dict(family='language', input_shape=INPUT_SHAPE)
  config.train.batch_size = 8
  config.eval.batch_size = 8
  return config
