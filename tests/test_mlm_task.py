"""The 'mlm' task: loss and metrics on hand-made logits, masked data, and a short training run."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks.baselines import masked
from configs import mlm_stdlib
from perceiver_jax import state as state_lib
from perceiver_jax import tasks
from perceiver_jax import trainer
from perceiver_jax.data import mlm_masking, pipeline
from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.metrics_log import read
from perceiver_jax.tasks.mlm import MlmTask, mlm_metrics, mlm_sums
from perceiver_jax.tokenizer import NUM_SPECIAL_TOKENS, PAD_ID, VOCAB_SIZE
from perceiver_jax.run import Run, parse_variant
from perceiver_jax.validate import validate_config
from tests.helpers import assert_loss_falls, fixed_batch, run_main, runlocal

NEG = -1e9  # a logit that gets probability 0 in float32


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  pipeline.prepare('python_stdlib/tiny', path)
  return path


# ------------------------------------------------------------------------------------------
# Loss and metrics on hand-made logits.
# ------------------------------------------------------------------------------------------

def uniform_over_bytes(batch, seq):
  logits = np.zeros((batch, seq, VOCAB_SIZE), np.float32)
  logits[..., :NUM_SPECIAL_TOKENS] = NEG  # special ids get probability 0
  return logits


def test_uniform_over_256_bytes_is_8_bits_per_byte():
  targets = np.array([[6, 100, 261, PAD_ID]], np.int32)
  weights = np.array([[1.0, 1.0, 1.0, 0.0]], np.float32)
  sums = mlm_sums(jnp.asarray(uniform_over_bytes(1, 4)), targets, weights)
  metrics = mlm_metrics(sums)
  assert float(sums['count']) == 3.0
  assert float(metrics['bits_per_byte']) == pytest.approx(8.0, abs=1e-5)
  assert float(metrics['loss']) == pytest.approx(math.log(256.0), abs=1e-5)
  # Uniform over the whole vocabulary: log2(262) bits.
  sums = mlm_sums(jnp.zeros((1, 4, VOCAB_SIZE)), targets, weights)
  assert float(mlm_metrics(sums)['bits_per_byte']) == pytest.approx(math.log2(262), abs=1e-5)


def test_accuracy_and_bits_count_only_weighted_positions():
  # Position 0: p(target) = 1/2 (two equal top logits, argmax = the lower id = target).
  # Position 1: target gets p = 1/4 among four equal logits, but a non-target id is argmax.
  # Position 2: unweighted, with a NaN logit that must not leak into the sums.
  logits = np.full((1, 3, VOCAB_SIZE), NEG, np.float32)
  logits[0, 0, [10, 11]] = 0.0
  logits[0, 1, [20, 21, 22, 23]] = 0.0
  logits[0, 2, 30] = np.nan
  targets = np.array([[10, 23, 30]], np.int32)
  weights = np.array([[1.0, 1.0, 0.0]], np.float32)
  sums = {k: float(v) for k, v in mlm_sums(jnp.asarray(logits), targets, weights).items()}
  assert sums['count'] == 2.0 and sums['correct'] == 1.0
  assert sums['loss'] == pytest.approx(math.log(2) + math.log(4), abs=1e-5)
  metrics = mlm_metrics(sums, np)
  assert metrics['accuracy'] == 0.5
  assert metrics['bits_per_byte'] == pytest.approx((1 + 2) / 2, abs=1e-6)


def test_task_loss_skips_eval_padding_and_is_exact_over_batches():
  task = MlmTask()
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 5, VOCAB_SIZE)).astype(np.float32)
  targets = rng.integers(NUM_SPECIAL_TOKENS, VOCAB_SIZE, (4, 5)).astype(np.int32)
  target_mask = (rng.random((4, 5)) < 0.5).astype(np.float32)
  target_mask[3] = 1.0  # the padding example's would-be targets
  batch = dict(inputs=targets, targets=targets, target_mask=target_mask,
               mask=np.array([1, 1, 1, 0], np.float32))
  full = task.loss_sums(jnp.asarray(logits), batch, train=False)
  halves = [task.loss_sums(jnp.asarray(logits[s]), {k: v[s] for k, v in batch.items()},
                           train=False) for s in (slice(0, 2), slice(2, 4))]
  summed = {k: float(halves[0][k] + halves[1][k]) for k in full}
  for k in full:
    assert summed[k] == pytest.approx(float(full[k]), rel=1e-6)
  assert float(full['count']) == target_mask[:3].sum() and float(full['examples']) == 3
  # By hand: mean -ln softmax at the targets of the 3 real examples.
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  want = (nll * target_mask)[:3].sum() / target_mask[:3].sum()
  report = task.summarize(summed)
  assert report['loss'] == pytest.approx(want, rel=1e-5)
  assert report['bits_per_byte'] == pytest.approx(want / math.log(2), rel=1e-5)
  assert report['num_examples'] == 3 and report['num_targets'] == int(target_mask[:3].sum())
  # Training batches have no 'mask'; the loss is a mean over all their targets.
  train_batch = {k: v for k, v in batch.items() if k != 'mask'}
  assert float(task.normaliser(train_batch)) == target_mask.sum()
  inputs = task.model_inputs({'inputs': np.array([[7, 3, PAD_ID]])})
  np.testing.assert_array_equal(inputs['input_mask'], [[True, True, False]])


# ------------------------------------------------------------------------------------------
# Data: masked like the unigram baseline (eval), deterministic and resumable (train).
# ------------------------------------------------------------------------------------------

def test_eval_masks_match_the_baselines_test_masking(data_dir):
  config = runlocal(mlm_stdlib, data_dir)
  task = tasks.get_task(config)
  batches = list(pipeline.make_eval_iterator(config.data, 'test', global_batch_size=32,
                                             task=task))
  builder = pipeline.prepare('python_stdlib/tiny', data_dir)
  want = list(masked(builder.as_data_source('test'), 1, 'code'))
  real = np.concatenate([b['mask'] for b in batches]) > 0
  assert real.sum() == len(want) and not real[len(want):].any()
  for key in ('inputs', 'targets', 'target_mask'):
    got = np.concatenate([b[key] for b in batches])[:len(want)]
    np.testing.assert_array_equal(got, np.stack([w[key] for w in want]), err_msg=key)
  pad = np.concatenate([b['inputs'] for b in batches])[len(want):]
  assert (pad == PAD_ID).all()
  # Same counts as the baseline computes over the same masked test split.
  counts = mlm_masking.count_tokens(masked(builder.as_data_source('test'), 1, 'code'))
  assert counts.sum() == sum(b['target_mask'][b['mask'] > 0].sum() for b in batches)


def test_train_batches_are_deterministic_and_resume(data_dir):
  config = runlocal(mlm_stdlib, data_dir)
  task = tasks.get_task(config)
  make = lambda seed: pipeline.make_train_iterator(config.data, global_batch_size=8, seed=seed,
                                                   task=task)
  it = make(0)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  rest = [next(it) for _ in range(2)]
  again = make(0)
  again.set_state(state)
  for a, b in zip(rest, [next(again) for _ in range(2)]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other = next(make(1))
  assert not np.array_equal(other['inputs'], first[0]['inputs'])
  batch = first[0]
  assert batch['inputs'].shape == (8, 128) and batch['inputs'].dtype == np.int32
  assert set(batch) == {'inputs', 'targets', 'target_mask'}
  # Targets are the original bytes; about 15% of the words are targets.
  share = batch['target_mask'].sum() / (batch['targets'] != PAD_ID).sum()
  assert 0.03 < share < 0.4


# ------------------------------------------------------------------------------------------
# Config: validation and the model.
# ------------------------------------------------------------------------------------------

def test_configs_validate_and_tie_the_embedding(data_dir):
  for arg, shape in ((None, (512,)), ('runlocal', (128,))):
    config = mlm_stdlib.get_config(arg)
    validate_config(config)
    model = nnx.eval_shape(lambda: state_lib.build(config, shape))
    assert model.postprocessor.embeddings is model.preprocessor.embeddings
  assert mlm_stdlib.get_config('runlocal,steps=7').train.num_steps == 7
  assert parse_variant('runlocal', runlocal=False).runlocal is True
  assert Run.create(runlocal(mlm_stdlib, data_dir)).data_spec.input_shape == (128,)


def test_bad_task_settings_are_one_sentence(data_dir):
  with pytest.raises(UserError, match=r"config.task.name='mlmm' is unknown; use one of "
                                      r"'causal_lm', 'classification', .*'mlm'.* "
                                      r"\(did you mean 'mlm'\?\)\.$"):
    validate_config(runlocal(mlm_stdlib, data_dir, **{'task.name': 'mlmm'}))
  with pytest.raises(UserError, match=r'config.task.mask_prob=1.5 is out of range'):
    validate_config(runlocal(mlm_stdlib, data_dir, **{'task.mask_prob': 1.5}))
  with pytest.raises(UserError, match=r"config.task.word_definition='words' is unknown"):
    validate_config(runlocal(mlm_stdlib, data_dir, **{'task.word_definition': 'words'}))
  pipeline.prepare('digits', data_dir)
  with pytest.raises(DatasetError, match=r"Dataset 'digits' has no 'bytes' \[window\] "
                                                  r"and 'length' features, so the mlm task"):
    Run.create(runlocal(mlm_stdlib, data_dir, **{'data.name': 'digits'}))


# ------------------------------------------------------------------------------------------
# A short run through the trainer, then eval.py on its checkpoint.
# ------------------------------------------------------------------------------------------

def test_runlocal_overfits_a_batch_and_eval_py_reproduces_its_metrics(data_dir, tmp_path):
  workdir = str(tmp_path / 'mlm')
  # One fixed batch of 8 windows (masked afresh each step), at a learning rate that shows
  # the fall in 12 steps.
  config = runlocal(mlm_stdlib, data_dir, **fixed_batch(8, 12),
                    **{'optimizer.learning_rate': 3e-3})
  final = trainer.train_and_evaluate(config, workdir)
  records = read(os.path.join(workdir, 'metrics.jsonl'))
  train = [r for r in records if r.get('split') == 'train']
  assert [r['step'] for r in train] == list(range(1, 13))
  assert_loss_falls(workdir)
  for record in train + [final]:
    for key in ('loss', 'accuracy', 'bits_per_byte'):
      assert math.isfinite(record[key]), (key, record)
  # Untrained, the model is close to uniform over the 262 ids: about log2(262) = 8.03 bits.
  assert 6.0 < train[0]['bits_per_byte'] < 9.0
  assert final['bits_per_byte'] == pytest.approx(final['loss'] / math.log(2), rel=1e-6)
  assert final['num_targets'] > 0 and 0.0 <= final['accuracy'] <= 1.0
  # eval.py on another mesh (4 devices) than training's (8).
  run_main('eval.py', ['--config=configs/mlm_stdlib.py:runlocal', f'--workdir={workdir}',
                       f'--config.data.data_dir={data_dir}'], devices=4)
  with open(os.path.join(workdir, 'eval_12.json')) as f:
    result = json.load(f)
  assert result['num_targets'] == final['num_targets']
  assert result['num_examples'] == final['num_examples']
  for key in ('loss', 'accuracy', 'bits_per_byte'):
    assert result[key] == pytest.approx(final[key], rel=1e-5, abs=1e-6), key
