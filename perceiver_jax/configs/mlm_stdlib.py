"""Byte-level masked language modelling on Python's standard library (embedded, offline).

The language Perceiver's architecture (configs/pretrained/language_perceiver.py: learned byte
embedding + positions, one cross-attend, one block of self-attends, encoder v width = the
latent width and decoder v width = the embedding width as there, qk width = the embedding
width, widening factor 1, a basic decoder with one learned query per byte position, logits
from the tied embedding table) at a size that trains on a laptop CPU, on 512-byte windows of
the stdlib's .py files (python_stdlib/full). Objective: whole-word masking of 15% of the
words (80% [MASK] / 10% random byte / 10% unchanged, perceiver_jax/tasks/mlm.py); reported:
masked-byte accuracy and bits per byte on the test split (masked with a fixed seed, as
benchmarks/baselines.py masks it for the unigram baseline).

  python train.py --config=configs/mlm_stdlib.py --workdir=workdirs/mlm_stdlib

Variants (configs/mlm_stdlib.py:runlocal,steps=N):
  runlocal   python_stdlib/tiny (128-byte windows), a tiny model, a few steps: for tests
  steps=N    training steps (default: the recipe's)
"""

from perceiver_jax import run
from perceiver_jax.configs.pretrained import language_perceiver
from perceiver_jax import tasks
from perceiver_jax.tokenizer import VOCAB_SIZE  # 256 bytes + the special ids


def get_config(arg=None):
  config = run.default_config()
  variant = run.parse_variant(arg, runlocal=False, steps=0)
  # Whole-word masking (perceiver_jax/tasks/mlm.py).
  config.task = tasks.task_config(
      'mlm', mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1,
      word_definition='code',  # identifiers and operator runs are words
      eval_mask_seed=1)        # fixed: eval scores compare across runs
  config.data.name = 'python_stdlib/tiny' if variant.runlocal else 'python_stdlib/full'

  seq_len = 128 if variant.runlocal else 512  # the dataset's window
  d_model = 32 if variant.runlocal else 128   # byte embedding = decoder query width
  d_latents = 64 if variant.runlocal else 256
  heads = 2 if variant.runlocal else 4

  config.model.num_classes = VOCAB_SIZE
  # The language Perceiver's design (one query per byte, tied embedding) at CPU size.
  language_perceiver.byte_model(
      config.model, seq_len=seq_len, d_model=d_model, d_latents=d_latents, heads=heads,
      num_latents=16 if variant.runlocal else 128,
      num_self_attends=2 if variant.runlocal else 6, qk_channels=d_model)

  local = variant.runlocal
  # 1400 steps (2.1 epochs) and 2 evals fit the 30-minute budget (docs/results.md).
  config.train.update(batch_size=8 if local else 32,
                      num_steps=variant.steps or (4 if local else 1400),
                      log_every_steps=2 if local else 50, eval_every_steps=0 if local else 700)
  config.optimizer.update(name='adamw', learning_rate=1e-3, warmup_steps=1 if local else 100,
                          weight_decay=1e-2)
  # Latent telemetry draws images of continuous inputs and ignores the input mask: off.
  config.eval.update(batch_size=32 if local else 256, telemetry_examples=0)
  config.checkpoint.every_steps = 2 if local else 350
  return config
