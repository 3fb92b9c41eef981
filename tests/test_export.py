"""perceiver-export: the forward pass as StableHLO, reloaded with jax alone.

The exported program runs in a fresh process that imports jax and numpy only (it asserts
no perceiver_jax module is loaded) on batches of two sizes (the batch is symbolic) and
must match Predictor.predict to 1e-6.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import digits
from perceiver_jax.convert import to_checkpoint
from perceiver_jax.errors import UserError
from perceiver_jax.export import export
from perceiver_jax.predict import load
from perceiver_jax.run import abstract_model
from tests.helpers import run_main, with_random_weights

# Both sides compile with XLA's default optimisations (tests/conftest.py): with most of them
# off, the two programs round differently enough (1.5e-6 here) to cross the 1e-6.
pytestmark = pytest.mark.usefixtures('xla_default_optimisations')

RELOAD = '''
import sys, numpy as np, jax
inputs = dict(np.load(sys.argv[2]))
with open(sys.argv[1], 'rb') as f:
  exported = jax.export.deserialize(bytearray(f.read()))
out = {k: np.asarray(exported.call({'inputs': v})) for k, v in inputs.items()}
assert not [m for m in sys.modules if m.startswith('perceiver_jax')], 'perceiver_jax imported'
np.savez(sys.argv[3], **out)
'''


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """digits' model with random weights, as perceiver-convert writes it (no dataset read)."""
  config = digits.get_config()
  config.convert = dict(family='vision', input_shape=(8, 8, 1))
  model = with_random_weights(abstract_model(config, (8, 8, 1)), seed=1)
  path = str(tmp_path_factory.mktemp('digits'))
  to_checkpoint.write_checkpoint(model, path, config)
  return path


def test_exported_program_reloads_with_jax_alone_and_matches_predict(workdir, tmp_path):
  out = str(tmp_path / 'exported')
  summary = json.loads(run_main('export.py', [f'--workdir={workdir}', f'--output={out}'],
                                devices=1).stdout.strip().splitlines()[-1])
  with open(os.path.join(out, 'spec.json')) as f:
    spec = json.load(f)
  assert spec == summary
  assert spec['inputs']['inputs'] == {'shape': ['b', 8, 8, 1], 'dtype': 'float32'}
  assert spec['outputs'] == {'shape': ['b', 10], 'dtype': 'float32'}

  raw = np.random.default_rng(0).uniform(0, 16, (5, 8, 8, 1)).astype(np.float32)
  predictor = load(workdir)
  batch, _ = predictor.examples(raw)
  np.savez(tmp_path / 'inputs.npz', five=batch['inputs'], two=batch['inputs'][:2])
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '',
         'JAX_DISABLE_MOST_OPTIMIZATIONS': '0'}  # as this module compiles (pytestmark)
  subprocess.run([sys.executable, '-c', RELOAD, os.path.join(out, 'model.stablehlo'),
                  str(tmp_path / 'inputs.npz'), str(tmp_path / 'outputs.npz')],
                 check=True, env=env, cwd=str(tmp_path), timeout=300)
  outputs = np.load(tmp_path / 'outputs.npz')
  want = predictor.predict(raw)
  np.testing.assert_allclose(outputs['five'], want, rtol=0, atol=1e-6)
  np.testing.assert_allclose(outputs['two'], want[:2], rtol=0, atol=1e-6)

  with pytest.raises(UserError, match='already exists'):
    export(workdir, out)
