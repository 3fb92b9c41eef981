"""One attention block's forward + backward, by attention path, at the ImageNet model's shapes.

  python benchmarks/attention_bench.py [--batch=64] [--dtype=bfloat16] [--tiny]

Blocks (perceiver_jax.model.attention, bf16 compute, float32 parameters):
  cross  CrossAttention: 512 x 1024 latents attend to 50,176 x 261 inputs, 1 head (the
         Perceiver IO ImageNet encoder's cross-attend)
  self   SelfAttention: 512 x 1024 latents, 8 heads of 128 (one of its 48 self-attends)
and a plain [batch*512, 1024] x [1024, 1024] matrix product for the device's ceiling.
Each path is timed as the gradient of sum(block(...)) with respect to the parameters and
inputs (median over rounds of back-to-back calls), with its matrix FLOPs (3 x forward,
perceiver_jax/flops.py) and XLA's memory analysis (temporaries). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from perceiver_jax import flops as flops_lib  # noqa: E402
from perceiver_jax.model.attention import CrossAttention, SelfAttention  # noqa: E402

SHAPES = dict(latents=512, width=1024, inputs=224 * 224, channels=261, heads=8)
TINY = dict(latents=16, width=32, inputs=64, channels=13, heads=2)


def block_grad(block: nnx.Module, *inputs):
  """A jitted (params, *inputs) -> gradients of sum(block(*inputs)), and the params."""
  graphdef, params = nnx.split(block)

  def loss(params, *inputs):
    return jnp.sum(nnx.merge(graphdef, params)(*inputs).astype(jnp.float32))
  return jax.jit(jax.grad(loss, argnums=tuple(range(len(inputs) + 1)))), params, loss


def time_it(fn, *args, steps: int = 10, rounds: int = 3) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(steps):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times)


def temp_gib(fn, *args) -> float | None:
  try:
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**30
  except Exception:  # pylint: disable=broad-except
    return None


def run(name: str, block, inputs, loss_fn_flops_inputs) -> dict:
  grad, params, loss = block_grad(block, *inputs)
  try:
    seconds = time_it(grad, params, *inputs)
  except Exception as e:  # pylint: disable=broad-except  (a path this device cannot run)
    return {'path': name, 'error': f'{type(e).__name__}: {str(e).splitlines()[0][:120]}'}
  forward = flops_lib.forward_flops(loss, params, *loss_fn_flops_inputs)
  flops = flops_lib.train_step_flops(forward)
  return {'path': name, 'ms': seconds * 1e3, 'tflops': flops / seconds / 1e12,
          'temp_gib': temp_gib(grad, params, *inputs)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--tiny', action='store_true')
  parser.add_argument('--chunks', default='2048,8192', help='chunk sizes of the chunked path')
  args = parser.parse_args(argv)
  s = TINY if args.tiny else SHAPES
  dtype = jnp.dtype(args.dtype)
  key = jax.random.key(0)
  latents = jax.random.normal(key, (args.batch, s['latents'], s['width']), dtype)
  pixels = jax.random.normal(key, (args.batch, s['inputs'], s['channels']), dtype)
  rows = []
  kw = dict(dtype=dtype, param_dtype=jnp.float32)
  spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  with nnx.use_eager_sharding(False):
    cross_paths = [('cross, plain (XLA)', dict(attention_impl='xla'))]
    cross_paths += [(f'cross, chunked {c}', dict(attention_impl='xla', attention_chunk_size=c))
                    for c in map(int, args.chunks.split(','))]
    for name, extra in cross_paths:
      block = CrossAttention(s['width'], s['channels'], num_heads=1, rngs=nnx.Rngs(0),
                             **kw, **extra)
      rows.append(run(name, block, (latents, pixels), (spec(latents), spec(pixels))))
    for name, impl in (('self, XLA', 'xla'), ('self, cuDNN fused', 'cudnn'),
                       ('self, default', None)):
      block = SelfAttention(s['width'], num_heads=s['heads'], widening_factor=1,
                            rngs=nnx.Rngs(0), attention_impl=impl, **kw)
      rows.append(run(name, block, (latents,), (spec(latents),)))
  a = latents.reshape(-1, s['width'])
  w = jax.random.normal(key, (s['width'], s['width']), dtype)
  matmul = jax.jit(lambda a, w: a @ w)
  seconds = time_it(matmul, a, w, steps=50)
  rows.append({'path': f'matmul [{a.shape[0]} x {s["width"]}] x [{s["width"]} x '
                       f'{s["width"]}]', 'ms': seconds * 1e3,
               'tflops': 2 * a.shape[0] * s['width'] ** 2 / seconds / 1e12, 'temp_gib': None})
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind}; batch {args.batch}, '
        f'{args.dtype}')
  print('| path | fwd+bwd ms | TFLOP/s | temp GiB |\n|---|---:|---:|---:|')
  for r in rows:
    if 'error' in r:
      print(f"| {r['path']} | {r['error']} | | |")
    else:
      temp = f"{r['temp_gib']:.2f}" if r['temp_gib'] is not None else '-'
      print(f"| {r['path']} | {r['ms']:.2f} | {r['tflops']:.1f} | {temp} |")
  return rows


if __name__ == '__main__':
  main()
