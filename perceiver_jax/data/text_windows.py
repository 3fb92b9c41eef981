"""Text documents -> fixed-length windows of UTF-8 bytes for the byte-level Perceiver.

TFDS `Text` features come out of `builder.as_data_source` (no TensorFlow) as Python
`bytes` holding UTF-8; a `str` (hand-made data) is encoded here. Token ids follow
perceiver_jax.tokenizer: byte b -> b + NUM_SPECIAL_TOKENS, [PAD] = 0 after the text.

A window never splits a UTF-8 character: it starts on a character boundary (a byte that is
not a continuation byte 0b10xxxxxx) and a character cut by its end is dropped whole, so
the window may be up to 3 bytes shorter than `seq_len` (the rest is padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from perceiver_jax.tokenizer import NUM_SPECIAL_TOKENS, PAD_ID, SEP_ID


def utf8_bytes(text: str | bytes) -> np.ndarray:
  """A text feature (UTF-8 bytes, or str) -> uint8 [n] of its UTF-8 bytes."""
  data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
  return np.frombuffer(data, np.uint8)


def _is_continuation(b) -> bool:
  return (int(b) & 0xC0) == 0x80


def window_bounds(doc: np.ndarray, seq_len: int, start: int = 0) -> tuple[int, int]:
  """[begin, end) of the window of at most seq_len bytes of `doc` (uint8 [n]) that starts
  at the first character boundary at or after `start` and ends on a character boundary."""
  n = doc.shape[0]
  begin = min(max(int(start), 0), n)
  while begin < n and _is_continuation(doc[begin]):
    begin += 1
  end = min(begin + seq_len, n)
  while begin < end < n and _is_continuation(doc[end]):  # doc[end] continues a cut char
    end -= 1
  return begin, end


def random_start(num_bytes: int, seq_len: int, rng: np.random.Generator) -> int:
  """A uniformly random window offset in [0, num_bytes - seq_len] (0 if the text fits)."""
  return int(rng.integers(0, max(num_bytes - seq_len, 0) + 1))


def crop(doc: np.ndarray, seq_len: int, start: int = 0) -> tuple[np.ndarray, np.int32]:
  """uint8 [n] -> (uint8 [seq_len] window zero-padded after its length, int32 length);
  the window is window_bounds(doc, seq_len, start)."""
  begin, end = window_bounds(doc, seq_len, start)
  out = np.zeros((seq_len,), np.uint8)
  out[:end - begin] = doc[begin:end]
  return out, np.int32(end - begin)


def _fit_lengths(lengths: Sequence[int], budget: int) -> list[int]:
  """Cuts the longest texts first until the lengths sum to at most `budget` (BERT's
  longest-first truncation, computed in closed form): each text keeps min(length, cap)
  for the largest cap that fits, and leftover room goes to the first cut texts."""
  if sum(lengths) <= budget:
    return list(lengths)
  lo, hi = 0, max(lengths)
  while lo < hi:  # largest cap with sum(min(l, cap)) <= budget
    mid = (lo + hi + 1) // 2
    if sum(min(l, mid) for l in lengths) <= budget:
      lo = mid
    else:
      hi = mid - 1
  kept = [min(l, lo) for l in lengths]
  room = budget - sum(kept)
  for i, l in enumerate(lengths):
    if room and l > kept[i]:
      kept[i] += 1
      room -= 1
  return kept


def encode_texts(texts: Sequence[str | bytes], seq_len: int) -> np.ndarray:
  """One or more texts -> int32 [seq_len] token ids: the UTF-8 bytes of each (+ the
  tokenizer's offset), joined by [SEP] for several (sentence pairs), cut from the end of
  the longest texts first to fit (never inside a character), [PAD] after."""
  docs = [utf8_bytes(t) for t in texts]
  budget = max(seq_len - (len(docs) - 1), 0)  # room left by the separators
  kept = _fit_lengths([d.shape[0] for d in docs], budget)
  pieces = []
  for i, (doc, keep) in enumerate(zip(docs, kept)):
    if i:
      pieces.append(np.array([SEP_ID], np.int32))
    begin, end = window_bounds(doc, keep)
    pieces.append(doc[begin:end].astype(np.int32) + NUM_SPECIAL_TOKENS)
  ids = np.concatenate(pieces)[:seq_len] if pieces else np.zeros((0,), np.int32)
  out = np.full((seq_len,), PAD_ID, np.int32)
  out[:ids.shape[0]] = ids
  return out
