"""benchmarks/cpu_kernels.py: its table and its flag checking (the timings need torch)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
import cpu_kernels  # noqa: E402


def test_table_gives_rate_and_time_against_torch():
  rows = [dict(kernel='gemm', shape='small x @ W', impl='jax', gflop=2.0, ms=4.0),
          dict(kernel='gemm', shape='small x @ W', impl='torch', gflop=2.0, ms=2.0),
          dict(kernel='mlp forward', shape='small', impl='jax', gflop=1.0, ms=10.0)]
  lines = cpu_kernels.format_table(rows).splitlines()
  assert lines[2] == '| gemm | small x @ W | jax | 4.00 | 500 | 2.00x |'
  assert lines[3] == '| gemm | small x @ W | torch | 2.00 | 1000 | 1.00x |'
  # No torch row for a kernel: no ratio, not a division by zero.
  assert lines[4] == '| mlp forward | small | jax | 10.00 | 100 | - |'


def test_unknown_kernel_is_one_sentence(capsys):
  with pytest.raises(SystemExit):
    cpu_kernels.main(['--kernels=gemm,softmax'])
  assert "unknown kernel 'softmax'; choose from gemm, mlp, attention" in capsys.readouterr().err
