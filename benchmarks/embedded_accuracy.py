"""Trains and evaluates the embedded experiments and prints a markdown table of results.

Each row is a real run of train.py then eval.py in its own workdir; the table reports the
evaluated checkpoint's test accuracy and the wall-clock time of training (compile
included). This is the command behind the accuracy figures in docs/results.md:

  python benchmarks/embedded_accuracy.py [--only digits,mnist1d_raw] [--workroot DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config with variant, extra flags)
EXPERIMENTS = {
    'digits': ('configs/digits.py', []),
    'mnist1d_conv': ('configs/mnist1d.py', []),
    'mnist1d_patches': ('configs/mnist1d.py:model=patches', []),
    'mnist1d_raw': ('configs/mnist1d.py:model=raw', []),
    'mnist1d_raw_shuffled': ('configs/mnist1d.py:model=raw,data=shuffled', []),
    'mnist1d_pure': ('configs/mnist1d.py:model=pure', []),
    'mnist1d_pure_shuffled': ('configs/mnist1d.py:model=pure,data=shuffled', []),
}


def run(name: str, workroot: str) -> dict:
  config, extra = EXPERIMENTS[name]
  workdir = os.path.join(workroot, name)
  args = [f'--config={config}', f'--workdir={os.path.relpath(workdir, ROOT)}', *extra]
  start = time.perf_counter()
  subprocess.run([sys.executable, 'train.py', *args], cwd=ROOT, check=True)
  train_seconds = time.perf_counter() - start
  out = subprocess.run([sys.executable, 'eval.py', *args], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  return {'name': name, 'command': f'python train.py {" ".join(args)}',
          'accuracy': result['accuracy'], 'step': result['step'],
          'train_seconds': train_seconds}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', default='', help='comma-separated experiment names')
  parser.add_argument('--workroot', default=os.path.join(ROOT, 'workdirs', 'results'))
  args = parser.parse_args()
  names = [n for n in args.only.split(',') if n] or list(EXPERIMENTS)
  unknown = sorted(set(names) - set(EXPERIMENTS))
  if unknown:
    sys.exit(f'Unknown experiment(s) {unknown}; choose from {sorted(EXPERIMENTS)}.')
  rows = [run(n, args.workroot) for n in names]
  print(f'\n{datetime.date.today()} on {platform.node()} ({os.cpu_count()} CPUs)\n')
  print('| experiment | test accuracy | steps | training time | command |')
  print('|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['name']} | {100 * r['accuracy']:.2f}% | {r['step']} | "
          f"{r['train_seconds'] / 60:.1f} min | `{r['command']}` |")


if __name__ == '__main__':
  main()
