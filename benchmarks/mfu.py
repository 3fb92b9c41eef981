"""Model-FLOPs utilisation (MFU), speed and peak memory of a training step.

  python benchmarks/mfu.py [--config=configs/imagenet_perceiver.py] [--batch=64]
      [--dtype=bfloat16] [--set model.encoder.remat=full ...] [--attention_impl=xla|cudnn]
      [--no_scan] [--warmup=3] [--steps=10] [--profile=DIR] [--record=FILE] [--label=X]
      [--peak_tflops=X] [--tiny] [--count_only]

The model: by default the ImageNet Perceiver IO of configs/pretrained/vision_perceiver_fourier.py
(224x224 RGB pixels + 2-D Fourier features, 64 bands: 261 channels x 50,176 inputs; 512 x
1024 latents; 8 blocks of 6 self-attends with shared weights, 8 heads; 1-head cross-attend;
widening 1; one-query classification decoder, 1000 classes), from the shapes in IMAGENET so
that a host without ml_collections can run it; --tiny shrinks it to check on a CPU. With
--config, any experiment config (its model at full size; needs ml_collections): image
inputs of task.image_size, or for a text model token ids of preprocessor.max_seq_len with
a label per position.

The step: AdamW on float32 parameters, --dtype compute, cross-entropy, the state donated,
on one device. Model FLOPs are the matrix products of the forward pass counted from its
jaxpr (perceiver_jax/flops.py), x 3 for the step; the same count for every backend and
attention kernel. Achieved FLOP/s = model FLOPs / step time, where the step time is the
median over rounds of `--steps` back-to-back steps (one wait at the end of each round);
MFU = achieved / peak (--peak_tflops, or PEAK_TFLOPS dense bf16 by device kind). Peak memory
is the device's `memory_stats()` high-water mark where the backend keeps one; the compiled
step's memory analysis is printed too (any backend). --record appends the result as one
JSON line (benchmarks/results/gpu.jsonl on a GPU). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.throughput import count_params, make_train_step  # noqa: E402
from perceiver_jax import flops as flops_lib  # noqa: E402
from perceiver_jax.model.decoders import ClassificationDecoder  # noqa: E402
from perceiver_jax.model.encoder import PerceiverEncoder  # noqa: E402
from perceiver_jax.model.image_processors import ImagePreprocessor  # noqa: E402
from perceiver_jax.model.perceiver import Perceiver  # noqa: E402
from perceiver_jax.model.settings import ModelSettings  # noqa: E402

IMAGENET = dict(image=(224, 224, 3), num_bands=64, latents=512, width=1024, blocks=8,
                self_attends=6, self_heads=8, cross_heads=1, widening=1, classes=1000)
TINY = dict(image=(16, 16, 3), num_bands=4, latents=16, width=32, blocks=1, self_attends=2,
            self_heads=2, cross_heads=1, widening=1, classes=10)
# Dense bf16 matrix peaks (TFLOP/s) by a substring of jax's device_kind; first match.
PEAK_TFLOPS = (('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H100', 989.4), ('H200', 989.4),
               ('A100', 312.0), ('TPU v6', 918.0), ('TPU v5p', 459.0), ('TPU v5', 197.0),
               ('TPU v4', 275.0))
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
IMAGENET_TRAIN_EXAMPLES = 1_281_167  # as configs/_imagenet.py, which needs ml_collections
IMAGENET_EPOCHS = 110
DEFAULT_RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                              'gpu.jsonl')


def build(cfg: dict, dtype, attention_impl: str | None, scan_blocks: bool = True,
          remat: str = 'none') -> Perceiver:
  """The Perceiver IO ImageNet classifier of vision_perceiver_fourier.py at `cfg`'s shapes."""
  h, w, _ = cfg['image']
  kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(params=0))
  pos = dict(name='fourier', num_bands=cfg['num_bands'], max_resolution=(h, w),
             concat_pos=True, sine_only=False, project_pos_dim=-1)
  settings = ModelSettings(attention_impl=attention_impl)
  with nnx.use_eager_sharding(False):
    prep = ImagePreprocessor(cfg['image'], prep_type='pixels', spatial_downsample=1,
                             position_encoding=pos, **kw)
    encoder = PerceiverEncoder(
        prep.num_channels, num_latents=cfg['latents'], num_latent_channels=cfg['width'],
        num_blocks=cfg['blocks'], num_self_attends_per_block=cfg['self_attends'],
        num_cross_attend_heads=cfg['cross_heads'], num_self_attend_heads=cfg['self_heads'],
        cross_attend_widening_factor=cfg['widening'],
        self_attend_widening_factor=cfg['widening'], settings=settings,
        scan_blocks=scan_blocks, remat=remat, **kw)
    decoder = ClassificationDecoder(cfg['width'], cfg['classes'],
                                    num_query_channels=cfg['width'], num_heads=1,
                                    widening_factor=1, settings=settings, **kw)
  return Perceiver(prep, encoder, decoder)


def analytic_flops(cfg: dict, batch: int) -> float:
  """Matmul FLOPs of one training step of `build(cfg)`, written out by hand (3 x forward)."""
  n = cfg['image'][0] * cfg['image'][1]
  c = cfg['image'][2] + 2 * (2 * cfg['num_bands'] + 1)  # pixels + Fourier features
  m, d, w = cfg['latents'], cfg['width'], cfg['widening']
  qk = c  # the cross-attend's q/k/v width follows the inputs ('kv')
  cross = m * d * qk + 2 * n * c * qk + 2 * m * n * qk + m * qk * d + 2 * m * d * w * d
  latent = 4 * m * d * d + 2 * m * m * d + 2 * m * d * w * d
  decoder = d * d + 2 * m * d * d + 2 * m * d + d * d + 2 * d * d + d * cfg['classes']
  macs = cross + cfg['blocks'] * cfg['self_attends'] * latent + decoder
  return 3 * 2 * macs * batch


def xla_flops(step, *args) -> float | None:
  """FLOPs in XLA's cost analysis of the step (lowered, else compiled); None if the
  backend reports none (XLA:GPU's lowered analysis, for one)."""
  for analysis in (lambda: step.lower(*args).cost_analysis(),
                   lambda: step.lower(*args).compile().cost_analysis()):
    try:
      cost = analysis()
    except Exception:  # pylint: disable=broad-except  (backends differ in what they support)
      continue
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    if cost and cost.get('flops'):
      return float(cost['flops'])
  return None


def peak_flops(device_kind: str, override: float) -> float | None:
  if override:
    return override * 1e12
  for key, tflops in PEAK_TFLOPS:
    if key in device_kind:
      return tflops * 1e12
  return None


def load_config(spec: str, overrides: list[str]):
  """configs/x.py[:variant] with --set a.b=value overrides applied (values parsed as
  Python literals where they parse)."""
  import ast  # pylint: disable=g-import-not-at-top
  path, _, variant = spec.partition(':')
  module = importlib.import_module(path.replace('/', '.').removesuffix('.py'))
  config = module.get_config(variant or None)
  for item in overrides:
    key, _, value = item.partition('=')
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def model_and_batch(args, dtype, attention_impl):
  """(model, inputs, labels, name) for the chosen model at --batch."""
  rng = np.random.default_rng(0)
  if args.config:
    from perceiver_jax.model.build import build_model  # pylint: disable=g-import-not-at-top
    config = load_config(args.config, args.set)
    config.model.attention_impl = attention_impl
    config.model.encoder.scan_blocks = not args.no_scan
    if args.remat:
      config.model.encoder.remat = args.remat
    model_cfg = config.model
    if model_cfg.preprocessor.name == 'text':
      length = int(model_cfg.preprocessor.max_seq_len)
      x = rng.integers(0, int(model_cfg.preprocessor.vocab_size), (args.batch, length))
      y = rng.integers(0, int(model_cfg.num_classes), (args.batch, length))
      shape, x = (length,), jnp.asarray(x, jnp.int32)
    else:
      size = int(config.task.get('image_size', 224))
      shape = (size, size, 3)
      x = jnp.asarray(rng.normal(size=(args.batch,) + shape), jnp.float32)
      y = rng.integers(0, int(model_cfg.num_classes), args.batch)
    model = build_model(model_cfg, input_shape=shape, rngs=nnx.Rngs(params=0), dtype=dtype)
    return model, x, jnp.asarray(y, jnp.int32), args.config
  cfg = TINY if args.tiny else IMAGENET
  x = jnp.asarray(rng.normal(size=(args.batch,) + cfg['image']), jnp.float32)
  y = jnp.asarray(rng.integers(0, cfg['classes'], args.batch), jnp.int32)
  model = build(cfg, dtype, attention_impl, scan_blocks=not args.no_scan,
                remat=args.remat or 'none')
  return model, x, y, 'vision_perceiver_fourier' + ('(tiny)' if args.tiny else '')


def step_flops(args, dtype, x) -> int:
  """3 x the forward pass's matrix products, counted on the model with plain attention
  (a fused kernel is one opaque call in the jaxpr; the products are the same)."""
  model, *_ = model_and_batch(args, dtype, 'xla')
  graphdef, state = nnx.split(model)
  forward = flops_lib.forward_flops(lambda s, x: nnx.merge(graphdef, s)(x), state,
                                    jax.ShapeDtypeStruct(x.shape, x.dtype))
  return flops_lib.train_step_flops(forward)


def time_steps(step, state, x, y, warmup: int, steps: int, rounds: int = 3):
  """(median seconds per step over rounds of `steps` back-to-back steps, state)."""
  for _ in range(warmup):
    state, loss = step(state, x, y)
  jax.block_until_ready(loss)
  per_step = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(steps):
      state, loss = step(state, x, y)
    jax.block_until_ready(loss)
    per_step.append((time.perf_counter() - start) / steps)
  return statistics.median(per_step), state


def peak_memory_gib(device) -> float | None:
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return stats['peak_bytes_in_use'] / 2**30


def compiled_memory_gib(step, *args) -> float | None:
  """Arguments + outputs + temporaries of the compiled step, from XLA's memory analysis."""
  try:
    mem = step.lower(*args).compile().memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if mem is None:
    return None
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
           - mem.alias_size_in_bytes)
  return total / 2**30


def versions() -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  return {'jax': jax.__version__, 'jaxlib': jax.lib.__version__ if hasattr(jax.lib, '__version__')
          else jax.__version__, 'flax': flax.__version__, 'optax': optax.__version__}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='', help='configs/x.py[:variant] (needs ml_collections)')
  parser.add_argument('--set', action='append', default=[],
                      help='a.b=value override of the config (repeatable)')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--dtype', default='bfloat16', choices=list(DTYPES))
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--steps', type=int, default=10, help='steps per timed round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help='device peak for this dtype; default: PEAK_TFLOPS by device kind')
  parser.add_argument('--attention_impl', default=None, choices=[None, 'xla', 'cudnn'],
                      help='force one attention kernel (default: chosen per attention)')
  parser.add_argument('--remat', default='', choices=['', 'none', 'full', 'dots_saveable'])
  parser.add_argument('--no_scan', action='store_true',
                      help='unroll the weight-shared blocks instead of one scan')
  parser.add_argument('--tiny', action='store_true', help='tiny shapes, to check on a CPU')
  parser.add_argument('--count_only', action='store_true',
                      help='print parameters, FLOPs and compiled memory; run no step')
  parser.add_argument('--profile', default='', help='trace 3 steps into this directory and '
                      'print where the device time goes')
  parser.add_argument('--record', default=None, help='append the result as a JSON line here '
                      '(default on a GPU: benchmarks/results/gpu.jsonl; "" = nowhere)')
  parser.add_argument('--label', default='', help='a name for this variant in the record')
  args = parser.parse_args(argv)
  dtype = DTYPES[args.dtype]
  device = jax.devices()[0]
  model, x, y, name = model_and_batch(args, dtype, args.attention_impl)
  tx = optax.adamw(1e-3, weight_decay=1e-4)
  step, state = make_train_step(model, tx)
  del model
  flops = step_flops(args, dtype, x)
  params = count_params(state[0])
  print(f'jax {jax.__version__} on {device.device_kind} ({jax.default_backend()}); {name}, '
        f'{params:,} parameters, batch {args.batch}, compute {args.dtype}'
        f'{", " + args.label if args.label else ""}', flush=True)
  print(f'model FLOPs per step: {flops:.4g} (matrix products, 3 x forward)', end='')
  if not args.config:
    print(f'; {analytic_flops(TINY if args.tiny else IMAGENET, args.batch):.4g} written out '
          'by hand', end='')
  print(flush=True)
  if args.count_only:
    xla = xla_flops(step, state, x, y)
    print(f'XLA cost analysis: {xla:.4g} FLOPs' if xla else 'XLA cost analysis: none')
    mem = compiled_memory_gib(step, state, x, y)
    print(f'compiled step memory (arguments + outputs + temporaries): '
          f'{mem:.2f} GiB' if mem is not None else 'compiled step memory: not reported')
    return {'flops': flops, 'params': params, 'compiled_gib': mem}

  start = time.perf_counter()
  step = step.lower(state, x, y).compile()
  compile_s = time.perf_counter() - start
  median, state = time_steps(step, state, x, y, args.warmup, args.steps, args.rounds)
  achieved = flops / median
  peak = peak_flops(device.device_kind, args.peak_tflops)
  peak_gib = peak_memory_gib(device)
  print(f'compiled in {compile_s:.1f} s; step {median * 1e3:.2f} ms (median of {args.rounds} '
        f'rounds of {args.steps}); {args.batch / median:.1f} examples/s; achieved '
        f'{achieved / 1e12:.2f} TFLOP/s')
  if peak:
    print(f'MFU {achieved / peak:.1%} of {peak / 1e12:.1f} TFLOP/s ({device.device_kind})')
  else:
    print(f'MFU: no peak known for {device.device_kind!r}; pass --peak_tflops')
  print(f'peak device memory {peak_gib:.2f} GiB' if peak_gib is not None
        else 'peak device memory: not reported by this backend')
  if not args.config and not args.tiny:
    days = IMAGENET_TRAIN_EXAMPLES * IMAGENET_EPOCHS / (args.batch / median) / 86400
    print(f'projected {IMAGENET_EPOCHS} epochs of {IMAGENET_TRAIN_EXAMPLES:,} images on this '
          f'one device at this rate: {days:.1f} days (input pipeline not included)')
  print('versions: ' + ', '.join(f'{k} {v}' for k, v in versions().items()))
  if args.profile:
    jax.block_until_ready(state)
    with jax.profiler.trace(args.profile, create_perfetto_trace=True):
      for _ in range(3):
        state, loss = step(state, x, y)
      jax.block_until_ready(loss)
    from benchmarks import profile_summary  # pylint: disable=g-import-not-at-top
    print(profile_summary.summarize(args.profile))

  result = {
      'date': datetime.date.today().isoformat(), 'device': device.device_kind,
      **versions(), 'config': name, 'label': args.label, 'what': 'bare step',
      'batch': args.batch, 'dtype': args.dtype, 'params': params,
      'step_ms': round(median * 1e3, 2), 'examples_per_s': round(args.batch / median, 1),
      'model_tflop_per_step': round(flops / 1e12, 3),
      'tflops': round(achieved / 1e12, 1), 'mfu': round(achieved / peak, 4) if peak else None,
      'peak_gib': round(peak_gib, 2) if peak_gib is not None else None,
      'compile_s': round(compile_s, 1),
      'settings': {'attention_impl': args.attention_impl, 'scan': not args.no_scan,
                   'remat': args.remat or 'none', 'set': args.set},
  }
  record = args.record
  if record is None:
    record = DEFAULT_RECORD if jax.default_backend() == 'gpu' else ''
  if record:
    os.makedirs(os.path.dirname(os.path.abspath(record)), exist_ok=True)
    with open(record, 'a') as f:
      f.write(json.dumps(result) + '\n')
  print('RESULT ' + json.dumps(result), flush=True)
  return result


if __name__ == '__main__':
  main()
