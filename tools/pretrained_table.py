"""Prints the released architectures (configs/pretrained/*.py) with their parameter counts.

  python tools/pretrained_table.py

Each model is built abstractly (jax.eval_shape): nothing is allocated, so the full-size
models are counted in seconds on a laptop. docs/models.md's counts come from this.
"""

from __future__ import annotations

import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NAMES = ('language_perceiver', 'vision_perceiver_learned', 'vision_perceiver_fourier',
         'vision_perceiver_conv', 'optical_flow_perceiver', 'multimodal_perceiver')


def count(name: str) -> tuple[int, object]:
  from flax import nnx

  from perceiver_jax.convert.to_checkpoint import model_input_shape
  from perceiver_jax.model.build import build_model
  from perceiver_jax.model.summary import count_params
  config = importlib.import_module(f'configs.pretrained.{name}').get_config()
  shape = model_input_shape(config)
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: build_model(config.model, input_shape=shape,
                                               rngs=nnx.Rngs(0)))
  return count_params(model), shape


def main() -> None:
  print('| config | input shape (per example) | parameters |')
  print('|---|---|---|')
  for name in NAMES:
    params, shape = count(name)
    print(f'| configs/pretrained/{name}.py | {shape} | {params:,} |', flush=True)


if __name__ == '__main__':
  main()
