"""Training throughput (examples/s): our Perceiver vs perceiver-pytorch and transformers.

  python benchmarks/throughput.py [--configs=small,medium] [--warmup=2] [--steps=10]
      [--rounds=1] [--peers=auto|none] [--torch_python=/work/torchenv/bin/python]

Two reference configs (CONFIGS), each a classifier on inputs [batch, N, C] with one
cross-attend (1 head) then S latent self-attends, mean-pooled latents -> linear logits. Every
MLP has 12 * D^2 weights: widening factor 6 for ours and transformers, which is what
lucidrains' fixed GEGLU FeedForward(mult=4) has (D -> 8D -> gate -> 4D -> D). Parameter
counts are printed to show the three match.

Ours: a jitted train step (AdamW, cross-entropy, donated state) on one device of the default
backend, float32 unless --dtype. The torch peers run in a subprocess (benchmarks/torch_peers.py
under --torch_python, eager mode) with torch.set_num_threads = this machine's core count;
they are skipped with a message if that Python or a library is missing. Per config, ours
runs first and the peers right after; --rounds repeats that and pools the step times, so
load from other processes falls on every implementation alike. Warm-up steps (ours:
compilation) are excluded. Reported: median and fastest step, examples/s = batch / median
step, and "ours vs this" = our examples/s / this one's (> 1: ours is faster). Nothing is
asserted.

Needs only jax, flax, optax, numpy and perceiver_jax.model (no ml_collections/grain/tfds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from perceiver_jax.model.decoders import ProjectionDecoder  # noqa: E402
from perceiver_jax.model.encoder import PerceiverEncoder  # noqa: E402
from perceiver_jax.model.perceiver import Perceiver  # noqa: E402

# inputs N, channels C, latents M, width D (latent channels), S self-attends, heads, classes.
CONFIGS = {
    'small': dict(inputs=512, channels=32, latents=64, width=128, self_attends=4,
                  self_heads=4, cross_heads=1, widening=6, classes=10, batch=64),
    'medium': dict(inputs=2048, channels=64, latents=256, width=512, self_attends=6,
                   self_heads=8, cross_heads=1, widening=6, classes=1000, batch=32),
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def build_ours(cfg: dict, dtype=jnp.float32, seed: int = 0) -> Perceiver:
  """The config as our modules: no preprocessor (inputs are the C channels), one block."""
  rngs = nnx.Rngs(params=seed)
  kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
  # Parameters carry logical axis names; on one device there is nothing to place.
  with nnx.use_eager_sharding(False):
    encoder = PerceiverEncoder(
        cfg['channels'], num_latents=cfg['latents'], num_latent_channels=cfg['width'],
        num_blocks=1, num_self_attends_per_block=cfg['self_attends'],
        num_cross_attend_heads=cfg['cross_heads'], num_self_attend_heads=cfg['self_heads'],
        cross_attend_widening_factor=cfg['widening'],
        self_attend_widening_factor=cfg['widening'], **kw)
    decoder = ProjectionDecoder(cfg['width'], cfg['classes'], **kw)
  return Perceiver(None, encoder, decoder)


def make_train_step(model: nnx.Module, tx: optax.GradientTransformation):
  """(step(state, x, y) -> (state, loss), initial state), the state = (params, opt_state)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # Pure dicts of arrays: flattening nnx.Variables on every call costs host time per step.
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  def loss_fn(params, x, y):
    logits = nnx.merge(graphdef, params, rest)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(state, x, y):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return jax.jit(step, donate_argnums=(0,)), (params, tx.init(params))


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def time_ours(cfg: dict, warmup: int, steps: int, dtype=jnp.float32) -> dict:
  device = jax.devices()[0]
  with jax.default_device(device):
    model = build_ours(cfg, dtype)
    step, state = make_train_step(model, optax.adamw(1e-3, weight_decay=1e-4))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(cfg['batch'], cfg['inputs'], cfg['channels'])),
                    jnp.float32)
    y = jnp.asarray(rng.integers(0, cfg['classes'], cfg['batch']), jnp.int32)
    row = {'params': count_params(state[0])}
    times = []
    for i in range(warmup + steps):
      start = time.perf_counter()
      state, loss = step(state, x, y)
      float(loss)  # the step is finished when its loss is on the host
      if i >= warmup:
        times.append(time.perf_counter() - start)
  row.update(step_times=times, device=device.device_kind)
  return row


def run_peers(names, args) -> list[dict]:
  """The torch peers' rows (or one row per peer saying why they were skipped)."""
  if args.peers == 'none':
    return []
  if not os.path.exists(args.torch_python):
    print(f'Skipping the torch peers: {args.torch_python} does not exist '
          '(--torch_python=PATH to a Python with torch, perceiver-pytorch, transformers).')
    return []
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_peers.py')
  cmd = [args.torch_python, script, '--configs=' + json.dumps({n: CONFIGS[n] for n in names}),
         f'--threads={args.threads}', f'--warmup={args.warmup}', f'--steps={args.steps}']
  proc = subprocess.run(cmd, capture_output=True, text=True)
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  if proc.returncode != 0:
    print(f'The torch peers failed ({proc.returncode}): {proc.stderr[-2000:]}')
  return rows


def merge_rounds(rows: list[dict]) -> list[dict]:
  """One row per (config, impl): the step times of every round together."""
  merged = {}
  for r in rows:
    key = (r['config'], r['impl'])
    if key not in merged or 'error' in merged[key]:
      merged[key] = dict(r)
    elif 'step_times' in r:
      merged[key]['step_times'] = merged[key]['step_times'] + r['step_times']
  return list(merged.values())


def format_table(rows: list[dict]) -> str:
  """Markdown: config, implementation, params (and vs ours), step times, examples/s."""
  lines = ['| config | implementation | parameters | vs ours | median step (s) | '
           'fastest step (s) | examples/s (median) | ours vs this |',
           '|---|---|---|---|---|---|---|---|']
  ours = {r['config']: r for r in rows if r['impl'] == 'perceiver_jax'}
  for r in rows:
    if 'error' in r:
      lines.append(f"| {r['config']} | {r['impl']} | skipped: {r['error']} | | | | | |")
      continue
    base = ours[r['config']]
    diff = r['params'] - base['params']
    vs_ours = f'{diff:+,} ({diff / base["params"]:+.2%})' if diff else '='
    ratio = base['examples_per_s'] / r['examples_per_s']
    lines.append(f"| {r['config']} | {r['impl']} | {r['params']:,} | {vs_ours} | "
                 f"{r['median_s']:.4f} | {r['min_s']:.4f} | {r['examples_per_s']:.1f} | "
                 f"{ratio:.2f}x |")
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='small,medium')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--steps', type=int, default=10, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=1,
                      help='ours then the peers, this many times over (spreads load changes)')
  parser.add_argument('--dtype', default='float32', choices=list(DTYPES))
  parser.add_argument('--peers', default='auto', choices=['auto', 'none'])
  parser.add_argument('--torch_python', default='/work/torchenv/bin/python')
  parser.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)),
                      help='torch threads (default: the cores this process may use)')
  parser.add_argument('--json', default='', help='also write the rows to this file')
  args = parser.parse_args(argv)
  names = args.configs.split(',')
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    parser.error(f'unknown config {unknown[0]!r}; choose from {", ".join(CONFIGS)}')

  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
        f'({jax.default_backend()}); {args.threads} cores; load average '
        f'{os.getloadavg()[0]:.2f}; {args.rounds} round(s) of warm-up {args.warmup} + '
        f'{args.steps} timed steps')
  rows = []
  for round_ in range(args.rounds):
    for name in names:
      # Each config's peers run right after ours, so a change in machine load between
      # configs or rounds does not tilt one comparison.
      print(f'round {round_ + 1}, {name}: {CONFIGS[name]}', flush=True)
      rows.append({'config': name, 'impl': 'perceiver_jax', 'jax': jax.__version__,
                   **time_ours(CONFIGS[name], args.warmup, args.steps, DTYPES[args.dtype])})
      rows += run_peers([name], args)
  rows = merge_rounds(rows)
  for r in rows:
    if 'step_times' in r:
      r['median_s'] = statistics.median(r['step_times'])
      r['min_s'] = min(r['step_times'])
      r['examples_per_s'] = CONFIGS[r['config']]['batch'] / r['median_s']
  rows.sort(key=lambda r: (names.index(r['config']), r['impl'] != 'perceiver_jax'))
  print(f'load average at the end {os.getloadavg()[0]:.2f}')
  print(format_table(rows))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()
