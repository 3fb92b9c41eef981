"""Multimodal autoencoding: PSNR and loss on hand-made arrays, the kinetics_files builder
(generated clips, a manual_dir of user files, the missing-files message) and a short
training run of configs/kinetics_autoencoding.py:runlocal on a fixed batch, then evaluated
again."""

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import kinetics_autoencoding
from configs.pretrained import multimodal_perceiver as released
from perceiver_jax import evaluator, tasks, trainer
from perceiver_jax.data import pipeline
from perceiver_jax.data.builders import kinetics_files
from perceiver_jax.errors import UserError
from perceiver_jax.tasks.autoencoding import MultimodalAutoencodingTask
from perceiver_jax.run import Run
from perceiver_jax.validate import validate_config
from tests.helpers import abstract_run, assert_loss_falls, fixed_batch, runlocal


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  pipeline.prepare('kinetics_files/synthetic', path)
  return path


# ------------------------------------------------------------------------------------------
# Loss and metrics on hand-made arrays.
# ------------------------------------------------------------------------------------------

def hand_made_batch():
  """3 real clips of 2 frames of 2x2 pixels and 8 audio samples, plus one padding clip."""
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (4, 2, 2, 2, 3)).astype(np.uint8)
  audio = rng.uniform(-1, 1, (4, 8)).astype(np.float32)
  label = np.array([0, 1, 2, 0], np.int32)
  mask = np.array([1, 1, 1, 0], np.float32)
  video_err = rng.normal(0, 0.1, (4, 8, 3)).astype(np.float32)
  audio_err = rng.normal(0, 0.2, (4, 8)).astype(np.float32)
  video_err[3] = np.nan  # the padding clip's outputs must not count, even if not finite
  logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 1.0], [np.nan, 0, 0]],
                    np.float32)
  outputs = {'image': video.reshape(4, 8, 3) / 255.0 + video_err, 'audio': audio + audio_err,
             'label': logits}
  batch = {'video': video, 'audio': audio, 'label': label, 'mask': mask}
  return outputs, batch, video_err[:3], audio_err[:3], logits[:3], label[:3]


def sums_of(task, outputs, batch):
  sums = jax.jit(functools.partial(task.loss_sums, train=False))(
      {k: jnp.asarray(v) for k, v in outputs.items()},
      {k: jnp.asarray(v) for k, v in batch.items()})
  return {k: np.asarray(v) for k, v in sums.items()}


def test_psnr_loss_and_accuracy_match_their_definitions_and_skip_padding():
  task = MultimodalAutoencodingTask(num_classes=3, samples_per_patch=4)
  outputs, batch, video_err, audio_err, logits, label = hand_made_batch()
  metrics = task.summarize(sums_of(task, outputs, batch))
  # PSNR = 10 log10(range^2 / MSE): video in [0, 1] (range 1), audio in [-1, 1] (range 2).
  assert metrics['video_psnr'] == pytest.approx(10 * math.log10(1.0 / np.mean(video_err ** 2)),
                                                rel=1e-5)
  assert metrics['audio_psnr'] == pytest.approx(10 * math.log10(4.0 / np.mean(audio_err ** 2)),
                                                rel=1e-5)
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -log_softmax[np.arange(3), label]
  video_l1 = np.abs(video_err).reshape(3, -1).mean(-1)
  audio_l1 = np.abs(audio_err).mean(-1)
  assert metrics['label_ce'] == pytest.approx(ce.mean(), rel=1e-5)
  assert metrics['accuracy'] == pytest.approx(2 / 3)  # argmax 0, 2, 2 vs labels 0, 1, 2
  # The paper's weights: 0.03 video L1 + 1.0 audio L1 + 0.0001 label CE, mean over clips.
  expected = (0.03 * video_l1 + 1.0 * audio_l1 + 0.0001 * ce).mean()
  assert metrics['loss'] == pytest.approx(expected, rel=1e-5)
  assert metrics['num_examples'] == 3


def test_metrics_over_two_batches_equal_the_metrics_of_their_union():
  task = MultimodalAutoencodingTask(num_classes=3, samples_per_patch=4)
  outputs, batch, *_ = hand_made_batch()
  whole = task.summarize(sums_of(task, outputs, batch))
  halves = [sums_of(task, {k: v[s] for k, v in outputs.items()},
                    {k: v[s] for k, v in batch.items()}) for s in (slice(0, 1), slice(1, 4))]
  added = task.summarize({k: halves[0][k] + halves[1][k] for k in halves[0]})
  for key, value in whole.items():
    assert added[key] == pytest.approx(value, rel=1e-5), key


def test_training_decodes_and_scores_only_the_drawn_points():
  task = MultimodalAutoencodingTask(num_classes=3, samples_per_patch=4, train_video_points=3,
                                    train_audio_patches=1)
  _, batch, *_ = hand_made_batch()
  del batch['mask']
  (draw,) = task.train_transforms(None)
  example = draw.random_map({k: v[0] for k, v in batch.items()}, np.random.default_rng(1))
  assert example['video_points'].shape == (3,) and len(set(example['video_points'])) == 3
  assert example['audio_points'].shape == (1,) and example['audio_points'][0] in (0, 1)
  batch = {**batch, 'video_points': np.stack([example['video_points']] * 4),
           'audio_points': np.stack([example['audio_points']] * 4)}
  points = task.model_inputs(batch)['subsampled_output_points']
  np.testing.assert_array_equal(points['image'], example['video_points'])
  # Outputs equal to the targets at the drawn points: zero error there, whatever elsewhere.
  flat = batch['video'].reshape(4, 8, 3).astype(np.float32) / np.float32(255)
  p = example['audio_points'][0]
  outputs = {'image': flat[:, example['video_points']],
             'audio': batch['audio'][:, 4 * p:4 * p + 4], 'label': np.zeros((4, 3), np.float32)}
  sums = sums_of(task, outputs, batch)
  assert sums['video_se'] < 1e-10 and sums['audio_se'] == 0  # (x / 255 rounds as XLA does it)
  assert sums['video_values'] == 4 * 3 * 3 and sums['audio_values'] == 4 * 4
  outputs['audio'] = outputs['audio'] + 0.5
  assert sums_of(task, outputs, batch)['audio_l1'] == pytest.approx(4 * 0.5, rel=1e-6)


# ------------------------------------------------------------------------------------------
# The builder: generated clips, user files in manual_dir, and the missing-files message.
# ------------------------------------------------------------------------------------------

def test_synthetic_clips_move_in_the_labelled_direction_with_their_tone(data_dir):
  builder = pipeline.prepare('kinetics_files/synthetic', data_dir)
  assert builder.info.splits['train'].num_examples == 96
  source = builder.as_data_source(split='test')
  for i in range(4):
    ex = source[i]
    video, audio, label = ex['video'].astype(int), ex['audio'], int(ex['label'])
    assert label == i % 4 and video.shape == (4, 16, 16, 3) and audio.shape == (256,)
    dy, dx = kinetics_files.SYNTHETIC_MOTION[label]
    moved = []
    for speed in (1, 2):  # content at (y, x) in frame t is at (y + dy*s, x + dx*s) in t + 1
      a = video[0, max(0, -dy * speed):16 - max(0, dy * speed),
                max(0, -dx * speed):16 - max(0, dx * speed)]
      b = video[1, max(0, dy * speed):16 - max(0, -dy * speed),
                max(0, dx * speed):16 - max(0, -dx * speed)]
      moved.append(np.array_equal(a, b))
    assert any(moved), (i, label)
    cycles_per_frame = np.argmax(np.abs(np.fft.rfft(audio))) / 4
    assert cycles_per_frame == 2 + 2 * label
    assert np.abs(audio).max() <= 0.8


def write_manual_dir(data_dir, rng):
  manual = os.path.join(data_dir, 'downloads', 'manual')
  os.makedirs(os.path.join(manual, 'clips'))
  with open(os.path.join(manual, 'annotations.csv'), 'w') as f:
    f.write('label,youtube_id,time_start,time_end,split\n'
            'zumba,abc,10,20,train\nabseiling,-x_1,0,10,train\nyoga,gone,5,15,train\n'
            'zumba,v1,1,11,validate\n')
  clips = {}
  for name in ('abc_000010_000020', '-x_1_000000_000010', 'v1_000001_000011'):
    clips[name] = (rng.integers(0, 256, (17, 224, 224, 3), dtype=np.uint8),
                   rng.uniform(-1, 1, 30800).astype(np.float32))
    np.savez(os.path.join(manual, 'clips', name + '.npz'), video=clips[name][0],
             audio=clips[name][1])
  return manual, clips


def test_k700_reads_the_manual_dir_and_says_what_is_missing(tmp_path):
  data_dir = str(tmp_path)
  with pytest.raises(UserError, match=r'annotations\.csv .* clips/<youtube_id>_.*\.npz .* '
                                      + os.path.join(data_dir, 'downloads', 'manual')):
    pipeline.prepare('kinetics_files/k700', data_dir)
  manual, clips = write_manual_dir(data_dir, np.random.default_rng(0))
  builder = pipeline.prepare('kinetics_files/k700', data_dir)
  # The clip of 'gone' is absent: skipped. Classes: the sorted labels of the CSV.
  assert builder.info.splits['train'].num_examples == 2
  assert builder.info.splits['validation'].num_examples == 1
  assert builder.info.metadata['class_names'] == ['abseiling', 'yoga', 'zumba']
  source = builder.as_data_source(split='train')
  for i, (name, label) in enumerate((('abc_000010_000020', 2), ('-x_1_000000_000010', 0))):
    ex = source[i]
    assert ex['clip'].decode() == name and ex['label'] == label
    np.testing.assert_array_equal(ex['video'], clips[name][0][:16])
    np.testing.assert_array_equal(ex['audio'], clips[name][1][:30720])


def test_a_malformed_clip_is_named_in_one_sentence(tmp_path):
  manual, _ = write_manual_dir(str(tmp_path), np.random.default_rng(1))
  np.savez(os.path.join(manual, 'clips', 'v1_000001_000011.npz'),
           video=np.zeros((16, 112, 112, 3), np.uint8), audio=np.zeros(30720, np.float32))
  with pytest.raises(UserError, match=r'v1_000001_000011\.npz has video uint8 \[16, 112, 112, '
                                      r'3\].*needs uint8 \[>=16, 224, 224, 3\]'):
    pipeline.prepare('kinetics_files/k700', str(tmp_path))


# ------------------------------------------------------------------------------------------
# The configs, and a short run through the trainer evaluated again from its checkpoint.
# ------------------------------------------------------------------------------------------

def test_configs_use_the_released_architecture_and_validate(data_dir):
  full = kinetics_autoencoding.get_config()
  assert full.model.encoder.num_latents == 784 and full.model.encoder.num_latent_channels == 512
  assert full.model.modalities.label.mask_prob == 1.0
  assert tuple(full.model.modalities.image.decoder.output_index_dims) == (16, 224, 224)
  validate_config(full)
  # The full model builds (abstractly) for the clips kinetics_files/k700 stores.
  # The released checkpoint's 79.5 MB of float32.
  assert abstract_run(full, released.INPUT_SHAPE).model.num_params == 19_858_855
  assert Run.create(runlocal(kinetics_autoencoding, data_dir)).data_spec.input_shape == {
      'image': (4, 16, 16, 3), 'audio': (256, 1), 'label': (4,)}
  bad = runlocal(kinetics_autoencoding, data_dir)
  bad.model.preprocessor.name = 'generic'
  with pytest.raises(UserError, match='needs a multimodal model'):
    tasks.get_task(bad).check_config(bad)


def test_runlocal_overfits_a_batch_and_its_checkpoint_evaluates_to_the_same_metrics(
    data_dir, tmp_path):
  # One fixed batch of 8 clips (the decoded points are still drawn at random each step).
  config = runlocal(kinetics_autoencoding, data_dir, **fixed_batch(8, 10))
  workdir = str(tmp_path / 'run')
  final = trainer.train_and_evaluate(config, workdir)
  assert_loss_falls(workdir)
  assert final['num_examples'] == 24  # 24 test clips in batches of 16: 8 padding clips
  for key in ('loss', 'accuracy', 'video_psnr', 'audio_psnr', 'label_ce'):
    assert math.isfinite(final[key]), (key, final)
  # Ten steps leave the decoder far from the clips: PSNRs of a few dB, not tens.
  assert 0 < final['video_psnr'] < 20 and 0 < final['audio_psnr'] < 30
  again = evaluator.evaluate(config, workdir)
  assert again['step'] == config.train.num_steps
  for key in ('loss', 'accuracy', 'video_psnr', 'audio_psnr', 'num_examples'):
    assert again[key] == pytest.approx(final[key], rel=1e-5), key
