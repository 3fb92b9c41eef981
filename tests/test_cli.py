"""The mains as a user meets them: --help, config files found from any directory, eval.py
reading the workdir's config, and the summary a run ends with."""

import configparser
import os

import pytest
import setuptools

from tests.helpers import ROOT, run_main

# Each main's own flags: the ones its --help must list.
OWN_FLAGS = {
    'train.py': ('--config', '--workdir', '--coordinator_address', '--distributed'),
    'eval.py': ('--config', '--workdir', '--step', '--split'),
    'convert.py': ('--config', '--workdir', '--input', '--format'),
    'report.py': ('--workdir',),
}


@pytest.mark.parametrize('script', sorted(OWN_FLAGS))
def test_help_lists_the_programs_own_flags_and_exits_0(script):
  proc = run_main(script, ['--help'], devices=1, check=False)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert f'usage: {script}' in proc.stdout
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
      'fields and their defaults: configs/common.py).')
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
