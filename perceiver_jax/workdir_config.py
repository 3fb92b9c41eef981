"""The config a workdir was trained with: WORKDIR/config.json, written and read back.

Configs hold only JSON scalars, tuples and nested sections, so reading turns JSON lists
back into tuples and the result equals the config the run was started with.
"""

from __future__ import annotations

import json
import os

import ml_collections

from perceiver_jax.errors import UserError

FILENAME = 'config.json'


def path(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)


def write(workdir: str, config) -> None:
  with open(path(workdir), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def read(workdir: str) -> ml_collections.ConfigDict:
  """The workdir's config, locked like a config file's; one sentence if it is missing or
  unreadable."""
  file = path(workdir)
  if not os.path.isfile(file):
    raise UserError(f'{file} does not exist: pass the workdir of a training or convert run, '
                    'or give the config with --config.')
  try:
    with open(file) as f:
      fields = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f'{file} is not a readable config ({e}); pass the config with '
                    '--config.') from None
  if not isinstance(fields, dict) or not isinstance(fields.get('model'), dict):
    raise UserError(f'{file} does not hold a perceiver_jax config (no "model" section); '
                    'pass the config with --config.')
  config = ml_collections.ConfigDict(_tuples(fields))
  config.lock()
  return config


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """The config-file entry point: --config=PATH/workdir_config.py:WORKDIR loads the workdir's
  config through the config flag, so --config.x=y overrides apply to it (eval.py without
  --config)."""
  return read(workdir)
