"""Training speed of Hugging Face transformers' Perceiver ports on a GPU, beside ours.

  python3 benchmarks/gpu_peers.py --model=vision_fourier|language [--batch=32] [--steps=10]
      [--flops_per_example=X] [--record=FILE]

Runs under a Python with torch and transformers (never imported by perceiver_jax):
  vision_fourier  PerceiverForImageClassificationFourier with the released
                  deepmind/vision-perceiver-fourier shapes (224x224, 512 x 1024 latents, 8 x 6
                  self-attends, 1000 classes), on pixel_values [batch, 3, 224, 224]
  language        PerceiverForMaskedLM with PerceiverConfig's defaults, the released
                  deepmind/language-perceiver (201M: 2048 bytes in, 2048 queries out)
Weights are random (nothing is downloaded). One training step: AdamW, cross-entropy,
bf16 autocast over float32 parameters (as ours: bf16 compute, float32 parameters), eager.
Timed with CUDA events over --steps back-to-back steps after warm-up, median of 3
rounds. MFU uses --flops_per_example, the model FLOPs of OUR count for the same
architecture (benchmarks/mfu.py prints it), so both sides divide the same work. Peak
memory is torch.cuda.max_memory_allocated. Prints one JSON line; nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics

# The released vision models' encoder (transformers' convert_perceiver_haiku_to_pytorch.py).
VISION_FOURIER = dict(num_latents=512, d_latents=1024, d_model=261, num_blocks=8,
                      num_self_attends_per_block=6, num_cross_attention_heads=1,
                      num_self_attention_heads=8, qk_channels=None, v_channels=None,
                      num_labels=1000, image_size=224, attention_probs_dropout_prob=0.0)
PEAK_TFLOPS = (('H100', 989.4), ('H200', 989.4), ('A100', 312.0))


def build(name: str):
  import torch
  from transformers import (PerceiverConfig, PerceiverForImageClassificationFourier,
                            PerceiverForMaskedLM)
  torch.manual_seed(0)
  if name == 'vision_fourier':
    model = PerceiverForImageClassificationFourier(PerceiverConfig(**VISION_FOURIER))
    make = lambda b: (dict(inputs=torch.randn(b, 3, 224, 224)),
                      torch.randint(0, 1000, (b,)))
  elif name == 'language':
    config = PerceiverConfig(attention_probs_dropout_prob=0.0)
    model = PerceiverForMaskedLM(config)
    make = lambda b: (dict(inputs=torch.randint(0, 262, (b, 2048))),
                      torch.randint(0, 262, (b, 2048)))
  else:
    raise SystemExit(f'unknown --model {name!r}; use vision_fourier or language')
  return model, make


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='vision_fourier')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--flops_per_example', type=float, default=0.0)
  parser.add_argument('--record', default='')
  args = parser.parse_args(argv)
  import torch
  import transformers
  device = torch.device('cuda')
  model, make = build(args.model)
  model.to(device).train()
  params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
  inputs, labels = make(args.batch)
  inputs = {k: v.to(device) for k, v in inputs.items()}
  labels = labels.to(device)

  def step():
    with torch.autocast('cuda', dtype=torch.bfloat16):
      logits = model(**inputs).logits
      loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                               labels.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  row = {'date': datetime.date.today().isoformat(), 'device': torch.cuda.get_device_name(),
         'impl': f'transformers {transformers.__version__} (torch {torch.__version__}, '
                 'eager, bf16 autocast)', 'config': args.model, 'batch': args.batch,
         'dtype': 'bfloat16', 'params': params, 'what': 'bare step (peer)'}
  try:
    for _ in range(args.warmup):
      step()
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
      start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
      start.record()
      for _ in range(args.steps):
        step()
      end.record()
      torch.cuda.synchronize()
      times.append(start.elapsed_time(end) / 1e3 / args.steps)
  except torch.OutOfMemoryError as e:
    row['error'] = f'out of memory: {str(e).splitlines()[0][:160]}'
    print('RESULT ' + json.dumps(row))
    return row
  seconds = statistics.median(times)
  row.update(step_ms=round(seconds * 1e3, 2), examples_per_s=round(args.batch / seconds, 1),
             peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
  peak = next((t for k, t in PEAK_TFLOPS if k in row['device']), None)
  if args.flops_per_example and peak:
    row['mfu'] = round(args.flops_per_example * args.batch / seconds / (peak * 1e12), 4)
  print('RESULT ' + json.dumps(row), flush=True)
  if args.record:
    os.makedirs(os.path.dirname(os.path.abspath(args.record)), exist_ok=True)
    with open(args.record, 'a') as f:
      f.write(json.dumps(row) + '\n')
  return row


if __name__ == '__main__':
  main()
