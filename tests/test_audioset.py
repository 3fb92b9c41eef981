"""AudioSet-style multi-label classification: mAP and loss on hand-made numbers, the
audioset_files builder (manual_dir files, generated clips), and a short :runlocal run."""

import csv
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.io import wavfile

from configs import audioset_perceiver
from perceiver_jax import evaluator, tasks, trainer
from perceiver_jax import state as state_lib
from perceiver_jax.data import pipeline
from perceiver_jax.data.builders import audioset_files as af
from perceiver_jax.errors import UserError
from perceiver_jax.tasks.multilabel import (MultilabelTask, average_precision,
                                            multilabel_metrics)
from perceiver_jax.validate import validate_config
from tests.helpers import assert_loss_falls, fixed_batch, runlocal


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  pipeline.prepare('audioset_files/generated', path)
  return path


def brute_force_ap(scores, labels):
  """AP straight from its definition: at each distinct threshold t (high to low), predict
  score >= t and add (recall gained) x precision."""
  ap, last_recall = 0.0, 0.0
  for t in sorted(set(scores.tolist()), reverse=True):
    predicted = scores >= t
    tp = (predicted & (labels > 0)).sum()
    recall = tp / (labels > 0).sum()
    ap += (recall - last_recall) * tp / predicted.sum()
    last_recall = recall
  return ap


# ------------------------------------------------------------------------------------------
# Metrics and loss on hand-made numbers.
# ------------------------------------------------------------------------------------------

def test_average_precision_by_hand_with_ties_and_classes_without_positives():
  scores = np.array([[0.9, 0.5, 0.3], [0.8, 0.5, 0.2], [0.7, 0.1, 0.9], [0.6, 0.2, 0.1]])
  labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
  # Class 0: positives at ranks 1 and 3 -> (1/1 + 2/3) / 2.
  assert average_precision(scores[:, 0], labels[:, 0]) == pytest.approx(5 / 6)
  # Class 1: the two 0.5s tie (one positive): precision 1/2 at recall 1/2, then 2/3 at 1.
  assert average_precision(scores[:, 1], labels[:, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
  metrics = multilabel_metrics(scores, labels)
  # Class 2 has no positive: left out of the mean (and of the AUC).
  assert metrics['num_classes_scored'] == 2
  assert metrics['map'] == pytest.approx((5 / 6 + 0.5 * 0.5 + 0.5 * 2 / 3) / 2)
  # AUC: of the (positive, negative) pairs class 0 orders 3 of 4 right, class 1 2.5 of 4
  # (0.5 > 0.1, 0.2 > 0.1, and the 0.5 tie counts 1/2); d' = sqrt(2) Phi^-1(0.6875).
  assert metrics['auc'] == pytest.approx((0.75 + 0.625) / 2)
  assert metrics['d_prime'] == pytest.approx(math.sqrt(2) * 0.4887764111147, rel=1e-9)


def test_average_precision_matches_brute_force_and_sklearn_on_random_ties():
  rng = np.random.default_rng(0)
  scores = np.round(rng.random((60, 12)), 1)  # many ties
  labels = (rng.random((60, 12)) < 0.3).astype(np.int32)
  labels[:, 0] = 0  # a class without positives
  want = [brute_force_ap(scores[:, c], labels[:, c]) for c in range(1, 12)]
  got = [average_precision(scores[:, c], labels[:, c]) for c in range(1, 12)]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert multilabel_metrics(scores, labels)['map'] == pytest.approx(np.mean(want))
  metrics = pytest.importorskip('sklearn.metrics')
  np.testing.assert_allclose(
      got, [metrics.average_precision_score(labels[:, c], scores[:, c]) for c in range(1, 12)])


def test_task_map_equals_average_precisions_worked_out_by_hand():
  """The multilabel task's mAP (its eval sums through the evaluation loop) on 5 examples of 3
  classes whose ranking is known."""
  task = MultilabelTask()
  # Per class, the examples ranked by score: class 0 e0 > e1 > e2 > e3 > e4, class 1 the
  # reverse, class 2 e1 > e4 > e3 > e0 > e2.
  logits = np.array([[4, 0, 1], [3, 1, 4], [2, 2, 0], [1, 3, 2], [0, 4, 3]], np.float32)

  def task_map(labels):
    # Two batches; the second ends with a padding example, a top-scored positive of every
    # class, that must not count.
    rows = np.vstack([logits, np.full((1, 3), 9.0, np.float32)])
    labels = np.vstack([labels, np.ones((1, 3))]).astype(np.float32)
    mask = np.array([1, 1, 1, 1, 1, 0], np.float32)
    batches = [{'logits': rows[s], 'labels': labels[s], 'mask': mask[s]}
               for s in (slice(0, 3), slice(3, 6))]
    eval_step = lambda params, model_state, b: task.loss_sums(jnp.asarray(b['logits']), b,
                                                              train=False)
    report = evaluator.evaluate_split(eval_step, None, None, batches, task)
    assert report['num_examples'] == 5 and report['num_classes_scored'] == 3
    return report['map']

  # Every class's positives ranked above its negatives: each AP is 1.
  assert task_map(np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 1, 1]])) == (
      pytest.approx(1.0))
  # Class 0: positives e0, e2 at ranks 1 and 3: AP = (1/1 + 2/3) / 2 = 5/6.
  # Class 1: positives e4, e0 at ranks 1 and 5: AP = (1/1 + 2/5) / 2 = 7/10.
  # Class 2: its one positive, e3, at rank 3: AP = 1/3. mAP = 28/45.
  labels = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]])
  assert task_map(labels) == pytest.approx((5 / 6 + 7 / 10 + 1 / 3) / 3, rel=1e-12)


def test_sigmoid_loss_numbers_and_padding_never_counts():
  task = MultilabelTask()
  logits = jnp.array([[0.0, 0.0], [2.0, -1.0], [50.0, -50.0]])
  batch = {'labels': jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
           'mask': jnp.array([1.0, 1.0, 0.0])}
  sums = task.loss_sums(logits, batch, train=False)
  want = [math.log(2.0), (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2]
  assert float(sums['count']) == 2.0
  assert float(sums['loss']) == pytest.approx(sum(want), rel=1e-6)
  # Training batches have no mask: every example counts, and the padding-like row costs 50.
  train = task.loss_sums(logits, {'labels': batch['labels']}, train=True)
  assert float(train['loss']) == pytest.approx(sum(want) + 50.0, rel=1e-5)
  assert set(train) == {'loss', 'count'}
  assert float(task.train_metrics(train)['loss']) == pytest.approx((sum(want) + 50) / 3, rel=1e-5)


def test_eval_rows_concatenate_over_batches_and_padding_is_dropped():
  """evaluator.evaluate_split concatenates the per-example rows; the padding example (perfect
  scores for a class whose only positive it carries) must not change mAP."""
  task = MultilabelTask()
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(8, 3)).astype(np.float32)
  labels = (rng.random((8, 3)) < 0.5).astype(np.float32)
  labels[:6, 2] = 0.0
  labels[6, 2] = 1.0  # class 2's only real positive ...
  labels[7, :] = 1.0  # ... and a padding row that would lift every class
  logits[7, :] = 100.0
  mask = np.array([1] * 7 + [0], np.float32)
  batches = [{'logits': logits[s], 'labels': labels[s], 'mask': mask[s]}
             for s in (slice(0, 3), slice(3, 6), slice(6, 8))]
  eval_step = lambda params, model_state, b: task.loss_sums(jnp.asarray(b['logits']), b,
                                                            train=False)
  report = evaluator.evaluate_split(eval_step, None, None, batches, task)
  want = multilabel_metrics(logits[:7], labels[:7])
  assert report['num_examples'] == 7 and report['num_classes_scored'] == 3
  assert report['map'] == pytest.approx(want['map'], rel=1e-9)
  with_padding = multilabel_metrics(logits, labels)['map']
  assert abs(with_padding - want['map']) > 0.01  # the check above can fail
  per_example = np.asarray(
      [float(task.loss_sums(jnp.asarray(logits[i:i + 1]), {'labels': labels[i:i + 1]},
                            train=True)['loss']) for i in range(7)])
  assert report['loss'] == pytest.approx(per_example.mean(), rel=1e-5)


# ------------------------------------------------------------------------------------------
# The builder: manual_dir files and generated clips.
# ------------------------------------------------------------------------------------------

TINY = af.AudiosetFilesConfig(name='tiny_manual', num_classes=3, sample_rate=8000,
                              clip_seconds=0.01)  # 80 samples


def write_manual_dir(root):
  os.makedirs(os.path.join(root, 'clips'))
  with open(os.path.join(root, af.CLASSES_CSV), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerows([('index', 'mid', 'display_name'), (0, '/m/a', 'Speech'),
                 (1, '/m/b', 'Dog, bark'), (2, '/m/c', 'Music')])
  header = '# Segments csv created Sun Mar  5 10:54:31 2017\n# YTID, start_seconds, ...\n'
  with open(os.path.join(root, 'balanced_train_segments.csv'), 'w') as f:
    f.write(header + 'aaa, 0.000, 10.000, "/m/a,/m/c"\nbbb, 30.000, 40.000, "/m/b"\n'
            'gone, 0.000, 10.000, "/m/b"\n')
  with open(os.path.join(root, af.EVAL_CSV), 'w') as f:
    f.write(header + 'ccc, 0.000, 10.000, "/m/c"\n')
  np.savez(os.path.join(root, 'clips', 'aaa.npz'), audio=np.full(100, 0.25, np.float32))
  wavfile.write(os.path.join(root, 'clips', 'bbb.wav'), 8000,
                np.stack([np.full(40, 16384, np.int16), np.zeros(40, np.int16)], 1))
  np.savez(os.path.join(root, 'clips', 'ccc.npz'), audio=np.ones(80, np.float32),
           sample_rate=8000)


def build_tiny(tmp_path, manual_dir):
  builder = af.AudiosetFiles(config=TINY, data_dir=str(tmp_path / 'tfds'))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder.download_and_prepare(file_format='array_record', download_config=(
      tfds.download.DownloadConfig(manual_dir=str(manual_dir))))
  return builder


def test_builder_reads_manual_dir_clips_wavs_and_segment_labels(tmp_path):
  write_manual_dir(str(tmp_path / 'manual'))
  builder = build_tiny(tmp_path, tmp_path / 'manual')
  train = builder.as_data_source('train')
  assert len(train) == 2 and len(builder.as_data_source('test')) == 1  # 'gone' is skipped
  a, b = train[0], train[1]
  assert a['id'] == b'aaa' and a['labels'].tolist() == [True, False, True]
  np.testing.assert_allclose(a['audio'], np.full(80, 0.25))  # 100 samples cut to 80
  assert a['num_samples'] == 80
  assert b['labels'].tolist() == [False, True, False] and b['num_samples'] == 40
  # Stereo int16 averaged to mono float, zero-padded after its 40 samples.
  np.testing.assert_allclose(b['audio'], np.r_[np.full(40, 0.25), np.zeros(40)])


def test_missing_manual_files_are_one_sentence(tmp_path):
  with pytest.raises(UserError, match=r'^AudioSet files are missing: put '
                                      r'class_labels_indices.csv, eval_segments.csv and '
                                      r'balanced_train_segments.csv and/or .* in .*'
                                      r'downloads/manual, and each listed clip as '
                                      r'clips/<YTID>.npz or clips/<YTID>.wav there') as e:
    pipeline.prepare('audioset_files/audio', str(tmp_path / 'empty'))
  assert str(e.value).count('. ') == 0 and str(e.value).endswith('.py).')
  manual = tmp_path / 'partial'
  write_manual_dir(str(manual))
  os.remove(manual / af.EVAL_CSV)
  with pytest.raises(UserError, match=r'^AudioSet files eval_segments.csv are missing: put'):
    build_tiny(tmp_path, manual)
  np.savez(os.path.join(manual, 'clips', 'aaa.npz'), audio=np.zeros(80, np.float32),
           sample_rate=16000)
  with open(manual / af.EVAL_CSV, 'w') as f:
    f.write('ccc, 0.000, 10.000, "/m/c"\n')
  with pytest.raises(UserError, match=r'aaa.npz is sampled at 16000 Hz but config '
                                      r"'tiny_manual' wants 8000 Hz"):
    build_tiny(tmp_path, manual)


def test_generated_clips_carry_their_labels(data_dir):
  builder = pipeline.prepare('audioset_files/generated', data_dir)
  test = builder.as_data_source('test')
  assert len(builder.as_data_source('train')) == 512 and len(test) == 128
  labels = np.stack([test[i]['labels'] for i in range(len(test))])
  assert labels.any(axis=1).all() and 0.15 < labels.mean() < 0.4
  # The 1000 Hz tone class: its clips have much more energy at 1000 Hz than the others.
  power = np.stack([np.abs(np.fft.rfft(test[i]['audio']))[512] for i in range(len(test))])
  assert power[labels[:, 2]].min() > 5 * np.median(power[~labels[:, 2]])
  again = af.generate_clip(builder.builder_config, np.random.default_rng([0, 1, 5]))
  np.testing.assert_array_equal(again['audio'], test[5]['audio'])


# ------------------------------------------------------------------------------------------
# Configs and a short run.
# ------------------------------------------------------------------------------------------

def test_configs_validate_and_audio_video_builds_and_applies_to_nested_batches(data_dir):
  full = audioset_perceiver.get_config()
  validate_config(full)
  model = nnx.eval_shape(lambda: state_lib.build(full, (61440,)))
  assert model.preprocessor.index_dims == (480,)
  av = audioset_perceiver.get_config('modality=audio_video,runlocal')
  av.data.data_dir = data_dir
  task = tasks.get_task(av)
  batch = next(pipeline.make_train_iterator(av.data, global_batch_size=4, seed=0, task=task))
  assert batch['inputs']['audio'].shape == (4, 4096)
  assert batch['inputs']['image'].shape == (4, 4, 16, 16, 3)
  assert batch['inputs']['image'].max() <= 1.0 and batch['labels'].shape == (4, 8)
  # Built and applied abstractly (shapes only): the multimodal model takes the dict batch.
  shapes = {'audio': (4096,), 'image': (4, 16, 16, 3)}
  logits = nnx.eval_shape(lambda: state_lib.build(av, shapes)(**task.model_inputs(batch)))
  assert logits.shape == (4, 8)
  validate_config(av)


def test_audio_video_runlocal_overfits_a_batch_of_nested_inputs(data_dir, tmp_path):
  config = runlocal(audioset_perceiver, data_dir, 'modality=audio_video,runlocal',
                    **fixed_batch(16, 10))
  workdir = str(tmp_path / 'av')
  final = trainer.train_and_evaluate(config, workdir)
  assert_loss_falls(workdir)
  assert final['num_examples'] == 128 and math.isfinite(final['map'])


def test_runlocal_overfits_a_batch_and_its_checkpoint_evaluates_the_same(data_dir, tmp_path):
  config = runlocal(audioset_perceiver, data_dir, **fixed_batch(16, 10))
  workdir = str(tmp_path / 'audioset')
  final = trainer.train_and_evaluate(config, workdir)
  # Untrained logits are 0 (zero-initialised head): the first loss is ln 2.
  assert assert_loss_falls(workdir)[0] == pytest.approx(math.log(2.0), rel=1e-5)
  assert final['num_examples'] == 128 and final['num_classes_scored'] == 8
  for key in ('loss', 'map', 'auc', 'd_prime'):
    assert math.isfinite(final[key]), key
  assert 0.0 < final['loss'] < 1.0 and 0.0 < final['map'] <= 1.0
  result = evaluator.evaluate(config, workdir)
  assert result['step'] == 10 and result['num_examples'] == 128
  for key in ('loss', 'map', 'auc'):
    assert result[key] == pytest.approx(final[key], rel=1e-5, abs=1e-6), key
