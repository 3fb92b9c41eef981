"""Model-FLOPs utilisation (MFU) of a training step of the ImageNet Perceiver IO.

  python benchmarks/mfu.py [--batch=32] [--dtype=bfloat16] [--warmup=3] [--steps=10]
                           [--peak_tflops=X] [--attention_impl=xla|cudnn] [--tiny]
                           [--count_only]

The model is configs/pretrained/vision_perceiver_fourier.py (224x224 RGB pixels + 2-D
Fourier features, 64 bands: 261 channels x 50176 inputs; 512 x 1024 latents; 8 blocks of 6
self-attends with shared weights, 8 heads; 1-head cross-attend; widening 1; one-query
classification decoder, 1000 classes). Its shapes are written out in IMAGENET because the
config files need ml_collections, which accelerator hosts may lack. --tiny shrinks it to
check the script on a CPU.

Model FLOPs per step are XLA's cost analysis of the same train step lowered with plain XLA
attention (a fused cuDNN kernel is a custom call XLA does not count) and before
optimisation (no rematerialisation). An analytic count of the matmuls (3 x forward) is
printed beside it. Achieved FLOP/s = model FLOPs / median step time; MFU = achieved / peak,
the peak from --peak_tflops or PEAK_TFLOPS (dense bf16) by device kind; the time the
recipe's 110 epochs would take at the measured rate is printed too. Parameters and AdamW
state are float32; --dtype is the compute dtype. Nothing is asserted.
"""

from __future__ import annotations

import argparse
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
from perceiver_jax.model.decoders import ClassificationDecoder  # noqa: E402
from perceiver_jax.model.encoder import PerceiverEncoder  # noqa: E402
from perceiver_jax.model.image_processors import build_image_preprocessor  # noqa: E402
from perceiver_jax.model.perceiver import Perceiver  # noqa: E402

IMAGENET = dict(image=(224, 224, 3), num_bands=64, latents=512, width=1024, blocks=8,
                self_attends=6, self_heads=8, cross_heads=1, widening=1, classes=1000)
TINY = dict(image=(16, 16, 3), num_bands=4, latents=16, width=32, blocks=1, self_attends=2,
            self_heads=2, cross_heads=1, widening=1, classes=10)
# Dense bf16 tensor-core peaks (TFLOP/s) by a substring of jax's device_kind; first match.
PEAK_TFLOPS = (('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H100', 989.4), ('H200', 989.4),
               ('A100', 312.0))
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
IMAGENET_TRAIN_EXAMPLES = 1_281_167  # as configs/_imagenet.py, which needs ml_collections
IMAGENET_EPOCHS = 110


def build(cfg: dict, dtype, attention_impl: str | None) -> Perceiver:
  """The Perceiver IO ImageNet classifier of vision_perceiver_fourier.py at `cfg`'s shapes."""
  h, w, _ = cfg['image']
  kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(params=0))
  pos = dict(name='fourier', num_bands=cfg['num_bands'], max_resolution=(h, w),
             concat_pos=True, sine_only=False, project_pos_dim=-1, combine='concat')
  with nnx.use_eager_sharding(False):
    prep = build_image_preprocessor(dict(prep_type='pixels', spatial_downsample=1,
                                         position_encoding=pos), cfg['image'], **kw)
    encoder = PerceiverEncoder(
        prep.num_channels, num_latents=cfg['latents'], num_latent_channels=cfg['width'],
        num_blocks=cfg['blocks'], num_self_attends_per_block=cfg['self_attends'],
        num_cross_attend_heads=cfg['cross_heads'], num_self_attend_heads=cfg['self_heads'],
        cross_attend_widening_factor=cfg['widening'],
        self_attend_widening_factor=cfg['widening'], attention_impl=attention_impl, **kw)
    decoder = ClassificationDecoder(cfg['width'], cfg['classes'],
                                    num_query_channels=cfg['width'], num_heads=1,
                                    widening_factor=1, attention_impl=attention_impl, **kw)
  return Perceiver(prep, encoder, decoder)


def analytic_flops(cfg: dict, batch: int) -> float:
  """Matmul FLOPs of one training step (3 x forward: forward, and two for the backward)."""
  n = cfg['image'][0] * cfg['image'][1]
  c = cfg['image'][2] + 2 * (2 * cfg['num_bands'] + 1)  # pixels + Fourier features
  m, d, w = cfg['latents'], cfg['width'], cfg['widening']
  qk = c  # the cross-attend's q/k/v width follows the inputs ('kv')
  cross = m * d * qk + 2 * n * c * qk + 2 * m * n * qk + m * qk * d + 2 * m * d * w * d
  latent = 4 * m * d * d + 2 * m * m * d + 2 * m * d * w * d
  decoder = d * d + 2 * m * d * d + 2 * m * d + d * d + 2 * d * d + d * cfg['classes']
  macs = cross + cfg['blocks'] * cfg['self_attends'] * latent + decoder
  return 3 * 2 * macs * batch


def xla_flops(step, state, x, y) -> float:
  """FLOPs XLA counts in the step as lowered (before optimisation)."""
  cost = step.lower(state, x, y).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def peak_flops(device_kind: str, override: float) -> float | None:
  if override:
    return override * 1e12
  for key, tflops in PEAK_TFLOPS:
    if key in device_kind:
      return tflops * 1e12
  return None


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--dtype', default='bfloat16', choices=list(DTYPES))
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help='device peak for this dtype; default: PEAK_TFLOPS by device kind')
  parser.add_argument('--attention_impl', default=None, choices=[None, 'xla', 'cudnn'],
                      help='attention kernel for the timed step (default: JAX chooses)')
  parser.add_argument('--tiny', action='store_true', help='tiny shapes, to check on a CPU')
  parser.add_argument('--count_only', action='store_true',
                      help='print parameters and FLOPs per step without running a step')
  args = parser.parse_args(argv)
  cfg = TINY if args.tiny else IMAGENET
  dtype = DTYPES[args.dtype]
  device = jax.devices()[0]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(args.batch,) + cfg['image']), jnp.float32)
  y = jnp.asarray(rng.integers(0, cfg['classes'], args.batch), jnp.int32)
  tx = optax.adamw(1e-3, weight_decay=1e-4)

  counted_step, counted_state = make_train_step(build(cfg, dtype, 'xla'), tx)
  flops = xla_flops(counted_step, counted_state, x, y)
  if args.count_only:
    print(f'{"tiny" if args.tiny else "ImageNet"} Perceiver IO, '
          f'{count_params(counted_state[0]):,} parameters, batch {args.batch}, compute '
          f'{args.dtype}: model FLOPs per step {flops:.4g} (XLA cost analysis), '
          f'{analytic_flops(cfg, args.batch):.4g} (analytic matmuls)')
    return
  del counted_state
  step, state = make_train_step(build(cfg, dtype, args.attention_impl), tx)
  print(f'jax {jax.__version__} on {device.device_kind}; {"tiny" if args.tiny else "ImageNet"} '
        f'Perceiver IO, {count_params(state[0]):,} parameters, batch {args.batch}, '
        f'compute {args.dtype}')
  times = []
  for i in range(args.warmup + args.steps):
    start = time.perf_counter()
    state, loss = step(state, x, y)
    float(loss)
    if i >= args.warmup:
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  achieved = flops / median
  peak = peak_flops(device.device_kind, args.peak_tflops)
  print(f'model FLOPs per step: {flops:.4g} (XLA cost analysis), '
        f'{analytic_flops(cfg, args.batch):.4g} (analytic matmuls)')
  print(f'median step {median * 1e3:.2f} ms over {args.steps} steps; '
        f'{args.batch / median:.1f} examples/s; achieved {achieved / 1e12:.2f} TFLOP/s')
  if not args.tiny:
    # The recipe's length (configs/_imagenet.py): 110 epochs of ImageNet's training split.
    days = IMAGENET_TRAIN_EXAMPLES * IMAGENET_EPOCHS / (args.batch / median) / 86400
    print(f'projected {IMAGENET_EPOCHS} epochs of {IMAGENET_TRAIN_EXAMPLES:,} images on this '
          f'one device at this rate: {days:.1f} days (input pipeline not included)')
  if peak:
    print(f'MFU {achieved / peak:.1%} of {peak / 1e12:.1f} TFLOP/s ({device.device_kind})')
  else:
    print(f'MFU: no peak known for {device.device_kind!r}; pass --peak_tflops')


if __name__ == '__main__':
  main()
