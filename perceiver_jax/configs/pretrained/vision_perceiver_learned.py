"""vision-perceiver-learned: Perceiver IO on ImageNet with a 1x1 conv (3 -> 256) over the
224x224 pixels and a learned position encoding (50176 x 256, projected to 256),
concatenated: 512 input channels per pixel.

DeepMind's imagenet_classification colab (checkpoint imagenet_learned_position_encoding)
decodes without the query residual; HF's PerceiverForImageClassificationLearned uses it
(set --config.model.decoder.use_query_residual=True to reproduce HF's outputs).
"""

from perceiver_jax.configs.pretrained import _vision
from perceiver_jax.model.build import part

INPUT_SHAPE = _vision.IMAGE_SHAPE


def get_config(arg=None):
  del arg
  config = _vision.imagenet_classifier_config()
  config.model.preprocessor = part(
      'preprocessor', 'image', prep_type='conv1x1', spatial_downsample=1, num_channels=256,
      position_encoding=dict(name='trainable', num_channels=256, project_pos_dim=256))
  config.model.decoder.use_query_residual = False
  return config
