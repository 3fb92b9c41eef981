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


def _changes(**overrides):
  from perceiver_jax import config_changes
  from tests.helpers import set_dotted, tiny_mnist1d_config
  old = tiny_mnist1d_config()
  new = set_dotted(tiny_mnist1d_config(), overrides)
  return config_changes.differences(old, new), old


@pytest.mark.parametrize('overrides, resume, evaluation', [
    # Where data is read from, cadence, mesh and eval batch change nothing that is learned.
    ({'data.data_dir': '/elsewhere', 'train.log_every_steps': 7, 'mesh.data': 2,
      'checkpoint.keep': 9, 'eval.batch_size': 8, 'allow_changes': 'x'}, [], []),
    ({'train.num_steps': 9}, ['train.num_steps'], []),
    ({'optimizer.schedule': 'constant', 'train.num_steps': 9},
     ['train.num_steps', 'optimizer.schedule'], []),
    ({'data.augment': '', 'model.encoder.dropout_prob': 0.0},
     ['data.augment', 'model.encoder.dropout_prob'], []),
    # Label smoothing shapes the training loss alone (the task says so).
    ({'data.normalize': (0.5, 1.0), 'task.label_smoothing': 0.1},
     ['task.label_smoothing', 'data.normalize'], ['data.normalize']),
])
def test_which_changes_need_asking(overrides, resume, evaluation):
  from perceiver_jax import config_changes
  changes, old = _changes(**overrides)
  assert sorted(config_changes.resume_relevant(changes, old)) == sorted(resume)
  assert sorted(config_changes.eval_relevant(changes, old)) == sorted(evaluation)


def test_num_steps_changes_freely_under_a_constant_schedule():
  from perceiver_jax import config_changes
  from tests.helpers import tiny_mnist1d_config
  old = tiny_mnist1d_config(**{'optimizer.schedule': 'constant'})
  new = tiny_mnist1d_config(**{'optimizer.schedule': 'constant', 'train.num_steps': 9})
  assert config_changes.resume_relevant(config_changes.differences(old, new), old) == {}
  # A section named in allow_changes covers its fields.
  new.allow_changes = 'optimizer, data.normalize'
  assert config_changes.unacknowledged({'optimizer.b1': (0.9, 0.8), 'data.name': ('a', 'b')},
                                       new) == {'data.name': ('a', 'b')}


def test_a_config_of_another_version_is_not_compared(tmp_path, caplog):
  from perceiver_jax import config_changes
  from tests.helpers import tiny_mnist1d_config
  old = tiny_mnist1d_config(**{'data.normalize': (0.5, 1.0)})
  workdir_config.write(str(tmp_path), old)
  new = tiny_mnist1d_config()
  with pytest.raises(UserError, match=r'in data.normalize: \(0.5, 1.0\) -> \(0.0, 1.0\);'):
    config_changes.check_eval(str(tmp_path), new, 5)
  # The same file from a version whose configs had other fields (fields mean other things).
  (tmp_path / 'config.json').write_text(
      (tmp_path / 'config.json').read_text().replace('"train": {', '"train": {"old": 1, '))
  with caplog.at_level('WARNING'):
    assert config_changes.check_eval(str(tmp_path), new, 5) == {}
    config_changes.check_resume(str(tmp_path), new, 5)
  assert 'written by another version of perceiver_jax (1 fields differ, e.g. train.old)' in (
      caplog.text)


def test_a_task_names_the_settings_that_shape_training_alone():
  from configs import flow_skimage
  from perceiver_jax import config_changes
  old = flow_skimage.get_config('runlocal')
  new = flow_skimage.get_config('runlocal')
  new.task.flip = not old.task.flip
  new.task.flow_loss = 'l1'
  changes = config_changes.differences(old, new)
  assert list(config_changes.eval_relevant(changes, old)) == ['task.flow_loss']
  assert sorted(config_changes.resume_relevant(changes, old)) == ['task.flip', 'task.flow_loss']


@pytest.mark.parametrize('content', ['{"model": ', '[1, 2]'])
def test_a_damaged_workdir_config_stops_the_comparison_in_one_sentence(content, tmp_path):
  from perceiver_jax import config_changes
  from tests.helpers import tiny_mnist1d_config
  (tmp_path / 'config.json').write_text(content)
  for check in (config_changes.check_eval, config_changes.check_resume):
    with pytest.raises(UserError, match=r'config.json is damaged, so this config cannot be '
                                        r'compared with the one step 3 was trained with; '):
      check(str(tmp_path), tiny_mnist1d_config(), 3)
  assert (tmp_path / 'config.json').read_text() == content


def test_configs_of_every_start_are_kept(tmp_path):
  from perceiver_jax import config_changes
  from tests.helpers import tiny_mnist1d_config
  workdir = str(tmp_path)
  first = tiny_mnist1d_config(**{'optimizer.learning_rate': 0.5})
  config_changes.record_start(workdir, first, 0)
  # Restarted before any checkpoint: the same config is written once, another one is kept
  # beside the earlier one.
  config_changes.record_start(workdir, first, 0)
  assert sorted(os.listdir(tmp_path)) == ['config.json']
  second = tiny_mnist1d_config()
  config_changes.record_start(workdir, second, 0)
  assert sorted(os.listdir(tmp_path)) == ['config.json', 'config.unsaved-1.json']
  assert workdir_config.read(workdir, str(tmp_path / 'config.unsaved-1.json')).to_dict() == (
      first.to_dict())
  # Resumes: only a changed config is written, under the step it starts from.
  config_changes.record_start(workdir, second, 4)
  assert 'config.4.json' not in os.listdir(tmp_path)
  third = tiny_mnist1d_config(**{'train.log_every_steps': 7})
  config_changes.record_start(workdir, third, 6)
  assert workdir_config.resumed_steps(workdir) == [6]
  assert workdir_config.path_for_step(workdir, 6).endswith('config.json')
  assert workdir_config.path_for_step(workdir, 7).endswith('config.6.json')
  assert workdir_config.read(workdir).to_dict() == second.to_dict()
  assert workdir_config.read_for_step(workdir, 7).to_dict() == third.to_dict()
  assert workdir_config.read_for_step(workdir, 6).to_dict() == second.to_dict()
  # eval.py without --config: the config of the latest checkpoint.
  assert workdir_config.get_config(workdir).to_dict() == third.to_dict()


def test_the_config_of_a_step_is_the_one_that_trained_it(tmp_path):
  """eval.py / load() with --step read the config in force when that step was trained."""
  first = importlib.import_module('configs.digits').get_config()
  resumed = importlib.import_module('configs.digits').get_config()
  resumed.optimizer.learning_rate = 5e-4
  workdir_config.write(str(tmp_path), first)
  workdir_config.write(str(tmp_path), resumed, step=400)  # a resume at step 400
  get = workdir_config.get_config
  assert get(f'{tmp_path}@step=400').optimizer.learning_rate == first.optimizer.learning_rate
  assert get(f'{tmp_path}@step=800').optimizer.learning_rate == 5e-4
  assert get(str(tmp_path)).optimizer.learning_rate == 5e-4  # the newest
