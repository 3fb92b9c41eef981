"""Checkpoints written by an earlier version restore into today's models, value for value.

tests/fixtures/checkpoints holds one tiny train.py checkpoint per model kind, written by
tools/make_checkpoint_compat_fixtures.py at the commit named in its index.json. A change
that renames, drops or reshapes a parameter or a model variable (BatchNorm statistics)
fails here instead of orphaning every checkpoint and converted model users have.
"""

import importlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from flax import traverse_util

from perceiver_jax import checkpoint as ckpt
from perceiver_jax.model.build import build_model
from tests import helpers

FIXTURES = os.path.join(helpers.ROOT, 'tests', 'fixtures', 'checkpoints')
with open(os.path.join(FIXTURES, 'index.json')) as _f:
  INDEX = json.load(_f)


def fixture_config(name: str):
  """The config the fixture was trained with, built by today's configs/."""
  entry = INDEX['fixtures'][name]
  config = importlib.import_module(f'configs.{entry["config"]}').get_config(entry['arg'])
  return helpers.set_dotted(config, {**INDEX['small'], **INDEX['run'], **entry['overrides']})


def input_shape(name: str):
  shape = INDEX['fixtures'][name]['input_shape']
  return {m: tuple(s) for m, s in shape.items()} if isinstance(shape, dict) else tuple(shape)


def flat(tree) -> dict:
  return {'/'.join(map(str, k)): v for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.mark.parametrize('name', sorted(INDEX['fixtures']))
def test_old_checkpoint_restores_into_todays_model(name):
  saved = np.load(os.path.join(FIXTURES, name, 'weights.npz'))
  model = nnx.eval_shape(lambda: build_model(fixture_config(name).model,
                                             input_shape=input_shape(name), rngs=nnx.Rngs(0)))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  today = {**{f'params/{k}': v for k, v in flat(params).items()},
           **{f'model_state/{k}': v for k, v in flat(rest).items()}}
  assert sorted(today) == sorted(saved.files), (
      f'parameter paths changed: only today {sorted(set(today) - set(saved.files))}, '
      f'only in the old checkpoint {sorted(set(saved.files) - set(today))}')
  for key, value in today.items():
    assert tuple(value.shape) == saved[key].shape, (key, value.shape, saved[key].shape)

  # Restored the way eval.py and init_from restore: into today's abstract targets.
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = lambda tree: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)
  step = INDEX['fixtures'][name]['step']
  restored_params, restored_state = ckpt.restore_weights(
      os.path.join(FIXTURES, name, 'checkpoints', str(step), 'state'), target(params),
      target(rest))
  restored = {**{f'params/{k}': v for k, v in flat(restored_params).items()},
              **{f'model_state/{k}': v for k, v in flat(restored_state).items()}}
  for key in saved.files:
    np.testing.assert_array_equal(np.asarray(restored[key]), saved[key], err_msg=key)


def test_old_digits_checkpoint_evaluates_as_it_did(tmp_path):
  """eval.py on the old digits workdir gives the accuracy its own run measured."""
  workdir = str(tmp_path / 'digits')
  shutil.copytree(os.path.join(FIXTURES, 'digits'), workdir)
  entry = INDEX['fixtures']['digits']
  overrides = {**INDEX['small'], **INDEX['run'], **entry['overrides'],
               'data.data_dir': str(tmp_path / 'tfds')}
  # The fixture's 2x2-patch model is today's digits variant tokens=patches (index.json).
  config_flag = f'--config=configs/digits.py:{entry["arg"]}' if entry['arg'] else (
      '--config=configs/digits.py')
  helpers.run_main('eval.py', [config_flag, f'--workdir={workdir}',
                               *helpers.flags_for(overrides)])
  with open(os.path.join(workdir, f'eval_{entry["step"]}.json')) as f:
    result = json.load(f)
  assert result['accuracy'] == entry['eval']['accuracy']
  np.testing.assert_allclose(result['loss'], entry['eval']['loss'], rtol=1e-5)
