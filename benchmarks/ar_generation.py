"""Perceiver AR generation cost against context length: cached vs re-encoding every byte.

  python benchmarks/ar_generation.py [--contexts=1024,4096,16384,65536] [--tokens=256]
      [--uncached_tokens=8] [--latents=128] [--width=128] [--layers=4] [--stride=64]

A randomly initialised model (generation cost does not depend on the weights) with a prompt
filling the whole context, so every sampled byte sees the full context. Per context:
the cached sampler's steady-state cost per byte (decode steps plus the strided window
slides they amortise: the wall time of --tokens bytes after one untimed warm-up of the same
call),
and the uncached baseline's (every byte re-encodes the context; --uncached_tokens bytes).
Reported: ms per byte, bytes per second, and each cost relative to the smallest context.
Compilation is excluded (the first call of each path is a warm-up). Nothing is asserted.

At batch 1 a cached step is memory-bound: it reads every weight once and the
cross-attend's keys and values of the whole context once. So the table also gives the
bytes a cached step reads (weights + caches) and the time reading them takes at this
machine's measured read bandwidth (a jitted sum over a 256 MiB array): the floor any
implementation of the model meets. The cost stays near-flat in N where the weights
outweigh the context's cache (about 12 L C^2 >> 2 N C floats): pass a larger --width
and --layers to see it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from perceiver_jax.model.perceiver_ar import PerceiverAR  # noqa: E402
from perceiver_jax.sampling import Sampler, SamplingOptions  # noqa: E402


def per_byte_seconds(sampler: Sampler, prompt: np.ndarray, tokens: int, cached: bool) -> float:
  options = SamplingOptions(temperature=1.0)
  sampler.generate(prompt, tokens, options=options, cached=cached)  # compiles; untimed
  start = time.perf_counter()
  sampler.generate(prompt, tokens, options=options, seed=1, cached=cached)
  return (time.perf_counter() - start) / tokens


def read_bandwidth(num_bytes: int = 256 << 20, repeats: int = 5) -> float:
  """Bytes per second of the fastest of `repeats` jitted sums over a float32 array."""
  array = jnp.ones((num_bytes // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(array).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    total(array).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return num_bytes / best


def step_bytes(model: PerceiverAR, context: int, latents: int, batch: int) -> int:
  """Bytes a cached step reads: the weights, and the caches (the context's cross-attend
  keys and values; each self-attend's for the latent window; the window's cross-attend
  outputs), float32."""
  weights = sum(x.size * x.dtype.itemsize
                for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  channels = model.embed.embedding.value.shape[1]
  caches = batch * channels * 4 * (2 * context + (2 * len(model.self_attends) + 1) * latents)
  return weights + caches


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--contexts', default='1024,4096,16384,65536')
  parser.add_argument('--tokens', type=int, default=256)
  parser.add_argument('--uncached_tokens', type=int, default=8)
  parser.add_argument('--latents', type=int, default=128)
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--heads', type=int, default=4)
  parser.add_argument('--layers', type=int, default=4)
  parser.add_argument('--stride', type=int, default=64)
  parser.add_argument('--batch', type=int, default=1)
  args = parser.parse_args()

  bandwidth = read_bandwidth()
  print(f'read bandwidth: {bandwidth / 1e9:.1f} GB/s', flush=True)
  rows = []
  for context in (int(c) for c in args.contexts.split(',')):
    model = PerceiverAR(max_context=context, num_latents=args.latents,
                        num_channels=args.width, num_heads=args.heads,
                        num_self_attends=args.layers, rngs=nnx.Rngs(0))
    sampler = Sampler(model, stride=args.stride)
    # The prompt fills the context less the bytes to generate: no context slide is timed
    # separately from the strided window re-encodes.
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 256, (args.batch, context - args.tokens - 1), dtype=np.int32)
    cached = per_byte_seconds(sampler, prompt, args.tokens, cached=True)
    uncached = per_byte_seconds(sampler, prompt, args.uncached_tokens, cached=False)
    read = step_bytes(model, context, args.latents, args.batch)
    rows.append(dict(context=context, cached_ms=1e3 * cached, uncached_ms=1e3 * uncached,
                     cached_bytes_per_s=args.batch / cached,
                     uncached_bytes_per_s=args.batch / uncached,
                     step_mib_read=read / 2**20, read_floor_ms=1e3 * read / bandwidth))
    print(json.dumps(rows[-1]), flush=True)

  base = rows[0]
  print(f'\nPerceiver AR generation, {args.latents} latents x {args.width} channels, '
        f'{args.layers} self-attends, stride {args.stride}, batch {args.batch}; '
        f'{platform.node()} ({os.cpu_count()} CPUs), read bandwidth '
        f'{bandwidth / 1e9:.1f} GB/s, {time.strftime("%Y-%m-%d")}')
  print('| context | cached ms/byte | cached bytes/s | vs smallest | MiB read per step | '
        'read floor ms | uncached ms/byte | uncached bytes/s | vs smallest | '
        'cached speed-up |')
  print('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f"| {r['context']} | {r['cached_ms']:.2f} | {r['cached_bytes_per_s']:.1f} | "
          f"{r['cached_ms'] / base['cached_ms']:.2f}x | {r['step_mib_read']:.1f} | "
          f"{r['read_floor_ms']:.2f} | {r['uncached_ms']:.1f} | "
          f"{r['uncached_bytes_per_s']:.2f} | {r['uncached_ms'] / base['uncached_ms']:.2f}x | "
          f"{r['uncached_ms'] / r['cached_ms']:.1f}x |")


if __name__ == '__main__':
  main()
