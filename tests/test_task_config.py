"""config.task is the task's own section: dict(name=..., **every constructor setting).

Each setting is overridable from the command line and reaches the Task object; an unknown
name or setting is one sentence; a flag of a field that moved (config.data.mask_prob,
config.train.label_smoothing, config.task=NAME) names its new place, through train.py too.
"""

import sys

import pytest
from absl import flags
from ml_collections import config_flags

from configs import digits, flow_skimage, mlm_stdlib, text_classification
from perceiver_jax import flag_parsing, tasks
from perceiver_jax.errors import UserError
from perceiver_jax.moved_flags import MOVED_FLAGS
from perceiver_jax.tasks.flow import FlowTask
from perceiver_jax.tasks.mlm import MlmTask
from perceiver_jax.tasks.text_classification import TextClassificationTask
from perceiver_jax.validate import validate_config
from tests.helpers import run_main


def _parsed(argv, monkeypatch):
  """The config train.py would run with, after flag_parsing.parse of `argv`."""
  monkeypatch.setattr(sys, 'argv', argv)  # ml_collections reads overrides from sys.argv
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values,
                                  lock_config=True)
  flag_parsing.parse(argv, flag_values)
  return flag_values.config


# ------------------------------------------------------------------------------------------
# The section: every setting, each reaching the task.
# ------------------------------------------------------------------------------------------

def test_task_config_holds_every_setting_of_its_task():
  for name, cls in tasks.TASKS.items():
    section = tasks.task_config(name)
    assert set(section.keys()) == {'name', *cls.settings()}, name
    assert section.name == name and None not in section.values(), name  # all overridable
  assert dict(tasks.task_config('classification')) == {'name': 'classification',
                                                       'label_smoothing': 0.0,
                                                       'mixup_alpha': 0.0}
  # Model-derived arguments come from config.model, not the section.
  assert 'num_classes' not in tasks.task_config('image_classification')
  assert tasks.task_config('mlm', mask_prob=0.3).mask_prob == 0.3


def test_every_config_names_its_task_in_a_full_section():
  for module, name in ((digits, 'classification'), (mlm_stdlib, 'mlm'), (flow_skimage, 'flow'),
                       (text_classification, 'text_classification')):
    config = module.get_config()
    assert config.task.name == name
    assert set(config.task.keys()) == {'name', *tasks.TASKS[name].settings()}
    assert isinstance(tasks.get_task(config), tasks.TASKS[name])
  assert digits.get_config().task.label_smoothing == 0.1  # moved from config.train
  assert 'label_smoothing' not in digits.get_config().train
  assert 'mask_prob' not in mlm_stdlib.get_config().data


def test_task_flags_reach_the_task(monkeypatch):
  mlm = tasks.get_task(_parsed(
      ['train.py', '--config=configs/mlm_stdlib.py', '--config.task.mask_prob=0.3',
       '--config.task.word_definition=space', '--config.task.name=mlm'], monkeypatch))
  assert isinstance(mlm, MlmTask)
  assert (mlm.masking.mask_prob, mlm.masking.word_definition) == (0.3, 'space')
  flow = tasks.get_task(_parsed(['train.py', '--config=configs/flow_skimage.py',
                                 '--config.task.crop_size=(8, 12)', '--noconfig.task.flip'],
                                monkeypatch))
  assert isinstance(flow, FlowTask) and (tuple(flow.crop_size), flow.flip) == ((8, 12), False)
  text = tasks.get_task(_parsed(['train.py', '--config=configs/text_classification.py',
                                 '--config.task.text_keys=premise,hypothesis',
                                 '--config.task.label_smoothing=0.2'], monkeypatch))
  assert text.text_keys == ('premise', 'hypothesis') and text.label_smoothing == 0.2
  # A classification section switches to a task whose settings it has.
  switched = tasks.get_task(_parsed(['train.py', '--config=configs/digits.py',
                                     '--config.task.name=text_classification'], monkeypatch))
  assert isinstance(switched, TextClassificationTask) and switched.label_smoothing == 0.1


# ------------------------------------------------------------------------------------------
# One sentence: unknown names and settings, old forms.
# ------------------------------------------------------------------------------------------

def _one_sentence(message: str) -> None:
  assert '\n' not in message and message.endswith('.'), message


def test_unknown_task_name_or_setting_is_one_sentence():
  cases = [
      (lambda: tasks.task_config('mlmm'),
       "config.task.name='mlmm' is unknown; use one of 'causal_lm', 'classification', 'flow', "
       "'image_classification', 'mlm', "),
      (lambda: tasks.task_config('mlm', mask_prb=0.2),
       "config.task.mask_prb is not a setting of task 'mlm'; its settings are mask_prob, "),
  ]
  config = digits.get_config()
  config.task.name = 'mlm'  # a classification section under another task's name
  cases.append((lambda: tasks.get_task(config),
                "config.task.label_smoothing is not a setting of task 'mlm'; its settings are "
                "mask_prob"))
  old = digits.get_config()
  del old['task']
  old.task = 'mlm'  # the pre-section form, in an older config file
  cases.append((lambda: tasks.get_task(old), "config.task='mlm' names a task, but config.task "
                                             "is now a section; set config.task = "
                                             "tasks.task_config('mlm')"))
  for call, fragment in cases:
    with pytest.raises(UserError) as e:
      call()
    assert fragment in str(e.value)
    _one_sentence(str(e.value))


def test_a_config_file_that_sets_a_moved_field_is_refused():
  config = mlm_stdlib.get_config()
  config.data.mask_prob = 0.2  # an older config file: silently ignored unless refused
  with pytest.raises(UserError, match=r'^config.data.mask_prob moved to config.task.mask_prob; '
                                      r'set it there'):
    validate_config(config)
  config = digits.get_config()
  config.train.label_smoothing = 0.1
  with pytest.raises(UserError, match=r'^config.train.label_smoothing moved to '
                                      r'config.task.label_smoothing'):
    validate_config(config)


def test_moved_flags_table_is_every_task_setting():
  settings = {k for cls in tasks.TASKS.values() for k in cls.settings()}
  # Every setting was a config.data field but label_smoothing (from config.train) and those
  # added after the move: causal_lm's context and the flow task's displacement curriculum.
  added_later = {'label_smoothing', 'context', 'curriculum_start', 'curriculum_examples'}
  assert {k for k in MOVED_FLAGS if k.startswith('data.')} == {
      f'data.{k}' for k in settings - added_later}
  assert MOVED_FLAGS['train.label_smoothing'] == 'task.label_smoothing'
  assert MOVED_FLAGS['task'] == 'task.name'
  assert all(new.split('.', 1)[1] in settings | {'name'} for new in MOVED_FLAGS.values())
  assert MOVED_FLAGS in flag_parsing.MOVED_TABLES


@pytest.mark.parametrize('extra,message', [
    (['--config.data.mask_prob=0.2'],
     'config.data.mask_prob moved to config.task.mask_prob; use --config.task.mask_prob=0.2.'),
    (['--config.train.label_smoothing=0.1'],
     'config.train.label_smoothing moved to config.task.label_smoothing; use '
     '--config.task.label_smoothing=0.1.'),
    (['--config.task=mlm'], 'config.task moved to config.task.name; use --config.task.name=mlm.'),
    (['--noconfig.data.flip'], 'config.data.flip moved to config.task.flip; use '
                               '--noconfig.task.flip.'),
    (['--config.task.mask_prb=0.2'], "--config.task.mask_prb names no setting of task 'mlm'; "
                                     'its settings are '),
    # Model fields of the old flat schema (perceiver_jax/model/build.MOVED_MODEL_FLAGS).
    (['--config.model.preprocessor.position_encoding.init_scale=0.1'],
     'config.model.preprocessor.position_encoding.init_scale is not a field of this config: '
     "it is model.preprocessor.position_init_scale (preprocessor 'text')"),
    (['--config.model.decoder.rescale_factor=2.0'],
     "config.model.decoder.rescale_factor is not a field of this config: it is "
     "model.decoder.rescale_factor of decoder 'flow' only;"),
])
def test_moved_or_unknown_task_flag_is_one_sentence(extra, message, monkeypatch):
  with pytest.raises(UserError) as e:
    _parsed(['train.py', '--config=configs/mlm_stdlib.py', *extra], monkeypatch)
  assert str(e.value).startswith(message), str(e.value)
  _one_sentence(str(e.value))


@pytest.mark.parametrize('flag,message', [
    ('--config.data.mask_prob=0.2',
     'error: config.data.mask_prob moved to config.task.mask_prob; use '
     '--config.task.mask_prob=0.2.'),
    ('--config.train.label_smoothing=0.1',
     'error: config.train.label_smoothing moved to config.task.label_smoothing; use '
     '--config.task.label_smoothing=0.1.'),
])
def test_train_py_names_the_new_place_of_a_moved_flag(flag, message, tmp_path):
  workdir = tmp_path / 'run'
  proc = run_main('train.py', ['--config=configs/digits.py', f'--workdir={workdir}', flag],
                  check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr and 'FATAL' not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [message], proc.stderr[-3000:]
  assert not workdir.exists()
