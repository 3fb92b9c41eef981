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

from configs import common

MAX_SEQ_LEN = 2048
D_MODEL = 768
D_LATENTS = 1280
INPUT_SHAPE = (MAX_SEQ_LEN,)


def get_config(arg=None):
  del arg
  config = common.get_config()
  # The paper pretrains on English Wikipedia + C4; this repo has no text pipeline yet.
  config.data.name = 'c4/en'
  model = config.model
  model.num_classes = 262
  prep = model.preprocessor
  prep.name = 'text'
  prep.vocab_size = 262
  prep.num_channels = D_MODEL
  prep.max_seq_len = MAX_SEQ_LEN
  prep.position_encoding.name = 'trainable'
  prep.position_encoding.init_scale = 0.02
  enc = model.encoder
  enc.num_latents = 256
  enc.num_latent_channels = D_LATENTS
  enc.num_blocks = 1
  enc.num_self_attends_per_block = 26
  enc.num_cross_attend_heads = 8
  enc.num_self_attend_heads = 8
  enc.qk_channels = 8 * 32
  enc.v_channels = D_LATENTS
  enc.cross_attend_widening_factor = 1
  enc.self_attend_widening_factor = 1
  enc.cross_attention_shape_for_attn = 'kv'
  enc.use_query_residual = True
  enc.dropout_prob = 0.0
  enc.latent_init_scale = 0.02
  enc.cross_attend_every_block = False
  dec = model.decoder
  dec.name = 'basic'
  dec.output_index_dims = (MAX_SEQ_LEN,)
  dec.num_query_channels = D_MODEL
  dec.query_init_scale = 0.02
  dec.position_encoding.name = 'trainable'
  dec.num_heads = 8
  dec.qk_channels = 8 * 32
  dec.v_channels = D_MODEL
  dec.widening_factor = 1
  dec.use_query_residual = False
  dec.final_project = False
  dec.query_chunk_size = 0
  model.postprocessor.name = 'embedding_decoder'
  # What convert.py needs to build the model without a dataset.
  config.convert = dict(family='language', input_shape=INPUT_SHAPE)
  config.train.batch_size = 8
  config.eval.batch_size = 8
  return config
