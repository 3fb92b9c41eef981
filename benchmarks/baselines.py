"""Trivial baselines of the embedded reproduction datasets, the bar a trained model must clear.

  python benchmarks/baselines.py [--only=mlm,flow,ar] [--data_dir=DIR] [--ar_latents=256]

mlm:  python_stdlib/full (512-byte windows of the standard library's .py files, file-level
      split). Whole-word masking (15% of words, 80/10/10) of the train split with seed 0
      gives unigram counts of the targets; the test split is masked with seed 1 and scored:
      accuracy of always predicting the most frequent byte, and bits per byte of the
      add-one-smoothed unigram distribution (perceiver_jax/data/mlm_masking.py).
flow: skimage_flow/crop64 (64x64 frame pairs warped from scikit-image photographs by random
      smooth flows, split by source photograph). End-point error of predicting zero flow
      on the test split, over all pixels and over the pixels whose target is in frame 2
      (perceiver_jax/flow_metrics.py); and, as an oracle that reads the true flow, the EPE
      of predicting each pair's own mean flow (what recovering only the global translation
      would give); and classical block matching, no learning: each pixel takes the integer
      shift up to 4 px whose 7x7 block of frame 2 best matches its own (the argmin of
      configs/flow_skimage.py's cost volume, model/image_processors.flow_match_costs).

ar:   python_stdlib/packed (the stdlib's files joined by a zero byte, 16385-byte windows,
      file-level split): the bytes Perceiver AR's evaluation predicts (each test window's
      last --ar_latents bytes, perceiver_jax/tasks/causal_lm.py), scored in bits per byte by
      count models of the train split's bytes: add-one unigram, and Witten-Bell
      interpolated n-grams (orders 2..5: an order's estimate backs off to the next lower
      by the number of distinct bytes seen after the context; no tuned weights).

All datasets are prepared offline under --data_dir on first use (the flow one takes about
a minute and 0.5 GB). Prints one JSON line per baseline; nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from perceiver_jax import flow_metrics  # noqa: E402
from perceiver_jax.data import mlm_masking, pipeline  # noqa: E402
from perceiver_jax.model.image_processors import flow_match_costs  # noqa: E402


def masked(source, seed: int, word_definition: str):
  """The examples of `source`, each masked with a Generator seeded by (seed, index)."""
  mask = mlm_masking.WholeWordMask(word_definition=word_definition)
  for index in range(len(source)):
    yield mask.random_map(source[index], np.random.default_rng([seed, index]))


def mlm_baseline(data_dir: str | None, word_definition: str = 'code') -> dict:
  builder = pipeline.prepare('python_stdlib/full', data_dir)
  train, test = builder.as_data_source('train'), builder.as_data_source('test')
  counts = mlm_masking.count_tokens(masked(train, 0, word_definition))
  scores = mlm_masking.unigram_baseline(counts, masked(test, 1, word_definition))
  return {'baseline': 'mlm_unigram', 'dataset': 'python_stdlib/full',
          'python': builder.info.metadata.get('python_version') if builder.info.metadata
          else None, 'word_definition': word_definition, 'train_examples': len(train),
          'test_examples': len(test), **scores}


def mean_flow_oracle_epe(examples) -> float:
  """EPE over valid pixels of predicting each pair's own mean valid flow: an oracle (it reads
  the true flow) for a model that recovers only each pair's global translation."""
  total = count = 0.0
  for example in examples:
    flow = np.asarray(example['flow'], np.float64)
    valid = np.asarray(example['valid'], bool)
    error = np.linalg.norm(flow - flow[valid].mean(0), axis=-1)[valid]
    total, count = total + error.sum(), count + error.size
  return total / count


def block_matching_epe(examples, radius: int = 4, window: int = 7) -> float:
  """EPE over valid pixels of block matching: each pixel's flow is the shift (dx, dy) with
  the lowest mean squared difference over the window x window block around it."""
  shifts = np.array([(dx, dy) for dy in range(-radius, radius + 1)
                     for dx in range(-radius, radius + 1)], np.float64)
  total = count = 0.0
  for example in examples:
    frames = np.asarray(example['frames'], np.float32)[None] / 127.5 - 1
    costs = np.asarray(flow_match_costs(frames, radius, window))[0]
    valid = np.asarray(example['valid'], bool)
    error = np.linalg.norm(shifts[costs.argmin(-1)] - example['flow'], axis=-1)[valid]
    total, count = total + error.sum(), count + error.size
  return total / count


def flow_baseline(data_dir: str | None) -> dict:
  builder = pipeline.prepare('skimage_flow/crop64', data_dir)
  test = builder.as_data_source('test')
  return {'baseline': 'zero_flow', 'dataset': 'skimage_flow/crop64', 'test_examples': len(test),
          'epe_all_pixels': flow_metrics.zero_flow_epe(test, valid_only=False),
          'epe_valid_pixels': flow_metrics.zero_flow_epe(test, valid_only=True),
          'mean_flow_oracle_epe_valid_pixels': mean_flow_oracle_epe(test),
          'block_matching_epe_valid_pixels': block_matching_epe(test)}


def _ngram_keys(stream: np.ndarray, order: int) -> np.ndarray:
  """int64 keys of every `order`-byte window of stream (the earliest byte most significant)."""
  keys = np.zeros(len(stream) - order + 1, np.int64)
  for i in range(order):
    keys = keys * 256 + stream[i:len(stream) - order + 1 + i]
  return keys


def _lookup(sorted_keys: np.ndarray, counts: np.ndarray, queries: np.ndarray) -> np.ndarray:
  """counts of `queries` in (sorted_keys, counts), 0 where absent."""
  at = np.clip(np.searchsorted(sorted_keys, queries), 0, len(sorted_keys) - 1)
  return np.where(sorted_keys[at] == queries, counts[at], 0)


def witten_bell_bits(train: np.ndarray, contexts: np.ndarray, targets: np.ndarray,
                     max_order: int) -> dict[int, float]:
  """Bits per target byte of add-one unigram (order 1) and Witten-Bell n-grams up to
  max_order. contexts: [n, max_order - 1] the bytes before each target, oldest first."""
  train = train.astype(np.int64)
  unigram = (np.bincount(train, minlength=256) + 1.0) / (len(train) + 256.0)
  prob = unigram[targets]
  bits = {1: float(-np.log2(prob).mean())}
  for order in range(2, max_order + 1):
    grams, gram_counts = np.unique(_ngram_keys(train, order), return_counts=True)
    history = grams // 256  # each n-gram's context
    hist_keys, first = np.unique(history, return_index=True)
    hist_counts = np.add.reduceat(gram_counts, first)
    distinct = np.diff(np.append(first, len(grams)))  # T(h): bytes seen after h
    ctx = np.zeros(len(targets), np.int64)
    for column in contexts[:, -(order - 1):].T:
      ctx = ctx * 256 + column
    c_hw = _lookup(grams, gram_counts, ctx * 256 + targets)
    c_h = _lookup(hist_keys, hist_counts, ctx)
    t_h = _lookup(hist_keys, distinct, ctx)
    seen = c_h > 0
    prob = np.where(seen, (c_hw + t_h * prob) / np.maximum(c_h + t_h, 1), prob)
    bits[order] = float(-np.log2(prob).mean())
  return bits


def ar_baseline(data_dir: str | None, latents: int = 256, max_order: int = 5) -> dict:
  builder = pipeline.prepare('python_stdlib/packed', data_dir)
  train = np.concatenate([e['bytes'] for e in builder.as_data_source('train')])
  test = np.stack([e['bytes'] for e in builder.as_data_source('test')]).astype(np.int64)
  width = test.shape[1]
  targets = test[:, width - latents:].reshape(-1)
  # The max_order - 1 bytes before each target, oldest first.
  contexts = np.stack([test[:, width - latents - k:width - k] for k in
                       range(max_order - 1, 0, -1)], axis=-1).reshape(-1, max_order - 1)
  bits = witten_bell_bits(train, contexts, targets, max_order)
  return {'baseline': 'ar_ngram', 'dataset': 'python_stdlib/packed', 'train_bytes': len(train),
          'test_windows': len(test), 'targets': len(targets), 'latents': latents,
          **{('unigram_bits_per_byte' if n == 1 else f'{n}gram_bits_per_byte'): round(b, 4)
             for n, b in bits.items()}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--only', default='mlm,flow,ar')
  parser.add_argument('--ar_latents', type=int, default=256,
                      help='ar: bytes scored per test window (the latent count)')
  parser.add_argument('--data_dir', default=None,
                      help='TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)')
  args = parser.parse_args(argv)
  runs = {'mlm': mlm_baseline, 'flow': flow_baseline,
          'ar': lambda d: ar_baseline(d, args.ar_latents)}
  for name in args.only.split(','):
    if name not in runs:
      parser.error(f'unknown baseline {name!r}; choose from {", ".join(runs)}')
    start = time.perf_counter()
    result = runs[name](args.data_dir)
    result['seconds'] = round(time.perf_counter() - start, 1)
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
