"""WORKDIR/config.json reads back as the config the run was started with."""

import glob
import importlib
import os

import pytest

from perceiver_jax import workdir_config
from perceiver_jax.errors import UserError


@pytest.mark.parametrize('path', sorted(
    p for p in glob.glob('configs/*.py') if not os.path.basename(p).startswith(('_', 'common'))))
def test_every_config_reads_back_equal(path, tmp_path):
  config = importlib.import_module('configs.' + os.path.basename(path)[:-3]).get_config()
  workdir_config.write(str(tmp_path), config)
  assert workdir_config.read(str(tmp_path)).to_dict() == config.to_dict()


@pytest.mark.parametrize('content, phrase', [
    (None, 'does not exist'),
    ('{"model": ', 'not a readable config'),
    ('[1, 2]', 'does not hold a perceiver_jax config'),
])
def test_bad_config_json_is_one_sentence(content, phrase, tmp_path):
  if content is not None:
    (tmp_path / 'config.json').write_text(content)
  with pytest.raises(UserError, match=phrase):
    workdir_config.read(str(tmp_path))
