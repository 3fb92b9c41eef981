"""Shared part of the three ImageNet classifiers released with Perceiver IO
(DeepMind's imagenet_classification colab; HF deepmind/vision-perceiver-*)."""

from perceiver_jax import run
from perceiver_jax.model.build import part

IMAGE_SHAPE = (224, 224, 3)
# DeepMind's ImageNet input normalisation (per-channel mean and std of RGB in [0, 1]).
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)


def imagenet_classifier_config():
  """Everything but the input preprocessor: 512 x 1024 latents, 8 blocks of 6
  self-attends (weights shared across blocks), 8 self-attend heads, 1 cross-attend head,
  widening factor 1, and a one-query classification decoder -> 1000 logits."""
  config = run.default_config()
  config.data.name = 'imagenet2012'
  model = config.model
  model.num_classes = 1000
  model.encoder = part('encoder')  # PerceiverEncoder's defaults are this architecture
  model.decoder = part('decoder', 'classification', num_query_channels=1024)
  model.postprocessor = part('postprocessor', 'none')
  # Optimiser of DeepMind's train/experiment.py (LAMB; its base_lr 5e-4 is rescaled by
  # the batch size there, so the learning rate is left to the experiment).
  config.optimizer.name = 'lamb'
  config.optimizer.schedule = 'constant_cosine'
  config.optimizer.decay_start_fraction = 0.5
  config.optimizer.warmup_steps = 0
  config.optimizer.weight_decay = 1e-1
  config.optimizer.eps = 1e-6
  config.optimizer.clip_norm = 10.0
  config.task.label_smoothing = 0.1
  # What convert.py needs to build the model without a dataset.
  config.convert = dict(family='vision', input_shape=IMAGE_SHAPE)
  return config
