"""The mains as a user meets them: --help, config files found from any directory, eval.py
reading the workdir's config, and the summary a run ends with."""

import pytest

from tests.helpers import run_main

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
