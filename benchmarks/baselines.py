"""Trivial baselines of the embedded reproduction datasets, the bar a trained model must clear.

  python benchmarks/baselines.py [--only=mlm,flow] [--data_dir=DIR]

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
      would give).

Both datasets are prepared offline under --data_dir on first use (the flow one takes about
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


def flow_baseline(data_dir: str | None) -> dict:
  builder = pipeline.prepare('skimage_flow/crop64', data_dir)
  test = builder.as_data_source('test')
  return {'baseline': 'zero_flow', 'dataset': 'skimage_flow/crop64', 'test_examples': len(test),
          'epe_all_pixels': flow_metrics.zero_flow_epe(test, valid_only=False),
          'epe_valid_pixels': flow_metrics.zero_flow_epe(test, valid_only=True),
          'mean_flow_oracle_epe_valid_pixels': mean_flow_oracle_epe(test)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--only', default='mlm,flow')
  parser.add_argument('--data_dir', default=None,
                      help='TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)')
  args = parser.parse_args(argv)
  runs = {'mlm': mlm_baseline, 'flow': flow_baseline}
  for name in args.only.split(','):
    if name not in runs:
      parser.error(f'unknown baseline {name!r}; choose from {", ".join(runs)}')
    start = time.perf_counter()
    result = runs[name](args.data_dir)
    result['seconds'] = round(time.perf_counter() - start, 1)
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
