"""The byte tokenizer of the language Perceiver: UTF-8 bytes shifted past 6 special ids.

Ids match DeepMind's `perceiver/bytes_tokenizer.py` and HF's PerceiverTokenizer:
  0 [PAD], 1 [BOS], 2 [EOS], 3 [MASK], 4 [CLS], 5 [SEP], byte b -> b + 6; vocabulary 262.
DeepMind's colab encodes the raw bytes only; HF's tokenizer by default wraps a text as
[CLS] bytes [SEP] (`add_special_tokens=True` here).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# The vocabulary is the model's (its embedding table has VOCAB_SIZE rows); ids are laid out here.
from perceiver_jax.model.text_processors import NUM_SPECIAL_TOKENS, VOCAB_SIZE

PAD_ID, BOS_ID, EOS_ID, MASK_ID, CLS_ID, SEP_ID = range(NUM_SPECIAL_TOKENS)
SPECIAL_TOKENS = ('[PAD]', '[BOS]', '[EOS]', '[MASK]', '[CLS]', '[SEP]')
PADDING_MODES = ('max_length', 'longest', 'none')


class BytesTokenizer:
  """Encodes text to int32 ids and back; pads and truncates batches."""

  pad_id, bos_id, eos_id, mask_id, cls_id, sep_id = PAD_ID, BOS_ID, EOS_ID, MASK_ID, CLS_ID, \
      SEP_ID
  vocab_size = VOCAB_SIZE
  num_special_tokens = NUM_SPECIAL_TOKENS

  def encode(self, text: str | bytes, *, add_special_tokens: bool = False) -> np.ndarray:
    """text -> [n] int32 ids (UTF-8 bytes + 6), wrapped as [CLS] .. [SEP] if asked."""
    data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
    ids = np.frombuffer(data, np.uint8).astype(np.int32) + NUM_SPECIAL_TOKENS
    if add_special_tokens:
      ids = np.concatenate([[CLS_ID], ids, [SEP_ID]]).astype(np.int32)
    return ids

  def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special_tokens: bool = True) -> str:
    """ids -> text. Special ids are dropped (DeepMind's to_string) or, with
    skip_special_tokens=False, written as '[MASK]' etc. (HF). Invalid UTF-8 -> U+FFFD."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
      raise ValueError(f'Token ids must lie in [0, {VOCAB_SIZE}); got values from '
                       f'{ids.min()} to {ids.max()}.')
    if skip_special_tokens:
      return (ids[ids >= NUM_SPECIAL_TOKENS] - NUM_SPECIAL_TOKENS).astype(np.uint8).tobytes() \
          .decode('utf-8', errors='replace')
    # Runs of byte ids are decoded together so multi-byte characters survive.
    pieces, run = [], []
    for i in ids.tolist():
      if i >= NUM_SPECIAL_TOKENS:
        run.append(i - NUM_SPECIAL_TOKENS)
        continue
      pieces.append(bytes(run).decode('utf-8', errors='replace'))
      pieces.append(SPECIAL_TOKENS[i])
      run = []
    pieces.append(bytes(run).decode('utf-8', errors='replace'))
    return ''.join(pieces)

  def __call__(self, texts: str | bytes | Sequence[str | bytes], *,
               max_length: int | None = None, padding: str = 'max_length',
               truncation: bool = False, add_special_tokens: bool = False
               ) -> dict[str, np.ndarray]:
    """Batch encoding: -> {'input_ids': [batch, L] int32, 'attention_mask': [batch, L] int32}
    (mask 1 = real token, 0 = padding; padding with [PAD] = 0 on the right).

    padding: 'max_length' (L = max_length), 'longest' (L = longest text, capped by
    max_length) or 'none' (all texts must have one length). truncation: cut texts longer
    than max_length (keeping the closing [SEP] when special tokens are added).
    """
    if padding not in PADDING_MODES:
      raise ValueError(f"Unknown padding {padding!r}; use 'max_length', 'longest' or 'none'.")
    if padding == 'max_length' and max_length is None:
      raise ValueError("padding='max_length' needs max_length; pass it or use "
                       "padding='longest'.")
    if isinstance(texts, (str, bytes)):
      texts = [texts]
    encoded = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
    if max_length is not None:
      for i, ids in enumerate(encoded):
        if len(ids) <= max_length:
          continue
        if not truncation:
          raise ValueError(f'Text {i} has {len(ids)} tokens, more than max_length={max_length}; '
                           f'pass truncation=True or a larger max_length.')
        encoded[i] = (np.concatenate([ids[:max_length - 1], [SEP_ID]]).astype(np.int32)
                      if add_special_tokens and max_length > 1 else ids[:max_length])
    lengths = [len(ids) for ids in encoded]
    if padding == 'max_length':
      width = max_length
    elif padding == 'longest':
      width = max(lengths, default=0)
    else:
      if len(set(lengths)) > 1:
        raise ValueError(f"padding='none' needs texts of one length, got lengths {lengths}; "
                         f"use padding='longest'.")
      width = lengths[0] if lengths else 0
    input_ids = np.full((len(encoded), width), PAD_ID, np.int32)
    attention_mask = np.zeros((len(encoded), width), np.int32)
    for i, ids in enumerate(encoded):
      input_ids[i, :len(ids)] = ids
      attention_mask[i, :len(ids)] = 1
    return {'input_ids': input_ids, 'attention_mask': attention_mask}
