"""optical-flow-perceiver: Perceiver IO for optical flow (DeepMind's optical_flow colab,
HF deepmind/optical-flow-perceiver), on two 368x496 RGB frames.

Inputs [batch, 2, 368, 496, 3] (frames scaled to [-1, 1]). Each pixel of each frame
becomes its 3x3 neighbourhood (27 values); the two frames are stacked per pixel (54),
mapped by a linear layer to 64 channels and concatenated with 2-D Fourier features
(64 bands, max_resolution 368x496): 322 channels for each of 368*496 = 182528 inputs.
2048 x 512 latents, one block of 24 self-attends with 16 heads, and a decoder whose
queries are the 182528 preprocessed inputs themselves, giving flow [batch, 368, 496, 2]
(divided by 100 in the decoder and multiplied by 20 here, DeepMind's FLOW_SCALE_FACTOR,
so the output is in pixels; HF's model stops before the x20: flow_scale=1).
Decoding all 182528 queries at once needs [batch, 182528, 2048] attention weights;
--config.model.decoder.query_chunk_size=N decodes N pixels at a time (same outputs).
"""

from configs import common

TRAIN_SIZE = (368, 496)
INPUT_SHAPE = (2,) + TRAIN_SIZE + (3,)


def get_config(arg=None):
  del arg
  config = common.get_config()
  config.data.name = 'sintel'
  model = config.model
  model.num_classes = 2
  prep = model.preprocessor
  prep.name = 'image'
  prep.prep_type = 'patches'
  prep.flow_patch_size = 3
  prep.spatial_downsample = 1
  prep.temporal_downsample = 2
  prep.conv_after_patching = True
  prep.num_channels = 64
  prep.n_extra_pos_mlp = 0
  pos = prep.position_encoding
  pos.name = 'fourier'
  pos.num_bands = 64
  pos.max_resolution = TRAIN_SIZE
  pos.concat_pos = True
  pos.sine_only = False
  pos.project_pos_dim = -1
  pos.combine = 'concat'
  enc = model.encoder
  enc.num_latents = 2048
  enc.num_latent_channels = 512
  enc.num_blocks = 1
  enc.num_self_attends_per_block = 24
  enc.num_cross_attend_heads = 1
  enc.num_self_attend_heads = 16
  enc.cross_attend_widening_factor = 1
  enc.self_attend_widening_factor = 1
  enc.cross_attention_shape_for_attn = 'kv'
  enc.use_query_residual = True
  enc.dropout_prob = 0.0
  enc.latent_init_scale = 0.02
  dec = model.decoder
  dec.name = 'flow'
  dec.num_heads = 1
  dec.widening_factor = 1
  dec.use_query_residual = False
  dec.output_num_channels = 2
  dec.rescale_factor = 100.0
  model.postprocessor.name = 'flow'
  model.postprocessor.flow_scale = 20.0
  config.train.batch_size = 1
  config.eval.batch_size = 1
  # What convert.py needs to build the model without a dataset.
  config.convert = dict(family='vision', input_shape=INPUT_SHAPE)
  return config
