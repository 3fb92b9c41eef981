"""Training throughput of the PyTorch Perceivers, for benchmarks/throughput.py.

Runs under a separate Python with torch (never imported by perceiver_jax):
  /work/torchenv/bin/python benchmarks/torch_peers.py --configs='{"small": {...}}' --threads=2

Peers, each a classifier on inputs [batch, N, C] with the shapes of the config
(throughput.CONFIGS), trained with AdamW on cross-entropy, eager mode:
  perceiver-pytorch  lucidrains' `Perceiver` (depth=1: one cross-attend then
                     self_per_cross_attn self-attends; no Fourier features; mean-pool ->
                     LayerNorm -> linear head; its FeedForward is GEGLU with mult=4, fixed)
  transformers       Hugging Face's `PerceiverModel` without preprocessor (inputs are the
                     d_model=C channels), its latents fed to `PerceiverProjectionDecoder`
                     (mean-pool -> linear)
Prints one JSON line per (config, peer): params, step_times (seconds), or error.
"""

import argparse
import json
import time


def build_lucidrains(cfg):
  from perceiver_pytorch import Perceiver
  return Perceiver(
      num_freq_bands=1, max_freq=1.0, depth=1, input_channels=cfg['channels'], input_axis=1,
      num_latents=cfg['latents'], latent_dim=cfg['width'], cross_heads=cfg['cross_heads'],
      latent_heads=cfg['self_heads'], cross_dim_head=cfg['channels'] // cfg['cross_heads'],
      latent_dim_head=cfg['width'] // cfg['self_heads'], num_classes=cfg['classes'],
      attn_dropout=0.0, ff_dropout=0.0, fourier_encode_data=False,
      self_per_cross_attn=cfg['self_attends'])


def build_transformers(cfg):
  import torch
  from transformers import PerceiverConfig, PerceiverModel
  from transformers.models.perceiver.modeling_perceiver import PerceiverProjectionDecoder
  config = PerceiverConfig(
      num_latents=cfg['latents'], d_latents=cfg['width'], d_model=cfg['channels'],
      num_blocks=1, num_self_attends_per_block=cfg['self_attends'],
      num_self_attention_heads=cfg['self_heads'], num_cross_attention_heads=cfg['cross_heads'],
      self_attention_widening_factor=cfg['widening'],
      cross_attention_widening_factor=cfg['widening'], attention_probs_dropout_prob=0.0,
      num_labels=cfg['classes'])

  class ProjectionDecoder(PerceiverProjectionDecoder):
    # transformers leaves this abstract property unimplemented on its projection decoder.
    num_query_channels = None

  class Classifier(torch.nn.Module):
    """PerceiverModel's latents -> the projection decoder, called directly: PerceiverModel
    passes the decoder an argument it does not take and expects an output object back."""

    def __init__(self):
      super().__init__()
      self.perceiver = PerceiverModel(config)
      self.decoder = ProjectionDecoder(config)

    def forward(self, x):
      return self.decoder(None, self.perceiver(inputs=x).last_hidden_state)
  return Classifier()


PEERS = {'perceiver-pytorch': build_lucidrains, 'transformers': build_transformers}


def time_training(model, cfg, warmup, steps):
  import torch
  import torch.nn.functional as F
  torch.manual_seed(0)
  x = torch.randn(cfg['batch'], cfg['inputs'], cfg['channels'])
  y = torch.randint(0, cfg['classes'], (cfg['batch'],))
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
  model.train()
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    loss.item()  # the step is finished when its loss is on the host
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return times


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--configs', required=True, help='JSON {name: config}')
  parser.add_argument('--threads', type=int, required=True)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--peers', default=','.join(PEERS))
  args = parser.parse_args()
  import torch
  torch.set_num_threads(args.threads)
  for name, cfg in json.loads(args.configs).items():
    for peer in args.peers.split(','):
      row = {'config': name, 'impl': peer, 'torch': torch.__version__,
             'threads': torch.get_num_threads()}
      try:
        model = PEERS[peer](cfg)
        row['params'] = sum(p.numel() for p in model.parameters())
        row['step_times'] = time_training(model, cfg, args.warmup, args.steps)
      except Exception as e:  # a missing or incompatible library skips that peer only
        row['error'] = f'{type(e).__name__}: {e}'
      print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()
