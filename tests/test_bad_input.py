"""Bad input is one sentence, exit code 2, before anything expensive, and nothing written lost.

Configs and flags go through the path train.py takes (flag_parsing.parse -> Run.create)
in-process; a few real train.py / eval.py processes prove the exit code,
the single stderr line and an untouched workdir.
"""

import hashlib
import json
import logging
import os
import shutil
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from perceiver_jax import evaluator, flag_parsing
from perceiver_jax import trainer, workdir_config
from perceiver_jax.data import pipeline
from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.run import Run
from tests.helpers import TINY, flags_for, prepared_data_dir, run_main, tiny_mnist1d_config

CONFIG = '--config=configs/mnist1d.py'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory)


def _cli_checks(argv, monkeypatch):
  """What train.py checks before reading data or compiling; raises the UserError it prints."""
  monkeypatch.setattr(sys, 'argv', argv)  # ml_collections reads overrides from sys.argv
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values,
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'workdir', flag_values=flag_values)
  flag_parsing.parse(argv, flag_values)
  config = flag_values.config
  Run.create(config, flag_values.workdir)
  return config


# (extra flags, a fragment of the one-sentence message). The base command line is valid.
CASES = [
    # Flags: unknown fields, wrong types, config files and their variants.
    (['--config.train.batchsize=1'], "names no config field ('train.batchsize' does not exist); "
                                     'the closest are --config.train.batch_size'),
    (['--config.modle.encoder.num_latents=4'], '--config.model.encoder.num_latents'),
    (['--config.train.batch_size=abc'], '--config.train.batch_size=abc is not a valid int'),
    (['--config.train.batch_size=1.5'], '--config.train.batch_size=1.5 is not a valid int'),
    (['--config.optimizer.learning_rate=fast'], 'is not a valid float'),
    (['--config.checkpoint.async_save=maybe'], 'is not a valid bool'),
    (['--worksdir=x'], '--worksdir is not a flag of this program; did you mean --workdir'),
    (['--config=configs/nope.py'], 'Config file configs/nope.py does not exist; pass one of: '
                                   'configs/audioset_perceiver.py, configs/digits.py, '),
    # the experiment files beside it, sorted; not private helpers (_*.py)
    (['--config=configs/mnist1d.py:foo=1'], "Unknown config variant key 'foo'; valid keys: "
                                            "['data', 'model', 'steps']"),
    (['--config=configs/mnist1d.py:model=cnn'], "Unknown mnist1d model variant 'cnn'"),
    (['--config.train.num_steps=5', '--config=configs/mnist1d.py'],
     '--config.train.num_steps comes before (or without) --config; pass --config=FILE first'),
    # Heads that do not divide the channels.
    (['--config.model.encoder.num_latent_channels=30'],
     'num_latent_channels=30 is not divisible by num_self_attend_heads=4'),
    (['--config.model.encoder.num_cross_attend_heads=3'],
     'num_latent_channels=64 is not divisible by num_cross_attend_heads=3'),
    # The cross-attend's qk width comes from the inputs (64 conv + 33 Fourier channels), so
    # the abstract build finds it.
    (['--config.model.encoder.num_cross_attend_heads=2'],
     'config.model.encoder: qk_channels (97) must be divisible by num_heads (2) (the '
     'preprocessed inputs of shape (40, 1) have 97 channels)'),
    (['--config.model.encoder.cross_attention_shape_for_attn=k'],
     "cross_attention_shape_for_attn='k' is unknown; use one of 'q', 'kv'"),
    (['--config.model.encoder.qk_channels=30'],
     'config.model.encoder: qk_channels (30) must be divisible by num_heads (4)'),
    (['--config.model.decoder.num_heads=3'],
     'config.model.decoder: qk_channels (64) must be divisible by num_heads (3)'),
    # Mesh and batch against the 8 devices.
    (['--config.mesh.data=3'], 'needs 3 devices but 8 are available'),
    (['--config.mesh.fsdp=-1'], 'Only one mesh axis may be -1'),
    (['--config.mesh.fsdp=3'], 'do not divide the 8 available devices'),
    (['--config.mesh.tensor=0'], 'config.mesh.tensor=0 is invalid'),
    (['--config.train.batch_size=12'], 'not divisible by the data-parallel size 8'),
    (['--config.sharding.layout=ddp'], "config.sharding.layout='ddp' is unknown"),
    # Datasets and splits (checked from metadata, nothing read).
    (['--config.data.name=no_such_data'], "Dataset 'no_such_data' is not known to TFDS"),
    (['--config.data.name=mnist1d/nope'], "unknown config or version of embedded dataset "
                                          "'mnist1d'; use one of configs ['plain', 'shuffled']"),
    (['--config.data.eval_split=validation'], "Split 'validation' does not exist in dataset "
                                              "'mnist1d'"),
    (['--config.data.train_split='], "config.data.train_split='' is invalid"),
    (['--config.data.augment=flip'], "config.data.augment='flip' is unknown; use one of"),
    (['--config.data.normalize=(0.0,0.0)'], 'with a nonzero std'),
    # Unknown names.
    (['--config.model.decoder.name=basicx'], "decoder.name='basicx' is unknown; use one of "
                                             "'projection', 'classification', 'basic'"),
    (['--config.model.preprocessor.name=conv2d'], "preprocessor.name='conv2d' is unknown"),
    (['--config.model.preprocessor.position_encoding.name=sinusoid'],
     "position_encoding.name='sinusoid' is unknown"),
    (['--config.model.postprocessor.name=softmax'], "postprocessor.name='softmax' is unknown"),
    (['--config=configs/mnist1d.py:model=patches',
      '--config.model.preprocessor.patch_size=abc'], 'use a tuple of positive ints'),
    (['--config.optimizer.name=sgd'], "optimizer.name='sgd' is unknown; use one of 'adamw'"),
    (['--config.optimizer.schedule=exp'], "optimizer.schedule='exp' is unknown"),
    (['--config.model.dtype=fp16'], "config.model.dtype='fp16' is not a compute dtype"),
    # Sizes and ranges.
    (['--config.model.encoder.num_latents=-4'], 'num_latents must be a positive int, got -4'),
    (['--config.model.encoder.num_latent_channels=0'], 'must be a positive int, got 0'),
    (['--config.model.encoder.num_blocks=0'], 'num_blocks must be a positive int'),
    (['--config.model.preprocessor.position_encoding.num_bands=0'],
     'num_bands must be a positive int'),
    (['--config.model.num_classes=0'], 'num_classes must be a positive int'),
    (['--config.train.batch_size=-16'], 'train.batch_size must be a positive int, got -16'),
    (['--config.train.num_steps=0'], 'train.num_steps must be a positive int'),
    (['--config.optimizer.learning_rate=0'], 'learning_rate must be a positive float, got 0'),
    (['--config.optimizer.learning_rate=-0.001'], 'learning_rate must be a positive float'),
    (['--config.optimizer.warmup_steps=-1'], 'warmup_steps must be an int >= 0, got -1'),
    (['--config.optimizer.b2=1.0'], 'config.optimizer.b2=1.0 is out of range; use a number in '
                                    '[0, 1)'),
    (['--config.eval.batch_size=0'], 'eval.batch_size must be a positive int'),
    (['--config.checkpoint.keep=0'], 'checkpoint.keep must be a positive int'),
    (['--config.checkpoint.every_steps=0'], 'checkpoint.every_steps must be a positive int'),
    (['--config.data.worker_count=-2'], 'config.data.worker_count must be an int >= 0, got -2'),
    (['--config.data.device_prefetch=-1'], 'config.data.device_prefetch must be an int >= 0'),
    (['--config.task.label_smoothing=1.0'], 'config.task.label_smoothing=1.0 is out of range'),
    (['--config.model.encoder.dropout_prob=1.5'], 'dropout_prob=1.5 is out of range'),
    # Fine-tuning sources.
    (['--config.init_from=/no/such/run'], 'config.init_from=/no/such/run does not exist'),
    (['--config.init_exclude=(dec'], 'is not a valid regular expression'),
]


def _argv(data_dir, workdir, extra):
  base = [f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
          '--config.train.batch_size=16']
  if any(a.startswith('--config=') for a in extra):  # the case names its own config file
    return ['train.py', *extra, *base]
  return ['train.py', CONFIG, *base, *extra]


def test_the_base_command_line_passes(data_dir, tmp_path, monkeypatch):
  config = _cli_checks(_argv(data_dir, tmp_path / 'run', []), monkeypatch)
  assert config.train.batch_size == 16 and config.data.data_dir == data_dir


@pytest.mark.parametrize('extra,fragment', CASES, ids=[' '.join(c[0])[:60] for c in CASES])
def test_malformed_config_or_flag_is_one_sentence(extra, fragment, data_dir, tmp_path,
                                                  monkeypatch):
  workdir = tmp_path / 'run'
  with pytest.raises(UserError) as e:
    _cli_checks(_argv(data_dir, workdir, extra), monkeypatch)
  message = str(e.value)
  assert fragment in message
  # One sentence, however long the data_dir it names (pytest's tmp paths appear twice).
  assert '\n' not in message and 'Traceback' not in message and len(message) < 500
  assert message.rstrip().endswith(('.', ')', ']')), message
  assert not workdir.exists()  # nothing created by a refused run


def test_workdir_that_cannot_be_written(data_dir, tmp_path, monkeypatch):
  a_file = tmp_path / 'a_file'
  a_file.write_text('keep me')
  cases = [(a_file, 'exists and is not a directory'),
           (a_file / 'run', f'cannot be created because {a_file} is a file')]
  for workdir, fragment in cases:
    with pytest.raises(UserError, match=fragment):
      _cli_checks(_argv(data_dir, workdir, []), monkeypatch)
  # A directory without write permission (root ignores mode bits, so ask os.access).
  locked = tmp_path / 'locked'
  locked.mkdir()
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda p, mode: (os.fspath(p) != str(locked)
                                                     and real_access(p, mode)))
  with pytest.raises(UserError, match=f'is not writable \\(its parent {locked} denies write'):
    _cli_checks(_argv(data_dir, locked / 'run', []), monkeypatch)
  assert a_file.read_text() == 'keep me'


def _garble_dataset_info(data_dir, tmp_path, content):
  """A copy of data_dir whose mnist1d/plain dataset_info.json holds `content`."""
  copy = tmp_path / 'tfds'
  shutil.copytree(data_dir, copy)
  (info,) = copy.glob('mnist1d/plain/*/dataset_info.json')
  info.write_text(content)
  return str(copy), str(info)


@pytest.mark.parametrize('case', ['data_dir is a file', 'data_dir under a file',
                                  'TFDS_DATA_DIR is a file', 'TFDS_DATA_DIR unreachable',
                                  'workdir name too long', 'garbage dataset_info.json',
                                  'empty dataset_info.json', 'dataset_info.json not an object'])
def test_file_system_errors_are_one_sentence(case, data_dir, tmp_path, monkeypatch):
  a_file = tmp_path / 'a_file'
  a_file.write_text('keep me')
  workdir, flags, fragment = tmp_path / 'run', [f'--config.data.data_dir={data_dir}'], None
  if case == 'data_dir is a file':
    flags = [f'--config.data.data_dir={a_file}']
    fragment = f'config.data.data_dir={a_file} is a file, not a directory; point it at a TFDS'
  elif case == 'data_dir under a file':
    flags = [f'--config.data.data_dir={a_file}/tfds']
    fragment = f'tfds lies under {a_file}, which is a file, not a directory'
  elif case.startswith('TFDS_DATA_DIR'):
    flags = []
    unreachable = case.endswith('unreachable')
    value = '/proc/no_such_mount/tfds' if unreachable else str(a_file)
    monkeypatch.setenv('TFDS_DATA_DIR', value)
    fragment = (f"data_dir '{value}' cannot be created (No such file or directory); set "
                'config.data.data_dir (or $TFDS_DATA_DIR)' if unreachable else
                f'$TFDS_DATA_DIR={a_file} is a file, not a directory')
  elif case == 'workdir name too long':
    workdir = tmp_path / ('w' * 300) / 'run'
    fragment = ('--workdir has a folder name of 300 bytes (wwwwwwwwwwwwwwwwwwwwwwww...), longer '
                'than this file system allows')
  else:
    content = {'garbage': '{"name": "mnist1d", ', 'empty': '', 'dataset_info.json': '[1, 2]'}[
        case.split()[0]]
    copy, info = _garble_dataset_info(data_dir, tmp_path, content)
    flags = [f'--config.data.data_dir={copy}']
    fragment = (f"Dataset 'mnist1d/plain' is prepared in data_dir '{copy}', but its {info} "
                f'cannot be read (')
  argv = ['train.py', CONFIG, f'--workdir={workdir}', '--config.train.batch_size=16', *flags]
  with pytest.raises(UserError) as e:
    _cli_checks(argv, monkeypatch)
  message = str(e.value)
  assert fragment in message and '\n' not in message and message.endswith('.'), message
  assert 'unknown config' not in message
  # Nothing created (a name too long cannot even be asked about).
  assert set(os.listdir(tmp_path)) <= {'a_file', 'tfds'} and a_file.read_text() == 'keep me'


@pytest.mark.parametrize('overrides,fragment', [
    ({'model.encoder.num_self_attend_heads': 3}, 'not divisible by num_self_attend_heads=3'),
    ({'data.eval_split': 'dev'}, "Split 'dev' does not exist"),
    ({'model.encoder.num_cross_attend_heads': 2}, 'must be divisible by num_heads (2)'),
])
def test_trainer_refuses_before_building_state(overrides, fragment, data_dir, tmp_path,
                                               monkeypatch):
  def expensive(*args, **kwargs):
    raise AssertionError('the train state was built before the config was checked')
  monkeypatch.setattr(Run, 'init_state', expensive)
  config = tiny_mnist1d_config(**{'data.data_dir': data_dir, **overrides})
  with pytest.raises(UserError) as e:
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert fragment in str(e.value)
  assert not (tmp_path / 'run').exists()


# ------------------------------------------------------------------------------------------
# Real processes against a trained workdir: exit 2, one line, files untouched.
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
  """A TINY model trained 2 steps by train.py, with checkpoints at steps 1 and 2.

  The run stops there (max_steps_per_run) so no evaluation is compiled.
  """
  workdir = str(tmp_path_factory.mktemp('trained'))
  overrides = {**TINY, 'data.data_dir': data_dir, 'train.num_steps': 3,
               'train.max_steps_per_run': 2, 'checkpoint.every_steps': 1}
  proc = run_main('train.py', [CONFIG, f'--workdir={workdir}', *flags_for(overrides)])
  assert 'stopped_early' in proc.stdout
  return workdir, overrides


def _snapshot(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, workdir)] = (os.stat(path).st_mtime_ns,
                                               hashlib.sha1(f.read()).hexdigest())
  return out


def _assert_one_sentence(proc, *fragments):
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr and 'FATAL' not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, proc.stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


@pytest.mark.parametrize('extra,fragments', [
    (['--config.train.batchsize=1'], ["'train.batchsize' does not exist",
                                      '--config.train.batch_size']),
    (['--config.model.encoder.num_latent_channels=33'], ['num_latent_channels=33 is not '
                                                         'divisible']),
    # A resume with another recipe (config.json of the trained run is the reference).
    (['--config.optimizer.learning_rate=0.01'],
     ['at step 2 with a config that differs from the one it was trained with (config.json) '
      'in optimizer.learning_rate: 0.002 -> 0.01;',
      'pass --config.allow_changes=optimizer.learning_rate to accept']),
    # Under a cosine schedule the step count reshapes the learning rate of every step left.
    (['--config.train.num_steps=5', '--config.data.normalize=(0.5,1.0)'],
     ['in data.normalize: (0.0, 1.0) -> (0.5, 1.0), train.num_steps: 3 -> 5;',
      '--config.allow_changes=data.normalize,train.num_steps']),
    # Acknowledging one change leaves the other refused.
    (['--config.optimizer.learning_rate=0.01', '--config.seed=1',
      '--config.allow_changes=optimizer'], ['in seed: 0 -> 1;', '--config.allow_changes=seed ']),
])
def test_train_py_refuses_and_leaves_the_workdir_untouched(trained, extra, fragments):
  workdir, overrides = trained
  before = _snapshot(workdir)
  assert 'metrics.jsonl' in before and any(p.startswith('checkpoints/2/') for p in before)
  proc = run_main('train.py', [CONFIG, f'--workdir={workdir}', *flags_for(overrides), *extra],
                  check=False)
  _assert_one_sentence(proc, *fragments)
  assert _snapshot(workdir) == before


def test_eval_py_on_a_step_that_does_not_exist_lists_the_steps(trained):
  workdir, overrides = trained
  before = _snapshot(workdir)
  proc = run_main('eval.py', [CONFIG, f'--workdir={workdir}', *flags_for(overrides),
                              '--step=7'], check=False)
  _assert_one_sentence(proc, 'No checkpoint for step 7', 'available steps: [1, 2]')
  assert _snapshot(workdir) == before


def test_eval_py_under_other_data_settings_is_refused(trained):
  workdir, overrides = trained
  before = _snapshot(workdir)
  proc = run_main('eval.py', [CONFIG, f'--workdir={workdir}', *flags_for(overrides),
                              '--config.data.normalize=(0.5,1.0)'], check=False)
  _assert_one_sentence(proc, 'Evaluating step 2 of', 'in data.normalize: (0.0, 1.0) -> '
                       '(0.5, 1.0); pass --config.allow_changes=data.normalize to evaluate')
  assert _snapshot(workdir) == before


def test_eval_under_acknowledged_settings_never_replaces_the_training_result(trained,
                                                                            tmp_path, caplog):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(trained[0], workdir)
  # Training's settings, with what changes freely (data location, eval batch, dropout).
  free = {'eval.batch_size': 400, 'model.encoder.dropout_prob': 0.0, 'data.worker_count': 1}
  plain = evaluator.evaluate(tiny_mnist1d_config(**{**trained[1], **free}), workdir, step=2)
  written = _snapshot(workdir)['eval_2.json']
  assert 'config_changes' not in plain
  config = tiny_mnist1d_config(**{**trained[1], 'data.normalize': (0.5, 1.0),
                                  'allow_changes': 'data'})
  with caplog.at_level(logging.WARNING):
    changed = evaluator.evaluate(config, workdir, step=2)
  assert ("Evaluating step 2 under settings other than training's (data.normalize: (0.0, 1.0) "
          '-> (0.5, 1.0), as config.allow_changes permits); the result goes to eval_2.') in (
              caplog.text)
  other = evaluator.evaluate(tiny_mnist1d_config(**trained[1]), workdir, step=2, split='train')
  assert _snapshot(workdir)['eval_2.json'] == written
  names = sorted(n for n in os.listdir(workdir) if n.startswith('eval_'))
  assert len(names) == 3 and names[0] != names[1], names
  results = {n: json.load(open(os.path.join(workdir, n))) for n in names}
  assert results['eval_2.json'] == plain
  assert changed['config_changes'] == {'data.normalize': [[0.0, 1.0], [0.5, 1.0]]}
  assert sorted(map(json.dumps, results.values())) == sorted(
      map(json.dumps, [plain, changed, other]))
  assert changed['loss'] != plain['loss'] and other['split'] == 'train'


def test_accepted_resume_keeps_every_config_and_logs_the_changes(trained, tmp_path, caplog):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(trained[0], workdir)
  original = _snapshot(workdir)['config.json']
  # The learning rate is acknowledged; the log cadence changes freely.
  config = tiny_mnist1d_config(**{**trained[1], 'optimizer.learning_rate': 0.01,
                                  'train.log_every_steps': 3, 'train.max_steps_per_run': 1,
                                  'allow_changes': 'optimizer.learning_rate'})
  with caplog.at_level(logging.INFO):
    trainer.train_and_evaluate(config, workdir)
  assert _snapshot(workdir)['config.json'] == original
  kept = workdir_config.read(workdir, os.path.join(workdir, 'config.2.json'))
  assert kept.to_dict() == config.to_dict()
  logged = [r.getMessage() for r in caplog.records if 'config change' in r.getMessage()]
  assert logged == ['Resumed at step 2 with 3 config change(s) from config.json: '
                    'train.max_steps_per_run: 2 -> 1, train.log_every_steps: 1 -> 3, '
                    'optimizer.learning_rate: 0.002 -> 0.01; kept in config.2.json.']
  # Step 3 was trained by config.2.json: resuming or evaluating against it needs nothing.
  assert workdir_config.path_for_step(workdir, 3).endswith('config.2.json')
  assert workdir_config.path_for_step(workdir, 2).endswith('config.json')


def test_eval_without_a_checkpoint_or_workdir(trained, tmp_path):
  _, overrides = trained
  config = tiny_mnist1d_config(**overrides)
  with pytest.raises(UserError, match='No checkpoint found in .*; train first'):
    evaluator.evaluate(config, str(tmp_path))
  with pytest.raises(UserError, match='does not exist; point it at a directory written by'):
    evaluator.evaluate(config, str(tmp_path / 'missing'))
  assert os.listdir(tmp_path) == []


def test_eval_of_another_model_names_the_parameter_and_both_shapes(trained):
  workdir, overrides = trained
  before = _snapshot(workdir)
  config = tiny_mnist1d_config(**{**overrides, 'model.encoder.num_latents': 4})
  with pytest.raises(UserError) as e:
    evaluator.evaluate(config, workdir, step=1)
  assert ("Parameter 'encoder/z_pos_enc/pos_embs' has shape (8, 32) in the checkpoint at step "
          "1" in str(e.value))
  assert 'but (4, 32) in this config\'s model' in str(e.value)
  config = tiny_mnist1d_config(**overrides)
  with pytest.raises(UserError, match=r"Split 'dev' does not exist .* \['test', 'train'\]"):
    evaluator.evaluate(config, workdir, split='dev')
  assert _snapshot(workdir) == before


# ------------------------------------------------------------------------------------------
# Malformed data: the dataset, split and example index, expected and actual.
# ------------------------------------------------------------------------------------------

class _Corrupt:
  """A data source with example `index` replaced by `damage(example)`."""

  def __init__(self, source, index, damage):
    self.source, self.index, self.damage = source, index, damage

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return self.damage(self.source[i]) if i == self.index else self.source[i]


def _undecodable(example):
  raise ValueError('cannot reshape array of size 39 into shape (40,1)')


@pytest.mark.parametrize('damage,fragment', [
    (lambda e: {**e, 'inputs': e['inputs'][:-1]},
     "has 'inputs' of shape (39, 1) and dtype float32, but the dataset declares shape (40, 1) "
     'and dtype float32'),
    (lambda e: {**e, 'inputs': e['inputs'].astype(np.float64)},
     'of shape (40, 1) and dtype float64, but the dataset declares shape (40, 1) and dtype '
     'float32'),
    (lambda e: {**e, 'label': 2.5}, 'has label 2.5 of shape () and dtype float64'),
    (lambda e: {'inputs': e['inputs']}, "lacks the features ['label']"),
    (_undecodable, 'cannot be decoded (ValueError: cannot reshape array of size 39'),
])
def test_malformed_example_names_dataset_split_and_index(damage, fragment, data_dir,
                                                         monkeypatch):
  real = pipeline.tfds.core.DatasetBuilder.as_data_source
  monkeypatch.setattr(pipeline.tfds.core.DatasetBuilder, 'as_data_source',
                      lambda self, split, **kw: _Corrupt(real(self, split=split, **kw), 7,
                                                         damage))
  cfg = tiny_mnist1d_config(**{'data.data_dir': data_dir}).data
  with pytest.raises(DatasetError) as e:
    for _ in pipeline.make_eval_iterator(cfg, 'test', global_batch_size=8):
      pass
  message = str(e.value)
  assert message.startswith("Example 7 of split 'test' of dataset 'mnist1d/plain' ")
  assert fragment in message and '\n' not in message
  # Shuffled, augmented training batches name the same stored index.
  train = pipeline.make_train_iterator(cfg, global_batch_size=500, seed=0)
  with pytest.raises(DatasetError, match="Example 7 of split 'train' of dataset"):
    for _ in range(9):  # 4000 examples: one epoch is 8 batches
      next(train)


def test_well_formed_data_passes_the_checks(data_dir):
  cfg = tiny_mnist1d_config(**{'data.data_dir': data_dir}).data
  batches = list(pipeline.make_eval_iterator(cfg, 'test', global_batch_size=500))
  assert [b['inputs'].shape for b in batches] == [(500, 40, 1)] * 2
  assert sum(int(b['mask'].sum()) for b in batches) == 1000
