"""Perceiver AR: does a longer context lower bits per byte at nearly the same compute?

  python benchmarks/ar_context.py [--contexts=128,512,1024] [--latents=128] [--steps=N]
      [--workdir_root=workdirs/ar_context] [--extra='--config.x=y ...']

Trains configs/perceiver_ar_stdlib.py once per context N with the same latents M, width,
depth, batch, steps and seed (N = M is a plain causal Transformer over M bytes), one run
after another on this machine, then reads each workdir: test bits per byte (eval_<step>.json:
every context predicts the same bytes, each test window's last M), the median training
step time (the logged examples/s after the first log, which includes compilation) and the
training FLOPs per step (3 x the forward pass's XLA-counted FLOPs per example x batch).
A workdir that already holds the finished run is read, not retrained. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_run(workdir: str) -> dict:
  with open(os.path.join(workdir, 'run_info.json')) as f:
    info = json.load(f)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  train = [r for r in records if r.get('split') == 'train']
  evals = [r for r in records if r.get('split') == 'eval']
  batch = config['train']['batch_size']
  step_seconds = statistics.median(batch / r['examples_per_sec'] for r in train[1:])
  return dict(context=config['task']['context'], latents=config['model']['num_latents'],
              steps=evals[-1]['step'], test_bits_per_byte=round(evals[-1]['bits_per_byte'], 4),
              test_accuracy=round(evals[-1]['accuracy'], 4),
              step_seconds=round(step_seconds, 4),
              train_gflops_per_step=round(3 * info['flops_per_example'] * batch / 1e9, 2),
              params=info['num_params'])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--contexts', default='128,512,1024')
  parser.add_argument('--latents', type=int, default=128)
  parser.add_argument('--steps', type=int, default=0, help='0: the config\'s')
  parser.add_argument('--workdir_root', default='workdirs/ar_context')
  parser.add_argument('--extra', default='', help='more train.py flags for every run')
  args = parser.parse_args()
  rows = []
  for context in (int(c) for c in args.contexts.split(',')):
    workdir = os.path.join(args.workdir_root, f'context{context}')
    variant = f'context={context},latents={args.latents}'
    if args.steps:
      variant += f',steps={args.steps}'
    if not os.path.isfile(os.path.join(workdir, 'metrics.jsonl')) or not any(
        n.startswith('eval_') for n in os.listdir(workdir)):
      command = [sys.executable, os.path.join(ROOT, 'train.py'),
                 f'--config=configs/perceiver_ar_stdlib.py:{variant}', f'--workdir={workdir}',
                 *shlex.split(args.extra)]
      print('+', ' '.join(command), flush=True)
      start = time.perf_counter()
      subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
      print(f'  {time.perf_counter() - start:.0f} s', flush=True)
    rows.append(read_run(workdir))
    print(json.dumps(rows[-1]), flush=True)
  base = rows[0]
  print(f'\nPerceiver AR on python_stdlib/packed; {platform.node()} ({os.cpu_count()} CPUs), '
        f'{time.strftime("%Y-%m-%d")}')
  print('| context N | latents M | steps | test bits/byte | step time (s) | vs first | '
        'train GFLOPs/step | vs first |')
  print('|---:|---:|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f"| {r['context']} | {r['latents']} | {r['steps']} | {r['test_bits_per_byte']:.3f} | "
          f"{r['step_seconds']:.3f} | {r['step_seconds'] / base['step_seconds']:.2f}x | "
          f"{r['train_gflops_per_step']:.1f} | "
          f"{r['train_gflops_per_step'] / base['train_gflops_per_step']:.2f}x |")


if __name__ == '__main__':
  main()
