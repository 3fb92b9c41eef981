"""The configs a workdir was trained with: WORKDIR/config.json, written and read back.

config.json is the config the run was started with and is never rewritten; a resume at
step S whose config differs writes config.S.json beside it, so every recipe a run used is
kept and the one that trained step N is the newest written before it.

Configs hold only JSON scalars, tuples and nested sections, so reading turns JSON lists
back into tuples and the result equals the config the run was started with.
"""

from __future__ import annotations

import json
import os
import re

import ml_collections

from perceiver_jax.errors import UserError

FILENAME = 'config.json'


_RESUMED = re.compile(r'config\.(\d+)\.json$')


def path(workdir: str, step: int | None = None) -> str:
  """config.json, or config.<step>.json: the config of a resume at `step`."""
  return os.path.join(workdir, FILENAME if step is None else f'config.{step}.json')


def write(workdir: str, config, step: int | None = None) -> None:
  # Whole or not at all: a run killed mid-write must not leave a config that cannot be read.
  file = path(workdir, step)
  with open(file + '.tmp', 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(file + '.tmp', file)


def resumed_steps(workdir: str) -> list[int]:
  """Steps at which the run was resumed with another config, oldest first."""
  names = os.listdir(workdir) if os.path.isdir(workdir) else []
  return sorted(int(m.group(1)) for m in map(_RESUMED.match, names) if m)


def path_for_step(workdir: str, step: int) -> str | None:
  """The file of the config that trained step `step` (the newest one written at a step
  before it), or None if the workdir holds none."""
  earlier = [s for s in resumed_steps(workdir) if s < step]
  if earlier:
    return path(workdir, earlier[-1])
  return path(workdir) if os.path.isfile(path(workdir)) else None


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def read(workdir: str, file: str | None = None) -> ml_collections.ConfigDict:
  """The workdir's config (or the config file `file` in it), locked like a config file's;
  one sentence if it is missing or unreadable."""
  file = file or path(workdir)
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


def read_for_step(workdir: str, step: int) -> ml_collections.ConfigDict:
  """The config that trained checkpoint `step` (config.json unless a resume before it
  changed the config); one sentence if there is none or it is unreadable."""
  return read(workdir, path_for_step(workdir, step))


def newest_path(workdir: str) -> str:
  """config.<S>.json of the latest resume that changed the config, else config.json."""
  steps = resumed_steps(workdir)
  return path(workdir, steps[-1]) if steps else path(workdir)


# get_config's argument WORKDIR@step=N: the config that trained step N.
STEP_MARK = '@step='


def get_config(arg: str) -> ml_collections.ConfigDict:
  """The config-file entry point: --config=PATH/workdir_config.py:WORKDIR loads the workdir's
  config through the config flag, so --config.x=y overrides apply to it (eval.py without
  --config). The newest config (the one that trained the latest checkpoint), or with
  WORKDIR@step=N the one that trained step N."""
  workdir, mark, step = arg.rpartition(STEP_MARK)
  if mark and step.isdigit():
    return read_for_step(workdir, int(step))
  return read(arg, newest_path(arg))
