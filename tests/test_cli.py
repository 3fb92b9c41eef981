"""The mains as a user meets them: --help, config files found from any directory, eval.py
reading the workdir's config, and the summary a run ends with."""

import configparser
import json
import os

import pytest
import setuptools

from tests.helpers import ROOT, TINY, flags_for, prepared_data_dir, run_main

# Each main's own flags: the ones its --help must list.
OWN_FLAGS = {
    'train.py': ('--config', '--workdir', '--coordinator_address', '--distributed'),
    'eval.py': ('--config', '--workdir', '--step', '--split'),
    'convert.py': ('--config', '--workdir', '--input', '--format'),
    'report.py': ('--workdir',),
    # The same mains run as modules (what `make train` runs).
    'perceiver_jax.trainer': ('--config', '--workdir', '--distributed'),
    'perceiver_jax.evaluator': ('--config', '--workdir', '--step', '--split'),
}


@pytest.mark.parametrize('script', sorted(OWN_FLAGS))
def test_help_lists_the_programs_own_flags_and_exits_0(script):
  proc = run_main(script, ['--help'], devices=1, check=False)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  program = f'python -m {script}' if script.startswith('perceiver_jax.') else script
  assert f'usage: {program} ' in proc.stdout
  for flag in OWN_FLAGS[script]:
    listed = [line for line in lines if line.startswith(f'  {flag}:')]
    assert len(listed) == 1, f'{flag} not listed once in:\n{proc.stdout}'
  if script == 'report.py':  # report takes no config: its help does not offer one
    assert '--config' not in proc.stdout


def test_a_relative_config_path_finds_the_packaged_config_from_any_directory(tmp_path):
  # Outside the repository configs/mnist1d.py is the packaged file: its fields and its
  # variants are there (the closest field named proves the file was loaded).
  proc = run_main('train.py', ['--config=configs/mnist1d.py:model=raw', '--workdir=w',
                               '--config.train.batchsiz=3'], devices=1, check=False, cwd=tmp_path)
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      "error: --config.train.batchsiz names no config field ('train.batchsiz' does not "
      'exist); the closest are --config.train.batch_size, --config.eval.batch_size (all '
      'fields and their defaults: default_config in perceiver_jax/run.py).')
  # A missing one lists what to pass, in the form that works from here.
  proc = run_main('train.py', ['--config=configs/pretrained/nope.py', '--workdir=w'],
                  devices=1, check=False, cwd=tmp_path)
  assert proc.returncode == 2
  assert proc.stderr.startswith(
      'error: Config file configs/pretrained/nope.py does not exist; pass one of: '
      'configs/pretrained/language_perceiver.py, configs/pretrained/multimodal_perceiver.py, ')
  assert os.listdir(tmp_path) == []


def test_the_package_ships_its_configs_and_no_top_level_configs_package():
  with open(os.path.join(ROOT, 'setup.cfg')) as f:
    setup = configparser.ConfigParser()
    setup.read_file(f)
  include = setup['options.packages.find']['include'].split()
  packages = setuptools.find_packages(ROOT, include=include)
  assert 'perceiver_jax.configs' in packages and 'perceiver_jax.configs.pretrained' in packages
  assert not [p for p in packages if not p.startswith('perceiver_jax')], packages


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory)


# Trains 3 steps; the final evaluation runs on 100 test examples (cheap to compile again).
RUN = {**TINY, 'train.num_steps': 3, 'checkpoint.every_steps': 3, 'eval.batch_size': 100,
       'data.eval_split': 'test[:100]'}


def test_train_from_another_directory_then_eval_with_the_workdirs_config(data_dir, tmp_path):
  # A relative config and workdir from a directory outside the repository.
  args = ['--config=configs/mnist1d.py', '--workdir=run', *flags_for({**RUN,
                                                                       'data.data_dir': data_dir})]
  train = run_main('train.py', args, devices=1, cwd=tmp_path)
  final = json.loads(train.stdout.splitlines()[-1])['final_eval']
  # It ends with a summary: final metrics, the checkpoint, and how to get eval JSON and report.
  summary = train.stdout.splitlines()[-5:-1]
  assert summary[0] == (f'step 3, eval: loss={final["loss"]:.4f} '
                        f'accuracy={final["accuracy"]:.4f} num_examples=100')
  assert summary[1] == f'  checkpoint  {tmp_path}/run/checkpoints/3'
  assert summary[2] == ('  eval json   none yet: perceiver-eval --workdir=run writes '
                        'run/eval_3.json')
  assert summary[3] == ('  report      none yet: perceiver-report run writes '
                        'run/report/README.md')

  # eval.py without --config evaluates with config.json, and --config.x=y still overrides it:
  # the same numbers as eval.py with the config and the same flags.
  flag = '--config.data.eval_split=test[:50]'
  with_config = run_main('eval.py', [*args, flag], devices=1, cwd=tmp_path)
  os.remove(tmp_path / 'run' / 'eval_3.json')
  without = run_main('eval.py', ['--workdir=run', flag], devices=1, cwd=tmp_path)
  result = json.loads(without.stdout.splitlines()[-1])
  assert result == json.loads(with_config.stdout.splitlines()[-1])
  assert result['split'] == 'test[:50]' and result['step'] == 3
  assert without.stdout.splitlines()[-4:-2] == [f'  checkpoint  {tmp_path}/run/checkpoints/3',
                                                '  eval json   run/eval_3.json']

  # A field config.json does not have is one sentence, naming the closest fields.
  proc = run_main('eval.py', ['--workdir=run', '--config.eval.batchsize=10'], devices=1,
                  check=False, cwd=tmp_path)
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: --config.eval.batchsize names no config field "
                                "('eval.batchsize' does not exist); the closest are "
                                '--config.eval.batch_size'), proc.stderr


def test_eval_without_config_of_a_workdir_without_config_json(tmp_path):
  proc = run_main('eval.py', [f'--workdir={tmp_path}', '--config.eval.batch_size=10'],
                  devices=1, check=False)
  assert proc.returncode == 2
  assert proc.stderr == (f'error: {tmp_path}/config.json does not exist: pass the workdir of '
                         'a training or convert run, or give the config with --config.\n')
  assert os.listdir(tmp_path) == []
