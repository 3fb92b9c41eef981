"""Perceiver AR: next-byte prediction over long contexts of Python's standard library.

The stdlib's .py files, split by file (5% test), packed with a zero byte between files
into 16385-byte windows (python_stdlib/packed, prepared offline on first use). An example
is `context` + 1 consecutive bytes of a window: the last `num_latents` positions are the
latents and each predicts the byte after it (perceiver_jax/tasks/causal_lm.py). Evaluation
predicts the same bytes (each window's last ones) whatever the context, so bits per byte
compare across contexts.

  python train.py --config=configs/perceiver_ar_stdlib.py --workdir=workdirs/ar_stdlib
  python sample.py --workdir=workdirs/ar_stdlib --prompt='def main(' --num_tokens=200

Variants (configs/perceiver_ar_stdlib.py:context=4096,steps=N):
  context=N    bytes of context (default 1024; at most 16384, the dataset's windows)
  latents=M    latent positions (default 128): the compute per step, whatever the context
  steps=N      training steps (default: the recipe's)
  runlocal     python_stdlib/packed_tiny (513-byte windows), a tiny model, a few steps
"""

from perceiver_jax import run
from perceiver_jax import tasks
from perceiver_jax.model.build import perceiver_ar_model_config


def get_config(arg=None):
  config = run.default_config()
  variant = run.parse_variant(arg, runlocal=False, context=0, latents=0, steps=0,
                             prefix_dropout=0.0)
  local = variant.runlocal
  context = variant.context or (128 if local else 1024)
  latents = variant.latents or (32 if local else 128)
  config.data.name = 'python_stdlib/packed_tiny' if local else 'python_stdlib/packed'
  config.task = tasks.task_config('causal_lm', context=context)
  config.model = perceiver_ar_model_config(
      max_context=context, num_latents=latents,
      num_channels=32 if local else 128, num_heads=2 if local else 4,
      num_self_attends=2 if local else 4, widening_factor=4,
      rotary_fraction=0.5,  # rotary on half of each head's q/k channels, as the paper
      prefix_dropout=variant.prefix_dropout)
  config.train.update(batch_size=8 if local else 16,
                      num_steps=variant.steps or (4 if local else 1200),
                      log_every_steps=2 if local else 50,
                      eval_every_steps=0 if local else 600)
  config.optimizer.update(name='adamw', learning_rate=1e-3,
                          warmup_steps=1 if local else 100, weight_decay=1e-2)
  # Latent telemetry draws images of continuous inputs: off for token models.
  config.eval.update(batch_size=8 if local else 32, telemetry_examples=0)
  config.checkpoint.every_steps = 2 if local else 600
  return config
