"""Byte-level MLM data: the python_stdlib TFDS builder, whole-word masking, unigram baseline."""

import collections
import math
import os

import numpy as np
import pytest

from perceiver_jax.data import pipeline
from perceiver_jax.data import mlm_masking as mm
from perceiver_jax.data.builders import python_stdlib as ps
from perceiver_jax.errors import UserError
from perceiver_jax.tokenizer import MASK_ID, NUM_SPECIAL_TOKENS, PAD_ID

SOURCES = ('os.py', 'argparse.py', 'typing.py', 'inspect.py', 'json/decoder.py')


def ids(text: bytes) -> list[int]:
  return [b + NUM_SPECIAL_TOKENS for b in text]


@pytest.fixture(scope='module')
def text_windows():
  """Real stdlib source as 512-byte windows: (uint8 [n, 512], int32 [n] lengths)."""
  def read(path):
    with open(os.path.join(ps.stdlib_root(), path), 'rb') as f:
      return f.read()
  chunks, lengths = zip(*(ps.windows(read(p), 512) for p in SOURCES))
  return np.concatenate(chunks), np.concatenate(lengths)


def mask_all(windows, lengths, seed, **kw):
  rng = np.random.default_rng(seed)
  out = [mm.whole_word_mask(w, n, rng, **kw) for w, n in zip(windows, lengths)]
  return tuple(np.stack(a) for a in zip(*out))


# ---------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------


def test_file_split_is_deterministic_disjoint_and_excludes_tests():
  files = ps.corpus_files()
  assert files == ps.corpus_files()
  train, test = set(files['train']), set(files['test'])
  assert not train & test
  assert all(ps.split_of(p) == s for s in ps.SPLITS for p in files[s])
  # Pinned so the split never changes silently (SHA-256 of the path, 5% test).
  assert [ps.split_of(p) for p in ('chunk.py', 'email/__init__.py', 'os.py',
                                   'json/decoder.py')] == ['test', 'test', 'train', 'train']
  frac = len(test) / (len(train) + len(test))
  assert 0.02 < frac < 0.09, frac
  everything = train | test
  assert {'os.py', 'json/decoder.py', 'email/__init__.py'} <= everything
  for path in everything:
    dirs = path.split('/')[:-1]
    assert not {'test', 'tests', 'idle_test', 'site-packages'} & set(dirs), path
    assert path.endswith('.py') and not path.split('/')[-1].startswith('test_')
  assert ps._is_excluded('lib2to3/tests/data/bom.py')
  assert ps._is_excluded('idlelib/idle_test/test_calltip.py')


def test_windows_pad_the_last_partial_window():
  w, n = ps.windows(b'abcdefg', 3)
  assert w.dtype == np.uint8 and n.dtype == np.int32
  assert w.tolist() == [list(b'abc'), list(b'def'), [ord('g'), 0, 0]]
  assert n.tolist() == [3, 3, 1]
  w, n = ps.windows(b'', 3)
  assert w.shape == (0, 3) and n.shape == (0,)


def test_tiny_builder_prepares_and_decodes_to_the_source(tmp_path):
  builder = pipeline.prepare('python_stdlib/tiny', str(tmp_path), ('train', 'test'))
  assert builder.info.metadata['python_version'] == ps.python_version()
  files = {}
  for split in ps.SPLITS:
    source = builder.as_data_source(split)
    assert len(source) == builder.info.splits[split].num_examples > 0
    by_file = collections.defaultdict(list)
    for i in range(len(source)):
      ex = source[i]
      assert ex['bytes'].dtype == np.uint8 and ex['bytes'].shape == (128,)
      assert 1 <= ex['length'] <= 128
      assert not ex['bytes'][ex['length']:].any()  # zero padding
      by_file[ex['path'].decode()].append(ex)
    files[split] = set(by_file)
    assert len(by_file) == {'train': 6, 'test': 2}[split]
    for path, exs in by_file.items():
      assert ps.split_of(path) == split
      assert [e['window_index'] for e in exs] == list(range(len(exs)))  # stored in order
      assert all(e['length'] == 128 for e in exs[:-1])
      raw = b''.join(e['bytes'][:e['length']].tobytes() for e in exs)
      with open(os.path.join(ps.stdlib_root(), path), encoding='utf-8') as f:
        assert raw.decode('utf-8') == f.read()
  assert not files['train'] & files['test']
  # tiny = the first eligible files of at most 16 KiB per split, in path order.
  small = {s: [p for p in paths if os.path.getsize(os.path.join(ps.stdlib_root(), p)) <= 16384]
           for s, paths in ps.corpus_files().items()}
  assert files == {'train': set(small['train'][:6]), 'test': set(small['test'][:2])}


def test_bad_window_is_a_user_error():
  with pytest.raises(UserError, match='window must be a positive'):
    ps.PythonStdlibConfig(name='bad', window=0)


# ---------------------------------------------------------------------------
# Words and masking
# ---------------------------------------------------------------------------


def test_word_definitions():
  text = np.frombuffer('x.foo(y) += é1\n  ab'.encode(), np.uint8)
  # x . foo ( y ) += é1 ab   ('é' is two bytes, both inside its word)
  code = mm.word_ids(text, length=len(text) - 1)
  assert code.tolist() == [0, 1, 2, 2, 2, 3, 4, 5, -1, 6, 6, -1, 7, 7, 7, -1, -1, -1, 8, -1]
  space = mm.word_ids(text, word_definition='space')
  assert space.tolist() == [0] * 8 + [-1, 1, 1, -1, 2, 2, 2, -1, -1, -1, 3, 3]
  with pytest.raises(UserError, match='Unknown word_definition'):
    mm.word_ids(text, word_definition='bpe')


def test_masks_fifteen_percent_of_words_and_whole_words_only(text_windows):
  windows, lengths = text_windows
  inputs, targets, target_mask = mask_all(windows, lengths, seed=0)
  assert inputs.dtype == targets.dtype == np.int32 and target_mask.dtype == np.float32
  real = np.arange(windows.shape[1])[None] < lengths[:, None]
  np.testing.assert_array_equal(targets[real], windows[real].astype(np.int32) + 6)
  assert (targets[~real] == PAD_ID).all() and (inputs[~real] == PAD_ID).all()
  chosen_words = total_words = 0
  for w, n, m in zip(windows, lengths, target_mask):
    word = mm.word_ids(w, n)
    assert not m[word < 0].any()  # whitespace and padding are never targets
    num_words = word.max() + 1
    per_word = np.zeros(num_words)
    np.maximum.at(per_word, word[word >= 0], m[word >= 0])
    # Whole words only: every byte of a word shares its word's choice.
    np.testing.assert_array_equal(m[word >= 0], per_word[word[word >= 0]])
    assert per_word.sum() == max(1, round(0.15 * num_words))
    chosen_words += per_word.sum()
    total_words += num_words
  assert total_words > 50_000
  assert abs(chosen_words / total_words - 0.15) < 0.003


def test_replacement_proportions_80_10_10(text_windows):
  windows, lengths = text_windows
  inputs, targets, target_mask = mask_all(windows, lengths, seed=1)
  sel = target_mask > 0
  np.testing.assert_array_equal(inputs[~sel], targets[~sel])  # others untouched
  x, t = inputs[sel], targets[sel]
  n = x.size
  assert n > 30_000
  masked = (x == MASK_ID).mean()
  replaced = ((x != MASK_ID) & (x != t)).mean()
  kept = (x == t).mean()
  # Binomial sd <= 0.0023 at n > 30k; a random byte equals the original with p 1/256.
  assert abs(masked - 0.8) < 0.012
  assert abs(replaced - 0.1 * 255 / 256) < 0.01
  assert abs(kept - (0.1 + 0.1 / 256)) < 0.01
  rand = x[(x != MASK_ID) & (x != t)]
  assert rand.min() >= NUM_SPECIAL_TOKENS and rand.max() < 262
  assert len(np.unique(rand)) > 200  # random bytes span the byte range


def test_masking_is_deterministic_per_seed(text_windows):
  windows, lengths = text_windows
  a = mask_all(windows[:50], lengths[:50], seed=7)
  b = mask_all(windows[:50], lengths[:50], seed=7)
  c = mask_all(windows[:50], lengths[:50], seed=8)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[2], c[2])
  t = mm.WholeWordMask()
  el = {'bytes': windows[3], 'length': lengths[3], 'path': b'os.py'}
  out = t.random_map(el, np.random.default_rng(7))
  ref = mm.whole_word_mask(windows[3], lengths[3], np.random.default_rng(7))
  assert set(out) == {'inputs', 'targets', 'target_mask'}
  for x, y in zip((out['inputs'], out['targets'], out['target_mask']), ref):
    np.testing.assert_array_equal(x, y)


def test_edge_cases_and_bad_parameters():
  rng = np.random.default_rng(0)
  blank = np.frombuffer(b'   \n\t', np.uint8)
  inputs, targets, m = mm.whole_word_mask(blank, None, rng)
  assert not m.any() and inputs.tolist() == targets.tolist() == ids(b'   \n\t')
  one = np.frombuffer(b'hi', np.uint8)
  _, _, m = mm.whole_word_mask(one, 2, rng)
  assert m.tolist() == [1.0, 1.0]  # at least one word is chosen
  _, targets, m = mm.whole_word_mask(one, 0, rng)
  assert targets.tolist() == [PAD_ID, PAD_ID] and not m.any()
  with pytest.raises(UserError, match='mask_prob'):
    mm.whole_word_mask(one, 2, rng, mask_prob=0.0)
  with pytest.raises(UserError, match='sum to at most 1'):
    mm.whole_word_mask(one, 2, rng, mask_token_prob=0.95, random_token_prob=0.1)
  with pytest.raises(UserError, match='outside'):
    mm.whole_word_mask(one, 3, rng)


# ---------------------------------------------------------------------------
# Unigram baseline
# ---------------------------------------------------------------------------


def test_unigram_baseline_matches_hand_computation():
  a, b, c = ids(b'abc')
  train = [{'targets': np.array([a, a, b, c]), 'target_mask': np.array([1., 1., 1., 0.])},
           {'targets': np.array([[b, a]]), 'target_mask': np.array([[0., 1.]])}]
  counts = mm.count_tokens(train)
  assert counts[a] == 3 and counts[b] == 1 and counts[c] == 0 and counts.sum() == 4
  test = [{'targets': np.array([a, c, b, PAD_ID]), 'target_mask': np.array([1, 1, 0, 0])}]
  r = mm.unigram_baseline(counts, test, smoothing=1.0)
  # p(a) = (3+1)/(4+256), p(c) = (0+1)/(4+256); prediction 'a' is right once in two.
  want = -(math.log2(4 / 260) + math.log2(1 / 260)) / 2
  assert r['prediction'] == a and r['num_targets'] == 2
  assert r['accuracy'] == 0.5
  assert r['bits_per_byte'] == pytest.approx(want, rel=1e-12)
  # Without smoothing an unseen byte costs infinitely many bits; ties -> lowest id.
  assert mm.unigram_baseline(counts, test, smoothing=0.0)['bits_per_byte'] == math.inf
  tied = mm.count_tokens([{'targets': np.array([b, a]), 'target_mask': np.ones(2)}])
  only_a = [{'targets': np.array([a]), 'target_mask': np.ones(1)}]
  r = mm.unigram_baseline(tied, only_a, smoothing=0.0)
  assert r['prediction'] == a and r['accuracy'] == 1.0 and r['bits_per_byte'] == 1.0
  with pytest.raises(UserError, match='no targets'):
    mm.unigram_baseline(counts, [{'targets': np.array([a]), 'target_mask': np.zeros(1)}])
