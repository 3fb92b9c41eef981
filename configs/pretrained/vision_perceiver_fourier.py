"""vision-perceiver-fourier: Perceiver IO on ImageNet on the raw 224x224 RGB pixels
concatenated with 2-D Fourier features (64 bands per axis, max_resolution 224, sin and
cos, raw position): 3 + 2 * (2 * 64 + 1) = 261 input channels per pixel.
"""

from configs.pretrained import _vision

INPUT_SHAPE = _vision.IMAGE_SHAPE


def get_config(arg=None):
  del arg
  config = _vision.imagenet_classifier_config()
  prep = config.model.preprocessor
  prep.name = 'image'
  prep.prep_type = 'pixels'
  prep.spatial_downsample = 1
  pos = prep.position_encoding
  pos.name = 'fourier'
  pos.num_bands = 64
  pos.max_resolution = (224, 224)
  pos.concat_pos = True
  pos.sine_only = False
  pos.project_pos_dim = -1
  pos.combine = 'concat'
  return config
