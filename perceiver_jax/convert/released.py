"""Which released model (configs/pretrained/) a converted file's parameter layout matches.

Weight sharing hides the block count: a file holds one block of self-attends whether the
model applies it 1 or 8 times, so a config with the wrong `num_blocks` converts without
complaint and runs wrong. The layout (every parameter's path and shape) still tells the
released models apart; this module names the ones a converted model matches, so the
conversion can say which `num_blocks` that model was released with.
"""

from __future__ import annotations

import importlib
import pkgutil

import ml_collections
from flax import nnx

from perceiver_jax.convert.common import variable_paths
from perceiver_jax.errors import UserError
from perceiver_jax.model.build import build_model

PACKAGE = 'perceiver_jax.configs.pretrained'


def model_input_shape(config):
  """Per-example input shape of a pretrained config (a dict for multimodal models)."""
  shape = config.get('convert', {}).get('input_shape')
  if shape is None:
    raise UserError('config.convert.input_shape is not set; use a config from '
                    'configs/pretrained/ or set it to the per-example input shape.')
  if isinstance(shape, (dict, ml_collections.ConfigDict)):
    return {k: tuple(int(n) for n in v) for k, v in dict(shape).items()}
  return tuple(int(n) for n in shape)


def layout(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  """{parameter path: shape} of every Param and BatchStat."""
  variables, _ = variable_paths(model)
  return {path: tuple(v.get_value().shape) for path, v in variables.items()}


def _released_configs(family: str) -> dict[str, object]:
  """{module name: config} of the released configs of `family`."""
  package = importlib.import_module(PACKAGE)
  out = {}
  for info in pkgutil.iter_modules(package.__path__):
    if info.name.startswith('_'):
      continue
    config = importlib.import_module(f'{PACKAGE}.{info.name}').get_config()
    if config.get('convert', {}).get('family') == family:
      out[info.name] = config
  return out


def _latents(config) -> tuple[int, int]:
  encoder = config.model.encoder
  return int(encoder.num_latents), int(encoder.num_latent_channels)


def matching(model: nnx.Module, config, input_shape) -> list[tuple[str, object]]:
  """[(name, released config)] whose model has exactly `model`'s layout. `config` and
  `input_shape` are what `model` was built from: a released config with the same model
  section and input shape matches without being built, and one whose latent array differs
  cannot match, so only the rest are built (abstractly)."""
  family = config.get('convert', {}).get('family')
  ours = None
  out = []
  for name, released in _released_configs(family).items():
    if (released.model.to_dict() == config.model.to_dict()
        and model_input_shape(released) == input_shape):
      out.append((name, released))
      continue
    if _latents(released) != _latents(config):
      continue
    ours = ours or layout(model)
    theirs = nnx.eval_shape(lambda r=released: build_model(
        r.model, input_shape=model_input_shape(r), rngs=nnx.Rngs(0)))
    if layout(theirs) == ours:
      out.append((name, released))
  return out


def describe(config, matches: list[tuple[str, object]]) -> str:
  """One sentence: the released configs a layout matches (`matching`) and their num_blocks
  against `config`'s, or that it matches none."""
  blocks = int(config.model.encoder.num_blocks)
  if not matches:
    return (f'The parameter layout matches no released config in configs/pretrained/ of '
            f'family {config.convert.family!r}; num_blocks={blocks} comes from this config '
            'alone (shared weights do not show it).')
  named = ', '.join(f'configs/pretrained/{name}.py (num_blocks='
                    f'{int(c.model.encoder.num_blocks)})' for name, c in matches)
  sentence = (f'The parameter layout matches {named}; this config has num_blocks={blocks}')
  if all(int(c.model.encoder.num_blocks) != blocks for _, c in matches):
    return (sentence + ', which shared weights cannot confirm: set '
            '--config.model.encoder.num_blocks to the released value if the file is that '
            'model.')
  return sentence + '.'
