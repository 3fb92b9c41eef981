"""Shared test utilities: tiny configs and running the real command-line mains."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small Perceiver on MNIST-1D that compiles and steps in well under a second on CPU.
TINY = {
    'model.preprocessor.num_channels': 16,
    'model.preprocessor.position_encoding.num_bands': 4,
    'model.encoder.num_latents': 8,
    'model.encoder.num_latent_channels': 32,
    'model.encoder.num_blocks': 2,
    'model.encoder.num_self_attends_per_block': 1,
    'model.encoder.num_self_attend_heads': 2,
    'model.encoder.dropout_prob': 0.1,
    'train.batch_size': 16,
    'train.log_every_steps': 1,
    'train.eval_every_steps': 0,
    'eval.batch_size': 200,
    'optimizer.warmup_steps': 2,
    'eval.telemetry_examples': 0,  # tests/test_telemetry.py turns it on
}


def tiny_mnist1d_config(**overrides):
  """configs/mnist1d.py shrunk to TINY, with dotted-key overrides."""
  from configs import mnist1d
  config = mnist1d.get_config()
  for key, value in {**TINY, **overrides}.items():
    *path, leaf = key.split('.')
    node = config
    for part in path:
      node = node[part]
    node[leaf] = value
  return config


def flags_for(overrides: dict) -> list[str]:
  out = []
  for key, value in overrides.items():
    out.append(f'--config.{key}={value}')
  return out


def run_main(script: str, args: list[str], *, devices: int = 8, check: bool = True,
             timeout: int = 600) -> subprocess.CompletedProcess:
  """Runs train.py / eval.py in a fresh process with `devices` fake CPU devices."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}')
  return proc


def prepared_data_dir(tmp_path_factory, name: str = 'mnist1d/plain') -> str:
  """A fresh TFDS data dir (for a module-scoped fixture) with embedded dataset `name` built."""
  from perceiver_jax.data import pipeline
  path = str(tmp_path_factory.mktemp('tfds'))
  pipeline.prepare(name, path)
  return path
