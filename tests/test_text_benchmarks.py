"""Text benchmarks: UTF-8 windows of text corpora for MLM (configs/mlm_c4.py), the embedded
stdlib_docs corpus, and text classification fine-tuned from an MLM checkpoint
(configs/text_classification.py)."""

import math
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import mlm_c4, text_classification
from configs.pretrained import language_perceiver
from perceiver_jax import checkpoint as ckpt
from perceiver_jax import finetune, tasks, trainer
from perceiver_jax.data import pipeline, text_windows
from perceiver_jax.data.builders import stdlib_docs
from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.metrics_log import read
from perceiver_jax.tasks.mlm import EncodeDocument, FixedSeedWholeWordMask, WindowAndMask
from perceiver_jax.tokenizer import NUM_SPECIAL_TOKENS, PAD_ID, SEP_ID, VOCAB_SIZE
from perceiver_jax.run import Run
from perceiver_jax.validate import validate_config
from tests.helpers import assert_loss_falls, fixed_batch, runlocal

TEXT = 'Grüße, naïve café — 😀 ok.'  # 1-, 2-, 3- and 4-byte characters
RAW = TEXT.encode('utf-8')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  pipeline.prepare('stdlib_docs/tiny', path)
  return path


# ------------------------------------------------------------------------------------------
# UTF-8 windows on hand-made strings.
# ------------------------------------------------------------------------------------------

def test_windows_never_split_a_character_and_pad_short_texts():
  doc = text_windows.utf8_bytes(TEXT)
  assert doc.dtype == np.uint8 and doc.tobytes() == RAW
  np.testing.assert_array_equal(text_windows.utf8_bytes(RAW), doc)  # TFDS gives bytes
  # 'Grü' is 4 bytes; a 3-byte window would cut the 'ü' (c3 bc): it is dropped whole.
  window, length = text_windows.crop(doc, 3)
  assert length == 2 and window.tolist() == [ord('G'), ord('r'), 0]
  # A start inside the 'ü' moves to the next character; the emoji (4 bytes) is not cut.
  begin, end = text_windows.window_bounds(doc, 8, start=3)  # 'ï' would be cut at the end
  assert (begin, end) == (4, 11) and RAW[begin:end].decode() == 'ße, na'
  emoji = RAW.index('😀'.encode())  # ' — 😀 ': '—' is 3 bytes, the emoji 4
  assert text_windows.window_bounds(doc, 6, start=emoji - 5) == (emoji - 5, emoji)
  assert text_windows.window_bounds(doc, 6, start=emoji - 3) == (emoji - 1, emoji + 5)
  # A short text: all of it, then zero padding.
  window, length = text_windows.crop(doc, 64)
  assert length == len(RAW) and window[:length].tobytes() == RAW and not window[length:].any()
  # Random windows: valid UTF-8, pieces of the text, and every offset reachable.
  rng = np.random.default_rng(0)
  starts = set()
  for _ in range(300):
    start = text_windows.random_start(len(RAW), 10, rng)
    starts.add(start)
    window, length = text_windows.crop(doc, 10, start)
    piece = window[:length].tobytes()
    assert 7 <= length <= 10 and piece.decode('utf-8') in TEXT  # strict decode
  assert starts == set(range(len(RAW) - 10 + 1))
  assert text_windows.random_start(5, 10, rng) == 0


def test_encode_texts_joins_pairs_and_cuts_the_longest_first():
  ids = text_windows.encode_texts(['abc', 'defgh'], 6)  # 5 bytes of room + [SEP]
  want = [ord(c) + NUM_SPECIAL_TOKENS for c in 'abc'] + [SEP_ID] + [
      ord(c) + NUM_SPECIAL_TOKENS for c in 'de']
  assert ids.dtype == np.int32 and ids.tolist() == want
  ids = text_windows.encode_texts(['ab', 'c'], 6)
  assert ids.tolist() == [ord('a') + 6, ord('b') + 6, SEP_ID, ord('c') + 6, PAD_ID, PAD_ID]
  # One text, cut inside 'é' (c3 a9): the partial character becomes padding.
  assert text_windows.encode_texts([b'a\xc3\xa9'], 2).tolist() == [ord('a') + 6, PAD_ID]
  assert text_windows._fit_lengths([10, 3, 10], 12) == [5, 3, 4]


def test_mlm_text_transforms_window_then_mask_with_tokenizer_ids():
  long_doc = ' '.join(f'w{i}' for i in range(150)).encode() + RAW  # 573 bytes
  element = EncodeDocument('text').map({'text': long_doc, 'label': 1})
  assert set(element) == {'document'} and element['document'].shape == (len(long_doc),)
  task = tasks.MlmTask(seq_len=64, word_definition='space')
  fixed = FixedSeedWholeWordMask(task.masking, 1, 64)
  first, again = fixed.map_with_index(3, element), fixed.map_with_index(3, element)
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])  # eval: fixed window and mask
  # Eval takes the document's first 64 bytes; targets are the tokenizer's ids (byte + 6).
  np.testing.assert_array_equal(
      first['targets'], np.frombuffer(long_doc[:64], np.uint8).astype(np.int32) + 6)
  assert 0 < first['target_mask'].sum() < 64
  # Training: a random window of the document (almost never the first), then the mask.
  out = WindowAndMask(task.masking, 64).random_map(element, np.random.default_rng(5))
  got = (out['targets'][out['targets'] != PAD_ID] - 6).astype(np.uint8).tobytes()
  assert got in long_doc and got != long_doc[:64]
  # A short document: padded with [PAD], which is never a target.
  short = fixed.map_with_index(0, EncodeDocument('text').map({'text': TEXT}))
  assert (short['targets'][len(RAW):] == PAD_ID).all()
  assert not short['target_mask'][len(RAW):].any()
  # Byte corpora ('bytes' + 'length') are masked exactly as WholeWordMask alone masks them.
  window = {'bytes': np.frombuffer(b'x = f(y)  ', np.uint8).copy(), 'length': np.int32(8)}
  a = WindowAndMask(task.masking, 64).random_map(window, np.random.default_rng(2))
  b = task.masking.random_map(window, np.random.default_rng(2))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_checked_source_accepts_text_features_and_rejects_others():
  records = [{'text': b'UTF-8 bytes'}, {'text': 'a str'}, {'text': np.zeros(3, np.uint8)}]
  source = pipeline.CheckedSource(records, 'hand', 'train', {'text': ((), 'text')})
  assert source[0]['text'] == b'UTF-8 bytes' and source[1]['text'] == 'a str'
  with pytest.raises(DatasetError,
                     match=r"Example 2 .* has 'text' of shape \(3,\) and dtype uint8, but the "
                           r"dataset declares shape \(\) and a string"):
    source[2]  # pylint: disable=pointless-statement


# ------------------------------------------------------------------------------------------
# The embedded text corpus.
# ------------------------------------------------------------------------------------------

def test_docstrings_are_taken_in_source_order_with_labels():
  source = b'''"""Module docstring, long enough."""
class A:
  """Class docstring, long enough."""
  def f(self):
    """Method docstring, long enough."""
    return 1
try:
  def g():
    """In a try block, long enough."""
except ImportError:
  def h():
    """Short."""
def s():
  """A lone surrogate \\udc80 has no UTF-8."""
'''
  assert stdlib_docs.docstrings(source) == [
      ('', 'module', 'Module docstring, long enough.'),
      ('A', 'class', 'Class docstring, long enough.'),
      ('A.f', 'function', 'Method docstring, long enough.'),
      ('g', 'function', 'In a try block, long enough.')]  # 'Short.': under 16 characters
  assert stdlib_docs.docstrings(b'def (:') == []


def test_stdlib_docs_features_and_file_level_split(data_dir):
  builder = pipeline.prepare('stdlib_docs/tiny', data_dir)
  assert builder.info.supervised_keys == ('text', 'label')
  assert builder.info.features['label'].names == ['module', 'class', 'function']
  paths = {}
  for split in ('train', 'test'):
    source = builder.as_data_source(split)
    examples = [source[i] for i in range(len(source))]
    assert examples and all(isinstance(e['text'], bytes) and len(e['text']) >= 16
                            for e in examples)
    assert {int(e['label']) for e in examples} <= {0, 1, 2}
    paths[split] = {e['path'] for e in examples}
    # The first document of a file is its module docstring (label 0, name '').
    assert int(examples[0]['label']) == 0 and examples[0]['name'] == b''
  assert not paths['train'] & paths['test']
  assert len(paths['train']) == 8 and len(paths['test']) == 3


# ------------------------------------------------------------------------------------------
# Configs: the released architecture and the recipes.
# ------------------------------------------------------------------------------------------

def test_full_size_configs_are_the_released_model_with_the_recipes():
  released = language_perceiver.get_config().model.to_dict()
  for arg in (None, 'data=wikipedia'):
    config = mlm_c4.get_config(arg)
    validate_config(config)
    assert config.model.to_dict() == released  # imported, not a copy that can drift
    assert (config.optimizer.name, config.optimizer.learning_rate) == ('lamb', 1.25e-3)
    assert (config.train.batch_size, config.train.num_steps) == (2048, 500_000)  # Table 12
  assert mlm_c4.get_config('data=wikipedia').data.eval_split == 'train[:10000]'
  for arg, classes, steps in ((None, 2, 10 * (67349 // 32)), ('data=mnli,seq_len=512', 3, None)):
    config = text_classification.get_config(arg)
    validate_config(config)
    assert config.model.num_classes == classes and config.task.seq_len == (512 if arg else 2048)
    if steps:
      assert config.train.num_steps == steps
    # Everything but the head is the released model's.
    for part in ('preprocessor', 'encoder'):
      assert config.model[part].to_dict() == released[part]
  assert text_classification.get_config('data=mnli').task.text_keys == ('premise', 'hypothesis')
  for module in (mlm_c4, text_classification):
    with pytest.raises(ValueError, match='Unknown'):
      module.get_config('data=bookcorpus')


def test_text_classification_reads_declared_text_and_label_features(data_dir):
  config = runlocal(text_classification, data_dir)
  spec = Run.create(config).data_spec
  assert spec.input_shape == (128,) and spec.num_classes == 3
  task = tasks.get_task(config)
  batch = next(iter(pipeline.make_eval_iterator(config.data, 'test', global_batch_size=16,
                                                task=task)))
  builder = pipeline.prepare('stdlib_docs/tiny', data_dir)
  first = builder.as_data_source('test')[0]
  want = text_windows.encode_texts([first['text']], 128)
  np.testing.assert_array_equal(batch['inputs'][0], want)
  assert batch['label'][0] == first['label'] and batch['mask'].sum() == 12
  inputs = task.model_inputs(batch)
  np.testing.assert_array_equal(inputs['input_mask'], batch['inputs'] != PAD_ID)
  pipeline.prepare('digits', data_dir)
  with pytest.raises(DatasetError, match=r"Dataset 'digits' has no text feature "
                                                  r"'text', so the text_classification task"):
    Run.create(runlocal(text_classification, data_dir, **{'data.name': 'digits'}))
  with pytest.raises(DatasetError, match=r"Dataset 'digits' has no 'bytes' \[window\] "
                                                  r"and 'length' features, so the mlm task "
                                                  r"cannot read it, nor a text feature 'text'"):
    Run.create(runlocal(mlm_c4, data_dir, **{'data.name': 'digits'}))


# ------------------------------------------------------------------------------------------
# MLM on text, then fine-tuning from its checkpoint.
# ------------------------------------------------------------------------------------------

# MLM and fine-tuning each train on one fixed batch of 8 documents for 10 steps.
MLM_STEPS = 10


@pytest.fixture(scope='module')
def mlm_run(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('mlm_c4'))
  # LAMB scales each update to the weights' norm: 0.1 shows the fall within 10 steps.
  config = runlocal(mlm_c4, data_dir, **fixed_batch(8, MLM_STEPS),
                    **{'optimizer.learning_rate': 0.1})
  final = trainer.train_and_evaluate(config, workdir)
  return workdir, final


def test_mlm_c4_runlocal_learns_on_text(mlm_run):
  workdir, final = mlm_run
  train = [r for r in read(os.path.join(workdir, 'metrics.jsonl')) if r.get('split') == 'train']
  assert [r['step'] for r in train] == list(range(1, MLM_STEPS + 1))
  # Untrained: close to uniform over the 262 ids, log2(262) = 8.03 bits per byte.
  assert 6.0 < train[0]['bits_per_byte'] < 9.0
  assert_loss_falls(workdir)
  for record in train + [final]:
    assert all(math.isfinite(record[k]) for k in ('loss', 'accuracy', 'bits_per_byte'))
  assert final['num_examples'] == 12 and final['num_targets'] > 0


def _by_name(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_fine_tuning_loads_the_mlm_encoder_and_a_fresh_head_then_learns(mlm_run, data_dir,
                                                                        tmp_path, monkeypatch):
  mlm_workdir, _ = mlm_run
  # 3x the variant's learning rate, so that 10 steps show the fall from the pretrained start.
  config = runlocal(text_classification, data_dir, **fixed_batch(8, 10),
                    **{'optimizer.learning_rate': 3e-3}, init_from=mlm_workdir)
  seen = {}
  load = finetune.init_from_checkpoint

  def load_and_keep(state, *args):
    loaded = load(state, *args)
    # Copied now: training donates (deletes) the state's buffers.
    seen['fresh'], seen['loaded'] = _by_name(state.params), _by_name(loaded.params)
    seen['step'] = int(loaded.step)
    return loaded

  # The trainer's own step-0 state: its fresh initialisation, then what init_from made of it.
  monkeypatch.setattr(finetune, 'init_from_checkpoint', load_and_keep)
  workdir = str(tmp_path / 'ft')
  final = trainer.train_and_evaluate(config, workdir)
  manager = ocp.CheckpointManager(ckpt.checkpoint_dir(mlm_workdir))
  pretrained = _by_name(manager.restore(MLM_STEPS, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))['state']['params'])
  fresh, got = seen['fresh'], seen['loaded']
  assert seen['step'] == 0
  heads = [n for n in got if n.startswith('decoder/')]
  assert 'decoder/decoder/output/kernel' in heads
  assert got['decoder/decoder/output/bias'].shape == (3,)
  assert got['preprocessor/embeddings'].shape == (VOCAB_SIZE, 32)
  for name, value in got.items():
    if name in heads:  # the new head keeps its fresh initialisation
      np.testing.assert_array_equal(value, fresh[name], err_msg=name)
      continue
    # The byte table is stored under the MLM model's tied output layer.
    source = 'postprocessor/embeddings' if name == 'preprocessor/embeddings' else name
    np.testing.assert_array_equal(value, pretrained[source], err_msg=name)
    assert not np.array_equal(value, fresh[name]), name  # loaded, not the fresh values
  # Then the classifier trains: its loss falls on the fixed batch, and it evaluates.
  assert_loss_falls(workdir)
  assert final['num_examples'] == 12 and math.isfinite(final['loss'])
  assert 0.0 <= final['accuracy'] <= 1.0


def test_init_rename_must_be_pairs():
  assert finetune.parse_rename(' a/b=c/d, e=f ') == {'a/b': 'c/d', 'e': 'f'}
  with pytest.raises(UserError, match=r"config.init_rename item 'a/b' is not "
                                      r"THIS_PATH=CHECKPOINT_PATH"):
    finetune.parse_rename('a/b')
