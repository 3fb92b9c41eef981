"""Whole-word masking of UTF-8 bytes for masked language modelling, and a unigram baseline.

Objective. BERT's masked LM (Devlin et al. 2019, Sec. 3.1 and App. A.1): a fixed
fraction (15%) of positions is chosen as prediction targets; a chosen position's input
becomes [MASK] with probability 0.8, a random token with 0.1, and stays unchanged with
0.1. Whole-word masking (google-research/bert README, "Whole Word Masking") chooses whole
words instead of word pieces, keeping the 15% rate, and draws the 80/10/10 outcome per
token, so one word may mix outcomes. Perceiver IO (Jaegle et al. 2021, arXiv:2107.14795,
Sec. 4.1 / App. F) pretrains with this objective on raw UTF-8 bytes; DeepMind's release
(deepmind-research/perceiver) has no pretraining code, but its MLM colab masks the
space-delimited word " missing." (leading space and trailing '.' included) as one chunk.

Here, per window of bytes:
  * words are cut by `word_definition` (below); whitespace belongs to no word and is
    never a target, nor is padding;
  * k = max(1, round(mask_prob * num_words)) words (0 if there are none) are chosen
    uniformly without replacement, as BERT chooses a fixed number per sequence;
  * every byte of a chosen word is a target; per byte, with probabilities 0.8 / 0.1 /
    0.1 its input becomes [MASK] / a uniformly random byte (0..255, never a special id,
    possibly the same byte) / stays.

Word definitions (bytes >= 0x80 count as letters, so no UTF-8 character is split):
  'code'   (default, for source code) maximal runs of identifier bytes [A-Za-z0-9_]
           and maximal runs of other non-whitespace bytes (operators/punctuation):
           "x.foo(y)" -> x . foo ( y ) ; "a += 1" -> a += 1 ; "'''" is one word.
  'space'  the paper/colab reading: maximal runs of non-whitespace bytes:
           "x.foo(y)" is one word.
Whitespace = space, \\t, \\n, \\v, \\f, \\r.

Token ids follow perceiver_jax.tokenizer: byte b -> b + NUM_SPECIAL_TOKENS, [PAD] = 0 at
padding, [MASK] = MASK_ID. Since real bytes and [MASK] are never 0, a model's input
mask is `inputs != PAD_ID`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import dataclasses
from typing import Any

import grain
import numpy as np

from perceiver_jax.errors import UserError
from perceiver_jax.tokenizer import MASK_ID, NUM_SPECIAL_TOKENS, PAD_ID, VOCAB_SIZE

WORD_DEFINITIONS = ('code', 'space')
_SPACE, _IDENT, _SYMBOL = 0, 1, 2


def _byte_classes(word_definition: str) -> np.ndarray:
  """int8 [256]: class of each byte value (whitespace / identifier / symbol)."""
  classes = np.full(256, _SYMBOL if word_definition == 'code' else _IDENT, np.int8)
  if word_definition == 'code':
    ident = b'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_'
    classes[np.frombuffer(ident, np.uint8)] = _IDENT
    classes[0x80:] = _IDENT
  classes[np.frombuffer(b' \t\n\x0b\x0c\r', np.uint8)] = _SPACE
  return classes


_CLASSES = {name: _byte_classes(name) for name in WORD_DEFINITIONS}


def _check_word_definition(word_definition: str) -> None:
  if word_definition not in WORD_DEFINITIONS:
    raise UserError(f'Unknown word_definition {word_definition!r}; use one of '
                    f'{list(WORD_DEFINITIONS)}.')


def word_ids(data: np.ndarray, length: int | None = None,
             word_definition: str = 'code') -> np.ndarray:
  """uint8 [L] bytes -> int32 [L]: index of the word each byte is in, -1 for
  whitespace and for padding (positions >= length). Words are numbered 0, 1, ...
  from the left."""
  _check_word_definition(word_definition)
  data = np.asarray(data, np.uint8)
  length = data.shape[0] if length is None else int(length)
  cls = _CLASSES[word_definition][data[:length]]
  prev = np.concatenate([[_SPACE], cls]).astype(np.int8)[:-1]
  starts = (cls != _SPACE) & (cls != prev)
  ids = np.full(data.shape[0], -1, np.int32)
  ids[:length] = np.where(cls != _SPACE, np.cumsum(starts) - 1, -1)
  return ids


def whole_word_mask(data: np.ndarray, length: int | None, rng: np.random.Generator, *,
                    mask_prob: float = 0.15, mask_token_prob: float = 0.8,
                    random_token_prob: float = 0.1, word_definition: str = 'code'
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Masks whole words of one window of bytes (rules in the module docstring).

  Args:
    data: uint8 [L] bytes; positions >= length are padding.
    length: number of real bytes (None = all L).
    rng: the only source of randomness; same generator state -> same output.

  Returns:
    inputs int32 [L] (masked ids, PAD_ID at padding), targets int32 [L] (original ids,
    PAD_ID at padding), target_mask float32 [L] (1 at the bytes of chosen words).
  """
  if not 0.0 < mask_prob < 1.0:
    raise UserError(f'mask_prob must lie in (0, 1), got {mask_prob}.')
  if (mask_token_prob < 0 or random_token_prob < 0
      or mask_token_prob + random_token_prob > 1):
    raise UserError(f'mask_token_prob ({mask_token_prob}) and random_token_prob '
                    f'({random_token_prob}) must be >= 0 and sum to at most 1.')
  data = np.asarray(data, np.uint8)
  seq_len = data.shape[0]
  length = seq_len if length is None else int(length)
  if not 0 <= length <= seq_len:
    raise UserError(f'length {length} lies outside [0, {seq_len}] for a window of '
                    f'{seq_len} bytes.')
  ids = word_ids(data, length, word_definition)
  num_words = int(ids.max()) + 1 if seq_len else 0
  num_chosen = max(1, int(round(mask_prob * num_words))) if num_words else 0
  chosen = np.zeros(max(num_words, 1), bool)
  chosen[rng.permutation(num_words)[:num_chosen]] = True
  selected = (ids >= 0) & chosen[np.maximum(ids, 0)]

  real = np.arange(seq_len) < length
  targets = np.where(real, data.astype(np.int32) + NUM_SPECIAL_TOKENS, PAD_ID)
  targets = targets.astype(np.int32)
  # Full-length draws keep the stream's consumption independent of the content.
  u = rng.random(seq_len)
  random_ids = rng.integers(0, 256, seq_len, dtype=np.int32) + NUM_SPECIAL_TOKENS
  inputs = targets.copy()
  to_mask = selected & (u < mask_token_prob)
  to_random = selected & (u >= mask_token_prob) & (u < mask_token_prob + random_token_prob)
  inputs[to_mask] = MASK_ID
  inputs[to_random] = random_ids[to_random]
  return inputs, targets, selected.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class WholeWordMask(grain.transforms.RandomMap):
  """grain transform: {'bytes' uint8 [L], 'length' int32 [], ...} ->
  {'inputs' int32 [L], 'targets' int32 [L], 'target_mask' float32 [L]}."""

  mask_prob: float = 0.15
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1
  word_definition: str = 'code'

  def random_map(self, element: Mapping[str, Any], rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    inputs, targets, target_mask = whole_word_mask(
        element['bytes'], element.get('length'), rng, mask_prob=self.mask_prob,
        mask_token_prob=self.mask_token_prob, random_token_prob=self.random_token_prob,
        word_definition=self.word_definition)
    return {'inputs': inputs, 'targets': targets, 'target_mask': target_mask}


# ---------------------------------------------------------------------------
# Unigram-frequency baseline
# ---------------------------------------------------------------------------


def count_tokens(examples: Iterable[Mapping[str, np.ndarray]]) -> np.ndarray:
  """int64 [VOCAB_SIZE]: how often each id is a target (target_mask > 0).

  `examples` yields dicts with 'targets' int [...] and 'target_mask' [...] of one
  shape (single examples or batches). Fit the baseline on the train split's masked
  examples, so it models the same positions the model is scored on.
  """
  counts = np.zeros(VOCAB_SIZE, np.int64)
  for ex in examples:
    targets = np.asarray(ex['targets']).reshape(-1)
    weight = np.asarray(ex['target_mask']).reshape(-1) > 0
    counts += np.bincount(targets[weight], minlength=VOCAB_SIZE)[:VOCAB_SIZE]
  return counts


def unigram_baseline(train_counts: np.ndarray,
                     test_examples: Iterable[Mapping[str, np.ndarray]], *,
                     smoothing: float = 1.0) -> dict[str, float]:
  """Scores the unigram model of `train_counts` on the test targets, exactly.

  The model ignores the inputs: it predicts the most frequent id (ties -> lowest id)
  and gives byte id t the probability (count[t] + smoothing) / (total + 256 *
  smoothing); special ids get 0 (they are never targets).

  Returns:
    {'accuracy': share of test targets equal to the prediction,
     'bits_per_byte': mean of -log2 p(target) over test targets,
     'num_targets': number of test targets, 'prediction': the predicted id}.
  """
  counts = np.asarray(train_counts, np.float64)
  if counts.shape != (VOCAB_SIZE,) or counts.min() < 0:
    raise UserError(f'train_counts must be {VOCAB_SIZE} non-negative counts (from '
                    f'count_tokens), got shape {counts.shape}.')
  if smoothing < 0:
    raise UserError(f'smoothing must be >= 0, got {smoothing}.')
  byte_counts = counts.copy()
  byte_counts[:NUM_SPECIAL_TOKENS] = 0.0
  denom = byte_counts.sum() + 256 * smoothing
  if denom <= 0:
    raise UserError('train_counts has no byte targets; count a non-empty train split, '
                    'or pass smoothing > 0.')
  probs = np.where(np.arange(VOCAB_SIZE) >= NUM_SPECIAL_TOKENS,
                   (byte_counts + smoothing) / denom, 0.0)
  prediction = int(np.argmax(byte_counts))  # argmax returns the lowest tied id
  test = count_tokens(test_examples).astype(np.float64)
  n = test.sum()
  if n == 0:
    raise UserError('The test examples have no targets (target_mask is all 0).')
  if test[:NUM_SPECIAL_TOKENS].any():
    raise UserError('Test targets contain special token ids; targets must be bytes.')
  seen = test > 0
  with np.errstate(divide='ignore'):
    nll_bits = -(test[seen] * np.log2(probs[seen])).sum()
  return {'accuracy': float(test[prediction] / n), 'bits_per_byte': float(nll_bits / n),
          'num_targets': int(n), 'prediction': prediction}
