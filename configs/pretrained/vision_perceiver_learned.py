"""vision-perceiver-learned: Perceiver IO on ImageNet with a 1x1 conv (3 -> 256) over the
224x224 pixels and a learned position encoding (50176 x 256, projected to 256),
concatenated: 512 input channels per pixel.

DeepMind's imagenet_classification colab (checkpoint imagenet_learned_position_encoding)
decodes without the query residual; HF's PerceiverForImageClassificationLearned uses it
(set --config.model.decoder.use_query_residual=True to reproduce HF's outputs).
"""

from configs.pretrained import _vision

INPUT_SHAPE = _vision.IMAGE_SHAPE


def get_config(arg=None):
  del arg
  config = _vision.imagenet_classifier_config()
  prep = config.model.preprocessor
  prep.name = 'image'
  prep.prep_type = 'conv1x1'
  prep.spatial_downsample = 1
  prep.num_channels = 256
  pos = prep.position_encoding
  pos.name = 'trainable'
  pos.num_channels = 256
  pos.init_scale = 0.02
  pos.project_pos_dim = 256
  pos.combine = 'concat'
  config.model.decoder.use_query_residual = False
  return config
