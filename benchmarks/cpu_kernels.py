"""The kernels of a CPU training step alone: JAX (XLA:CPU) against PyTorch, side by side.

  python benchmarks/cpu_kernels.py [--kernels=gemm,mlp,attention] [--repeats=10]
      [--torch_python=/work/torchenv/bin/python]

benchmarks/throughput.py times whole training steps; this times their parts at the shapes
of its two configs (throughput.CONFIGS), to find where XLA:CPU and torch differ:
  gemm       one matrix product of the MLP, forward (x @ W), input gradient (dy @ W^T) and
             weight gradient (x^T @ dy)
  mlp        dense -> tanh-GELU -> dense, forward and forward+backward
  attention  softmax(q k^T / sqrt(d)) v over [batch, length, heads, head_dim] operands,
             forward+backward, through the model's own entry point
             (perceiver_jax.model.attention.dot_product_attention) and with the heads moved
             in front first ([batch, heads, length, head_dim], the layout torch's bmm reads);
             torch: the same on [batch, heads, length, head_dim] tensors
Each kernel is jitted (JAX) or run eagerly (torch, --threads threads), warmed up twice and
timed `--repeats` times; the median is reported. The torch half runs as a subprocess
(`--impl=torch` of this file) and is skipped with a message when that Python is missing.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

# (name, tokens = batch x length, width, MLP hidden) from throughput.CONFIGS.
MLP_SHAPES = (('small', 64 * 64, 128, 768), ('medium', 32 * 256, 512, 3072))
# (name, batch, queries, keys, heads, head width): the configs' self- and cross-attends.
ATTENTION_SHAPES = (('small self', 64, 64, 64, 4, 32), ('small cross', 64, 64, 512, 1, 128),
                    ('medium self', 32, 256, 256, 8, 64),
                    ('medium cross', 32, 256, 2048, 1, 512))
GELU_C = float(np.sqrt(2.0 / np.pi))


def median_ms(fn, repeats: int) -> float:
  for _ in range(2):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times) * 1e3)


def jax_rows(kernels, repeats):
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from perceiver_jax.model.attention import dot_product_attention

  rng = np.random.default_rng(0)

  def array(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)

  rows = []
  if 'gemm' in kernels:
    for name, tokens, width, hidden in MLP_SHAPES:
      x, w, dy = array(tokens, width), array(width, hidden), array(tokens, hidden)
      for what, fn, args in (('x @ W', lambda x, w: x @ w, (x, w)),
                             ('dy @ W^T', lambda dy, w: dy @ w.T, (dy, w)),
                             ('x^T @ dy', lambda x, dy: x.T @ dy, (x, dy))):
        f = jax.jit(fn)
        rows.append(dict(kernel='gemm', shape=f'{name} {what}', impl='jax',
                         gflop=2 * tokens * width * hidden / 1e9,
                         ms=median_ms(lambda: f(*args).block_until_ready(), repeats)))
  if 'mlp' in kernels:
    for name, tokens, width, hidden in MLP_SHAPES:
      x = array(tokens, width)
      params = (array(width, hidden) / np.sqrt(width), jnp.zeros(hidden),
                array(hidden, width) / np.sqrt(hidden), jnp.zeros(width))

      def mlp(p, x):
        return jax.nn.gelu(x @ p[0] + p[1]) @ p[2] + p[3]

      fwd = jax.jit(mlp)
      grad = jax.jit(jax.grad(lambda p, x: jnp.sum(mlp(p, x) ** 2)))
      gflop = 4 * tokens * width * hidden / 1e9
      rows.append(dict(kernel='mlp forward', shape=name, impl='jax', gflop=gflop,
                       ms=median_ms(lambda: fwd(params, x).block_until_ready(), repeats)))
      rows.append(dict(kernel='mlp forward+backward', shape=name, impl='jax', gflop=3 * gflop,
                       ms=median_ms(lambda: jax.block_until_ready(grad(params, x)), repeats)))
  if 'attention' in kernels:
    def heads_major(q, k, v):
      q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
      probs = jax.nn.softmax(q @ jnp.swapaxes(k, 2, 3) / np.sqrt(q.shape[-1]), axis=-1)
      return jnp.swapaxes(probs @ v, 1, 2)

    for name, batch, queries, keys, heads, width in ATTENTION_SHAPES:
      q, k, v = array(batch, queries, heads, width), array(batch, keys, heads, width), \
          array(batch, keys, heads, width)
      dy = array(batch, queries, heads, width)
      gflop = 3 * 4 * batch * heads * queries * keys * width / 1e9
      for impl, fn in (('jax (model path)', dot_product_attention),
                       ('jax (heads first)', heads_major)):
        grad = jax.jit(jax.grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v) * dy),
                                argnums=(0, 1, 2)))
        rows.append(dict(kernel='attention forward+backward', shape=name, impl=impl,
                         gflop=gflop,
                         ms=median_ms(lambda: jax.block_until_ready(grad(q, k, v)), repeats)))
  return rows


def torch_rows(kernels, repeats, threads):
  import torch
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  rows = []
  with torch.no_grad():
    if 'gemm' in kernels:
      for name, tokens, width, hidden in MLP_SHAPES:
        x, w = torch.randn(tokens, width), torch.randn(width, hidden)
        dy = torch.randn(tokens, hidden)
        for what, fn in (('x @ W', lambda: x @ w), ('dy @ W^T', lambda: dy @ w.T),
                         ('x^T @ dy', lambda: x.T @ dy)):
          rows.append(dict(kernel='gemm', shape=f'{name} {what}', impl='torch',
                           gflop=2 * tokens * width * hidden / 1e9,
                           ms=median_ms(fn, repeats)))
  if 'mlp' in kernels:
    for name, tokens, width, hidden in MLP_SHAPES:
      x = torch.randn(tokens, width)
      dense_in, dense_out = torch.nn.Linear(width, hidden), torch.nn.Linear(hidden, width)

      def mlp():
        return dense_out(torch.nn.functional.gelu(dense_in(x), approximate='tanh'))

      def step():
        (mlp() ** 2).sum().backward()

      gflop = 4 * tokens * width * hidden / 1e9
      with torch.no_grad():
        rows.append(dict(kernel='mlp forward', shape=name, impl='torch', gflop=gflop,
                         ms=median_ms(mlp, repeats)))
      rows.append(dict(kernel='mlp forward+backward', shape=name, impl='torch',
                       gflop=3 * gflop, ms=median_ms(step, repeats)))
  if 'attention' in kernels:
    for name, batch, queries, keys, heads, width in ATTENTION_SHAPES:
      q = torch.randn(batch, heads, queries, width, requires_grad=True)
      k = torch.randn(batch, heads, keys, width, requires_grad=True)
      v = torch.randn(batch, heads, keys, width, requires_grad=True)
      dy = torch.randn(batch, heads, queries, width)

      def step():
        probs = torch.softmax(q @ k.transpose(-1, -2) / width ** 0.5, -1)
        ((probs @ v) * dy).sum().backward()

      rows.append(dict(kernel='attention forward+backward', shape=name, impl='torch (bmm)',
                       gflop=3 * 4 * batch * heads * queries * keys * width / 1e9,
                       ms=median_ms(step, repeats)))
  return rows


def format_table(rows) -> str:
  """One line per (kernel, shape): each implementation's ms and GFLOP/s, jax / torch time."""
  groups = {}
  for r in rows:
    groups.setdefault((r['kernel'], r['shape']), []).append(r)
  lines = ['| kernel | shape | implementation | ms | GFLOP/s | time vs torch |',
           '|---|---|---|---:|---:|---:|']
  for (kernel, shape), group in groups.items():
    torch_ms = next((r['ms'] for r in group if r['impl'].startswith('torch')), None)
    for r in group:
      ratio = f"{r['ms'] / torch_ms:.2f}x" if torch_ms else '-'
      lines.append(f"| {kernel} | {shape} | {r['impl']} | {r['ms']:.2f} | "
                   f"{r['gflop'] / r['ms'] * 1e3:.0f} | {ratio} |")
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--kernels', default='gemm,mlp,attention')
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--impl', default='jax', choices=['jax', 'torch'],
                      help='torch: print the torch rows as JSON (the subprocess half)')
  parser.add_argument('--torch_python', default='/work/torchenv/bin/python')
  parser.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)))
  args = parser.parse_args(argv)
  kernels = args.kernels.split(',')
  unknown = [k for k in kernels if k not in ('gemm', 'mlp', 'attention')]
  if unknown:
    parser.error(f'unknown kernel {unknown[0]!r}; choose from gemm, mlp, attention')
  if args.impl == 'torch':
    for row in torch_rows(kernels, args.repeats, args.threads):
      print(json.dumps(row), flush=True)
    return

  import jax
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind}; {args.threads} cores; '
        f'load average {os.getloadavg()[0]:.2f}; median of {args.repeats}')
  rows = jax_rows(kernels, args.repeats)
  if os.path.exists(args.torch_python):
    proc = subprocess.run(
        [args.torch_python, os.path.abspath(__file__), '--impl=torch',
         f'--kernels={args.kernels}', f'--repeats={args.repeats}', f'--threads={args.threads}'],
        capture_output=True, text=True)
    rows += [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    if proc.returncode != 0:
      print(f'The torch half failed ({proc.returncode}): {proc.stderr[-2000:]}')
  else:
    print(f'Skipping torch: {args.torch_python} does not exist (--torch_python=PATH).')
  print(format_table(rows))


if __name__ == '__main__':
  main()
