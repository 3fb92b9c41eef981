"""vision-perceiver-conv: Perceiver IO on ImageNet after a conv stem (7x7/2 conv with 64
channels, BatchNorm, ReLU, 3x3/2 max-pool: 224x224 -> 56x56) and 2-D Fourier features
(64 bands, max_resolution 56): 64 + 258 = 322 input channels per position.

conv_padding='same' is DeepMind's TF SAME padding (56x56 features); HF's port pads
differently and yields 55x55 (--config.model.preprocessor.conv_padding=transformers).
"""

from perceiver_jax.configs.pretrained import _vision
from perceiver_jax.model.build import part

INPUT_SHAPE = _vision.IMAGE_SHAPE


def get_config(arg=None):
  del arg
  config = _vision.imagenet_classifier_config()
  # ImagePreprocessor's defaults: prep_type 'conv', spatial_downsample 4, 64 channels.
  config.model.preprocessor = part(
      'preprocessor', 'image',
      position_encoding=dict(name='fourier', num_bands=64, max_resolution=(56, 56)))
  return config
