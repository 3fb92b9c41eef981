"""vision-perceiver-fourier: Perceiver IO on ImageNet on the raw 224x224 RGB pixels
concatenated with 2-D Fourier features (64 bands per axis, max_resolution 224, sin and
cos, raw position): 3 + 2 * (2 * 64 + 1) = 261 input channels per pixel.
"""

from perceiver_jax.configs.pretrained import _vision
from perceiver_jax.model.build import part

INPUT_SHAPE = _vision.IMAGE_SHAPE


def get_config(arg=None):
  del arg
  config = _vision.imagenet_classifier_config()
  config.model.preprocessor = part(
      'preprocessor', 'image', prep_type='pixels', spatial_downsample=1,
      position_encoding=dict(name='fourier', num_bands=64, max_resolution=(224, 224)))
  return config
