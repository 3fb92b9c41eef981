"""Perceiver on scikit-learn's 8x8 handwritten digits (embedded, prepares offline).

The default experiment: `make train` trains this on a laptop CPU in about a minute.
  python -m perceiver_jax.trainer --config=configs/digits.py --workdir=workdirs/digits

The original Perceiver's iterative form (a cross-attend before every latent block, weights
shared after the first) with two cross-attend heads over 2x2 patches: on 1437 training
images it generalises better than one cross-attend with one head.
"""

from perceiver_jax import run
from perceiver_jax.model.build import part


def get_config(arg=None):
  config = run.default_config()
  variant = run.parse_variant(arg, steps=800)

  config.data.name = 'digits'
  config.data.normalize = (8.0, 8.0)  # raw values are 0..16 -> [-1, 1]

  model = config.model
  model.num_classes = 10
  model.preprocessor = part('preprocessor', 'patches', patch_size=(2, 2), num_channels=64,
                            position_encoding=dict(num_bands=8))  # on the 4x4 patch grid
  # The defaults' 32 x 64 latents, 2 blocks of 2 self-attends (4 heads), iterative.
  model.encoder.cross_attend_every_block = True
  model.encoder.num_cross_attend_heads = 2
  model.encoder.dropout_prob = 0.2

  config.train.update(batch_size=64, num_steps=variant.steps, log_every_steps=100)
  config.task.label_smoothing = 0.1
  config.eval.batch_size = 360
  config.optimizer.update(learning_rate=1e-3, warmup_steps=100, weight_decay=1e-2)
  config.checkpoint.every_steps = 400
  return config
