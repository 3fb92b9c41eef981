"""The byte tokenizer: ids as DeepMind's bytes_tokenizer.py / HF's PerceiverTokenizer
(expected ids below were checked against HF's PerceiverTokenizer)."""

import numpy as np
import pytest

from perceiver_jax import tokenizer as tok

T = tok.BytesTokenizer()


def test_special_ids_and_vocabulary():
  assert (T.pad_id, T.bos_id, T.eos_id, T.mask_id, T.cls_id, T.sep_id) == (0, 1, 2, 3, 4, 5)
  assert T.vocab_size == tok.VOCAB_SIZE == 262


def test_encode_is_utf8_bytes_shifted_by_six():
  ids = T.encode('héllo ✓')
  assert ids.dtype == np.int32
  # h=104, é=0xC3 0xA9, l, l, o, space, ✓=0xE2 0x9C 0x93 (each +6)
  assert ids.tolist() == [110, 201, 175, 114, 114, 117, 38, 232, 162, 153]
  assert T.encode(b'\x00\xff').tolist() == [6, 261]
  assert T.encode('ab', add_special_tokens=True).tolist() == [4, 103, 104, 5]


def test_decode_round_trip_and_special_tokens():
  text = 'Perceiver IO — ça marche ✓'
  assert T.decode(T.encode(text)) == text
  ids = [4, 110, 3, 111, 5, 0]
  assert T.decode(ids) == 'hi'  # DeepMind's to_string drops special ids
  assert T.decode(ids, skip_special_tokens=False) == '[CLS]h[MASK]i[SEP][PAD]'  # HF
  # A multi-byte character split by a special token cannot be decoded: replacement char.
  assert T.decode([201, 3, 175], skip_special_tokens=False) == '\ufffd[MASK]\ufffd'
  with pytest.raises(ValueError, match=r'Token ids must lie in \[0, 262\)'):
    T.decode([262])


def test_batch_padding_matches_hf():
  batch = T(['héllo wörld ✓', 'ab'], max_length=20, add_special_tokens=True)
  assert batch['input_ids'].tolist() == [
      [4, 110, 201, 175, 114, 114, 117, 38, 125, 201, 188, 120, 114, 106, 38, 232, 162, 153,
       5, 0],
      [4, 103, 104, 5] + [0] * 16]
  assert batch['attention_mask'].tolist() == [[1] * 19 + [0], [1] * 4 + [0] * 16]
  assert batch['input_ids'].dtype == batch['attention_mask'].dtype == np.int32


def test_padding_modes_and_truncation():
  longest = T(['abc', 'a'], padding='longest')
  assert longest['input_ids'].tolist() == [[103, 104, 105], [103, 0, 0]]
  assert T(['ab', 'cd'], padding='none')['input_ids'].shape == (2, 2)
  with pytest.raises(ValueError, match="padding='none' needs texts of one length"):
    T(['ab', 'c'], padding='none')
  # HF keeps the closing [SEP] when it truncates.
  cut = T('abcdefghij', max_length=6, truncation=True, add_special_tokens=True)
  assert cut['input_ids'].tolist() == [[4, 103, 104, 105, 106, 5]]
  assert T('abcdef', max_length=3, truncation=True)['input_ids'].tolist() == [[103, 104, 105]]
  with pytest.raises(ValueError, match='more than max_length=3; pass truncation=True'):
    T('abcdef', max_length=3)
  with pytest.raises(ValueError, match="padding='max_length' needs max_length"):
    T('abc')
  with pytest.raises(ValueError, match='Unknown padding'):
    T('abc', padding='left')
