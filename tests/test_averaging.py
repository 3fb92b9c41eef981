"""The moving average of the weights (optimizer.ema_decay): its arithmetic and its checks.
Training, resuming, evaluating and init_from with it: tests/test_training.py's straight_run."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from perceiver_jax import averaging, validate
from perceiver_jax.errors import UserError
from tests.helpers import tiny_mnist1d_config


def _config(decay):
  return ml_collections.ConfigDict({'optimizer': {'ema_decay': decay}})


def test_decay_ramps_up_to_the_configured_value():
  got = [float(averaging.decay_at(0.999, t)) for t in (0, 1, 8, 10_000)]
  np.testing.assert_allclose(got, [0.1, 2 / 11, 0.5, 0.999], rtol=1e-6)
  assert float(averaging.decay_at(0.5, 100)) == 0.5


def test_average_follows_the_params_step_by_step():
  config = _config(0.9)
  params = {'w': jnp.array([1.0, 2.0]), 'b': jnp.array(3.0)}
  ema = averaging.start(config, params)
  assert ema['w'] is not params['w']  # its own buffer: the state is donated
  want = {k: np.asarray(v) for k, v in params.items()}
  for step, scale in enumerate((2.0, -1.0, 0.5)):
    new = {k: v * scale for k, v in params.items()}
    ema = averaging.update(config, ema, new, jnp.int32(step))
    d = min(0.9, (1 + step) / (10 + step))
    want = {k: d * want[k] + (1 - d) * np.asarray(new[k]) for k in want}
    for k in want:
      np.testing.assert_allclose(np.asarray(ema[k]), want[k], rtol=1e-6)


def test_off_by_default_keeps_no_average():
  config = tiny_mnist1d_config()
  assert config.optimizer.ema_decay == 0.0
  assert averaging.start(config, {'w': jnp.ones(2)}) is None
  assert averaging.update(config, None, {'w': jnp.ones(2)}, jnp.int32(0)) is None


@pytest.mark.parametrize('decay', [1.0, -0.1, float('nan')])
def test_a_decay_outside_zero_to_one_is_one_sentence(decay):
  config = tiny_mnist1d_config(**{'optimizer.ema_decay': decay})
  with pytest.raises(UserError, match=r'config\.optimizer\.ema_decay=.* is out of range; '
                                      r'use a number in \[0, 1\)\.'):
    validate.validate_config(config)
