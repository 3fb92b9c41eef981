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

from perceiver_jax import run
from perceiver_jax.model.build import part

TRAIN_SIZE = (368, 496)
INPUT_SHAPE = (2,) + TRAIN_SIZE + (3,)


def get_config(arg=None):
  del arg
  config = run.default_config()
  config.data.name = 'sintel'
  model = config.model
  model.num_classes = 2
  model.preprocessor = part(
      'preprocessor', 'image', prep_type='patches', flow_patch_size=3, spatial_downsample=1,
      temporal_downsample=2, conv_after_patching=True,
      position_encoding=dict(name='fourier', num_bands=64, max_resolution=TRAIN_SIZE))
  model.encoder = part('encoder', num_latents=2048, num_latent_channels=512, num_blocks=1,
                       num_self_attends_per_block=24, num_self_attend_heads=16)
  # FlowDecoder's defaults: 1 head, widening 1, no query residual, 2 channels, / 100.
  model.decoder = part('decoder', 'flow')
  model.postprocessor = part('postprocessor', 'flow', flow_scale=20.0)
  config.train.batch_size = 1
  config.eval.batch_size = 1
  # What convert.py needs to build the model without a dataset.
  config.convert = dict(family='vision', input_shape=INPUT_SHAPE)
  return config
