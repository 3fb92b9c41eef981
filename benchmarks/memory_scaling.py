"""Compiled memory of one training step vs input size N, plain vs chunked attention.

One full step (forward, backward, AdamW update, state donated) of a Perceiver with fixed
latents is compiled ahead of time for inputs of N = 2^min_log2 ... 2^max_log2 tokens, and
XLA's buffer assignment (`jit(...).lower(...).compile().memory_analysis()`) gives its memory:
total = temp + argument + output - alias (the donated state is counted once). Nothing is
run or timed, so the figures are deterministic. For each path it prints a table, the log-log
slope of memory vs N, and the largest N whose step fits `--device_memory_gib` (bisected to
1/16 of an octave). `--confirm` then runs one real step, in a fresh process, at the
largest power of two whose step fits `--confirm_gib` (default: half the budget) and reports
its measured peak (the device's peak bytes in use on an accelerator, peak RSS on CPU).

The N-dependent part of a step is its total minus the total at N = 1 (parameters, AdamW
state and the latents' activations); with fixed latents M both paths grow linearly in N,
and the plain path's extra bytes per input token are the N x M attention matrix.

  python benchmarks/memory_scaling.py                            # CPU, 24 GiB
  python benchmarks/memory_scaling.py --device_memory_gib=80     # on an H100

Imports only jax, flax, optax, numpy and perceiver_jax.model (no ml_collections / grain /
tfds), so it runs on a bare accelerator host.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from perceiver_jax.model import ClassificationDecoder, Perceiver, PerceiverEncoder  # noqa: E402
from perceiver_jax.model.settings import ModelSettings  # noqa: E402

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Setup:
  """The benchmarked model and step: inputs [batch, N, input_channels] -> 1000 logits."""
  batch: int = 4
  input_channels: int = 64
  num_latents: int = 256
  latent_channels: int = 256
  self_attends: int = 4
  cross_heads: int = 1
  self_heads: int = 8
  num_classes: int = 1000
  chunk_size: int = 1024  # keys per chunk of the memory-efficient path


def build(setup: Setup, chunked: bool, rngs: nnx.Rngs) -> Perceiver:
  """The Perceiver (1 cross-attend + self_attends, classification decoder); `chunked`
  turns the memory-efficient path on for every attention with more keys than a chunk."""
  attn = dict(settings=ModelSettings(attention_chunk_size=setup.chunk_size if chunked else 0,
                                     attention_auto_chunk_threshold=0))
  # Unsharded parameters: their logical-axis metadata would otherwise need a mesh.
  with nnx.use_eager_sharding(False):
    encoder = PerceiverEncoder(
        setup.input_channels, num_latents=setup.num_latents,
        num_latent_channels=setup.latent_channels, num_blocks=1,
        num_self_attends_per_block=setup.self_attends,
        num_cross_attend_heads=setup.cross_heads, num_self_attend_heads=setup.self_heads,
        rngs=rngs, **attn)
    decoder = ClassificationDecoder(setup.latent_channels, setup.num_classes, rngs=rngs,
                                    **attn)
  return Perceiver(None, encoder, decoder)


def compiled_step(setup: Setup, n: int, chunked: bool):
  """(compiled train step, abstract (state, batch)); nothing is allocated."""
  graphdef, abstract_params = nnx.split(
      nnx.eval_shape(lambda: build(setup, chunked, nnx.Rngs(0))), nnx.Param)
  optimizer = optax.adamw(1e-3)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)

  def loss_fn(params, inputs, labels):
    logits = nnx.merge(graphdef, params)(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def train_step(state, inputs, labels):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  inputs = jax.ShapeDtypeStruct((setup.batch, n, setup.input_channels), jnp.float32)
  labels = jax.ShapeDtypeStruct((setup.batch,), jnp.int32)
  state = (abstract_params, abstract_opt)
  compiled = jax.jit(train_step, donate_argnums=0).lower(state, inputs, labels).compile()
  return compiled, (state, inputs, labels)


def step_memory(setup: Setup, n: int, chunked: bool) -> dict[str, int]:
  """Bytes of one compiled training step at input size n: temp, argument, output, alias,
  total = temp + argument + output - alias."""
  stats = compiled_step(setup, n, chunked)[0].memory_analysis()
  out = dict(temp=int(stats.temp_size_in_bytes), argument=int(stats.argument_size_in_bytes),
             output=int(stats.output_size_in_bytes), alias=int(stats.alias_size_in_bytes))
  out['total'] = out['temp'] + out['argument'] + out['output'] - out['alias']
  print(f'  compiled N={n:,} {"chunked" if chunked else "plain"}: '
        f'{out["total"] / 2 ** 20:,.1f} MiB', file=sys.stderr, flush=True)
  return out


def loglog_slope(ns, values) -> float:
  """Least-squares slope of log(values) against log(ns)."""
  return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def largest_fitting(total: Callable[[int], int], budget: int, start_log2: int,
                    max_log2: int) -> int:
  """The largest N <= 2^max_log2 with total(N) <= budget (0 if 2^start_log2 does not fit),
  assuming total grows with N: doubling from 2^start_log2, then bisection to 1/16 octave."""
  lo = 2 ** start_log2
  if total(lo) > budget:
    return 0
  while 2 * lo <= 2 ** max_log2 and total(2 * lo) <= budget:
    lo *= 2
  if 2 * lo > 2 ** max_log2:
    return lo
  hi, step = 2 * lo, max(1, lo // 16)
  while hi - lo > step:  # invariant: lo fits, hi does not
    mid = (lo + hi) // 2 // step * step
    lo, hi = (mid, hi) if total(mid) <= budget else (lo, mid)
  return lo


def run_one_step(setup: Setup, n: int, chunked: bool) -> dict:
  """Runs one real training step at size n: its loss and the peak memory this process
  used (the device's peak bytes in use on an accelerator, the peak RSS on CPU)."""
  compiled, _ = compiled_step(setup, n, chunked)
  model = build(setup, chunked, nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  state = (params, optax.adamw(1e-3).init(params))
  inputs = jax.random.normal(jax.random.key(1), (setup.batch, n, setup.input_channels))
  labels = jnp.zeros((setup.batch,), jnp.int32)
  _, loss = compiled(state, inputs, labels)
  loss = float(loss)
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return dict(loss=loss, peak_bytes=int(stats['peak_bytes_in_use']), peak_of='device')
  return dict(loss=loss, peak_of='process RSS',
              peak_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def confirm_in_subprocess(setup: Setup, n: int, chunked: bool) -> dict:
  """run_one_step in a fresh process, so its peak memory is this step's alone."""
  flags = [f'--{f.name}={getattr(setup, f.name)}' for f in dataclasses.fields(Setup)]
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), f'--run_step={n}',
       f'--run_chunked={int(chunked)}', *flags], capture_output=True, text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--min_log2', type=int, default=12)
  parser.add_argument('--max_log2', type=int, default=20)
  parser.add_argument('--device_memory_gib', type=float, default=24.0,
                      help='memory to fit the largest N into (0 = skip that search)')
  parser.add_argument('--search_max_log2', type=int, default=26,
                      help='largest N tried when searching for the largest N that fits')
  parser.add_argument('--confirm', action='store_true',
                      help='run one real step at the largest 2^k fitting --confirm_gib')
  parser.add_argument('--confirm_gib', type=float, default=0.0,
                      help='memory for the --confirm step (0 = half the budget)')
  parser.add_argument('--json', default='', help='write the results here')
  parser.add_argument('--run_step', type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--run_chunked', type=int, default=0, help=argparse.SUPPRESS)
  for field in dataclasses.fields(Setup):
    parser.add_argument(f'--{field.name}', type=int, default=field.default)
  args = parser.parse_args(argv)
  setup = Setup(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Setup)})
  if args.run_step:  # the child process of --confirm
    print(json.dumps(run_one_step(setup, args.run_step, bool(args.run_chunked))))
    return {}
  budget = int(args.device_memory_gib * GIB)
  ns = [2 ** k for k in range(args.min_log2, args.max_log2 + 1)]
  fixed = step_memory(setup, 1, False)['total']  # N = 1: everything that does not grow
  print(f'{jax.devices()[0].device_kind} ({jax.default_backend()}), {setup}')
  print(f'step at N = 1 (parameters, AdamW state, latent activations): '
        f'{fixed / 2 ** 20:.1f} MiB')
  results = dict(setup=dataclasses.asdict(setup), device=jax.devices()[0].device_kind,
                 backend=jax.default_backend(), fixed_bytes=fixed, budget_bytes=budget,
                 sizes=ns, paths={})
  caches = {}
  matrix = setup.num_latents * setup.cross_heads * 4  # one f32 N x M row per input token
  for chunked in (False, True):
    name = 'chunked' if chunked else 'plain'
    rows = [step_memory(setup, n, chunked) for n in ns]
    cache = caches[name] = {n: r['total'] for n, r in zip(ns, rows)}
    info = results['paths'][name] = dict(rows=rows)
    if len(ns) > 1:
      totals = np.array([r['total'] for r in rows], float)
      info['slope_total'] = loglog_slope(ns, totals)
      info['slope_n_dependent'] = loglog_slope(ns, totals - fixed)
      info['bytes_per_input_token'] = (
          (totals[-1] - totals[-2]) / (ns[-1] - ns[-2]) / setup.batch)
    if budget:
      def total(n, chunked=chunked, cache=cache):
        if n not in cache:
          cache[n] = step_memory(setup, n, chunked)['total']
        return cache[n]
      info['largest_n'] = largest_fitting(total, budget, args.min_log2, args.search_max_log2)
      info['largest_n_total'] = cache.get(info['largest_n'], 0)

  print(f'\n| N | plain total (MiB) | plain temp (MiB) | chunked total (MiB) | '
        f'chunked temp (MiB) | plain / chunked |')
  print('|---:|---:|---:|---:|---:|---:|')
  plain, chunked_rows = results['paths']['plain']['rows'], results['paths']['chunked']['rows']
  for n, p, c in zip(ns, plain, chunked_rows):
    print(f'| 2^{int(math.log2(n))} = {n} | {p["total"] / 2 ** 20:,.1f} | '
          f'{p["temp"] / 2 ** 20:,.1f} | {c["total"] / 2 ** 20:,.1f} | '
          f'{c["temp"] / 2 ** 20:,.1f} | {p["total"] / c["total"]:.2f} |')
  print()
  for name, info in results['paths'].items():
    if 'slope_total' in info:
      print(f'{name}: log-log slope {info["slope_total"]:.3f} (total), '
            f'{info["slope_n_dependent"]:.3f} (N-dependent part); '
            f'{info["bytes_per_input_token"]:,.0f} bytes per input token per example '
            f'(largest two sizes)')
  if len(ns) > 1:
    extra = (results['paths']['plain']['bytes_per_input_token']
             - results['paths']['chunked']['bytes_per_input_token'])
    results['plain_extra_nxm_arrays'] = extra / matrix
    print(f'plain - chunked: {extra:,.0f} bytes per input token = {extra / matrix:.2f} '
          f'float32 [{setup.cross_heads} heads x {setup.num_latents} latents x N] arrays')
  for name, info in results['paths'].items():
    if 'largest_n' in info:
      print(f'{name}: largest N within {args.device_memory_gib:g} GiB: '
            f'{info["largest_n"]:,} ({info["largest_n_total"] / GIB:.2f} GiB)')

  if args.confirm:
    for name in ('plain', 'chunked'):
      room = int(args.confirm_gib * GIB) if args.confirm_gib else budget // 2
      fits = [n for n, t in sorted(caches[name].items()) if t <= room and n & (n - 1) == 0]
      if fits:
        run = confirm_in_subprocess(setup, fits[-1], name == 'chunked')
        results['paths'][name]['confirmed'] = dict(n=fits[-1], **run)
        print(f'{name}: ran one step at N={fits[-1]:,} (compiled memory '
              f'{caches[name][fits[-1]] / GIB:.2f} GiB): loss {run["loss"]:.4f}, peak '
              f'{run["peak_of"]} {run["peak_bytes"] / GIB:.2f} GiB')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=1)
  return results


if __name__ == '__main__':
  main()
