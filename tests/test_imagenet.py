"""ImageNet classification: top-k and soft-label loss on hand-made numbers, the batch-level
MixUp/CutMix hook, the photo_crops builder, and every runlocal variant trained."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import _imagenet, imagenet_perceiver, imagenet_perceiver_io
from perceiver_jax import evaluator, tasks, trainer
from perceiver_jax.data import pipeline
from perceiver_jax.data.builders import photo_crops
from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.metrics_log import read
from perceiver_jax.tasks.classification import classification_loss
from perceiver_jax.tasks.image_classification import (ImageClassificationTask,
                                                      image_classification_sums, topk_correct)
from perceiver_jax.run import Run
from perceiver_jax.validate import validate_config
from tests.helpers import abstract_run, assert_loss_falls, fixed_batch, prepared_data_dir, runlocal


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory, 'photo_crops')


# ------------------------------------------------------------------------------------------
# Metrics and loss on hand-made logits.
# ------------------------------------------------------------------------------------------

def test_top1_top5_on_hand_made_logits_exact_over_padding():
  # Class scores 0..6 (class 6 highest). Labels rank 1st, 5th, 6th, and a tie with the 5th.
  logits = np.tile(np.arange(7, dtype=np.float32), (5, 1))
  logits[3, 1] = 2.0  # class 1 ties with class 2, the 5th largest
  logits[4] = np.nan  # a padding example: must add nothing
  labels = np.array([6, 2, 1, 1, 0], np.int32)
  np.testing.assert_array_equal(topk_correct(jnp.asarray(logits[:4]), labels[:4], 5),
                                [1, 1, 0, 1])
  np.testing.assert_array_equal(topk_correct(jnp.asarray(logits[:4]), labels[:4], 1),
                                [1, 0, 0, 0])
  mask = np.array([1, 1, 1, 1, 0], np.float32)
  targets = np.eye(7, dtype=np.float32)[labels]
  sums = image_classification_sums(jnp.asarray(logits), labels, targets, mask)
  sums = {k: float(v) for k, v in sums.items()}
  assert sums['count'] == 4 and sums['correct'] == 1 and sums['correct_top5'] == 3
  logp = logits[:4] - np.log(np.exp(logits[:4]).sum(-1, keepdims=True))
  assert sums['loss'] == pytest.approx(-logp[np.arange(4), labels[:4]].sum(), rel=1e-5)
  report = ImageClassificationTask(num_classes=7).summarize(sums)
  assert report == pytest.approx({'loss': sums['loss'] / 4, 'accuracy': 0.25,
                                  'top5_accuracy': 0.75, 'num_examples': 4})


def test_soft_label_loss_is_hard_cross_entropy_unmixed_and_linear_when_mixed():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 10)).astype(np.float32))
  labels = rng.integers(0, 10, 6).astype(np.int32)
  task = ImageClassificationTask(num_classes=10, label_smoothing=0.1)
  one_hot = np.eye(10, dtype=np.float32)[labels]
  hard = task.loss_sums(logits, {'label': labels}, train=True)
  soft = task.loss_sums(logits, {'label': labels, 'soft_label': one_hot}, train=True)
  want, _ = classification_loss(logits, labels, label_smoothing=0.1)
  for sums in (hard, soft):
    assert float(sums['loss']) / 6 == pytest.approx(float(want), rel=1e-6)
  # Smoothing is for training only.
  plain, _ = classification_loss(logits, labels)
  assert float(task.loss_sums(logits, {'label': labels}, train=False)['loss']) / 6 == (
      pytest.approx(float(plain), rel=1e-6))
  # A 0.3/0.7 mix costs 0.3 x CE(own) + 0.7 x CE(partner); accuracy is against the own label.
  partner = np.roll(labels, 1)
  mixed = 0.3 * one_hot + 0.7 * np.eye(10, dtype=np.float32)[partner]
  sums = task.loss_sums(logits, {'label': labels, 'soft_label': mixed}, train=False)
  logp = np.asarray(logits) - np.log(np.exp(np.asarray(logits)).sum(-1, keepdims=True))
  by_hand = -(0.3 * logp[np.arange(6), labels] + 0.7 * logp[np.arange(6), partner]).sum()
  assert float(sums['loss']) == pytest.approx(by_hand, rel=1e-5)
  assert float(sums['correct']) == (np.argmax(np.asarray(logits), -1) == labels).sum()


# ------------------------------------------------------------------------------------------
# Data: the photo_crops builder and the batch-level MixUp/CutMix hook.
# ------------------------------------------------------------------------------------------

def test_photo_crops_has_imagenet2012_features(data_dir):
  builder = pipeline.prepare('photo_crops', data_dir)
  imagenet = tfds.builder('imagenet2012', data_dir=data_dir)  # metadata only, not prepared
  ours, theirs = builder.info.features, imagenet.info.features
  assert sorted(ours.keys()) == sorted(theirs.keys()) == ['file_name', 'image', 'label']
  for key in ours.keys():
    assert type(ours[key]) is type(theirs[key]), key
    assert ours[key].shape == theirs[key].shape, key
    assert ours[key].np_dtype == theirs[key].np_dtype, key
  assert ours['image'].encoding_format == theirs['image'].encoding_format == 'jpeg'
  assert builder.info.supervised_keys == imagenet.info.supervised_keys == ('image', 'label')
  assert ours['label'].names == list(photo_crops.CLASSES)
  assert {s: builder.info.splits[s].num_examples for s in ('train', 'validation')} == {
      'train': 400, 'validation': 100}
  # Both datasets pass the task's feature check (same config reads both).
  task = ImageClassificationTask(num_classes=1000)
  assert task.features(imagenet) == {'image': ((None, None, 3), np.uint8),
                                     'label': tasks.CLASS_LABEL}
  source = builder.as_data_source('validation')
  shapes = set()
  for i in (0, 1, 13, 99):
    example = source[i]
    image = example['image']
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert 48 <= image.shape[0] <= 192 and image.shape[1] >= 48
    assert image.std() > 5  # real photograph content, not a flat fill
    shapes.add(image.shape)
    assert int(example['label']) == i % 10
    assert example['file_name'].decode() == f'{photo_crops.CLASSES[i % 10]}_{i:05d}.JPEG'
  assert len(shapes) == 4  # variable sizes, like ImageNet's
  # Deterministic: example 13 is regenerated exactly (up to JPEG coding) from its seed.
  rng = np.random.default_rng([photo_crops.SEED, 1, 13])
  photo = photo_crops.region(photo_crops.load_photo(photo_crops.CLASSES[3]), 'validation')
  crop = photo_crops.random_crop(photo, rng)
  stored = source[13]['image']
  assert stored.shape == crop.shape
  assert np.abs(stored.astype(float) - crop).mean() < 4.0


def test_mixup_batches_are_deterministic_resumable_and_split_by_process(data_dir):
  config = runlocal(imagenet_perceiver_io, data_dir)
  task = tasks.get_task(config)
  assert tasks.ClassificationTask().batch_transforms(config.data) == ()

  def make(seed=0, batch=8, process_index=0, process_count=1):
    return pipeline.make_train_iterator(config.data, global_batch_size=batch, seed=seed,
                                        process_index=process_index,
                                        process_count=process_count, task=task)
  it = make()
  first = [next(it) for _ in range(4)]
  state = it.get_state()
  rest = [next(it) for _ in range(2)]
  again = make()
  again.set_state(state)
  for a, b in zip(rest, [next(again) for _ in range(2)]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  batch = first[0]
  assert batch['inputs'].shape == (8, 32, 32, 3) and batch['inputs'].dtype == np.float32
  assert batch['soft_label'].shape == (8, 10)
  np.testing.assert_allclose(batch['soft_label'].sum(1), 1.0, rtol=1e-6)
  own = batch['soft_label'][np.arange(8), batch['label']]
  assert (own < 1.0).any()  # mixed, and each example keeps a share of its own label
  assert not np.array_equal(next(make(seed=1))['inputs'], batch['inputs'])
  # Two processes (local batch 8 of a global 16) read chunks 2k and 2k+1 of the
  # single-process stream of 8-example batches, MixUp draws included.
  for p in range(2):
    two = make(batch=16, process_index=p, process_count=2)
    for k in range(2):
      local = next(two)
      for key in local:
        np.testing.assert_array_equal(local[key], first[2 * k + p][key], err_msg=key)
  # Disabled: no soft labels (the loss one-hot encodes 'label').
  off = runlocal(imagenet_perceiver_io, data_dir, **{'task.mixup_alpha': 0.0,
                                                     'task.cutmix_alpha': 0.0})
  plain = next(pipeline.make_train_iterator(off.data, global_batch_size=8, seed=0,
                                            task=tasks.get_task(off)))
  assert set(plain) == {'inputs', 'label'}


def test_eval_is_center_crop_and_covers_every_example_once(data_dir):
  config = runlocal(imagenet_perceiver, data_dir)
  task = tasks.get_task(config)
  batches = list(pipeline.make_eval_iterator(config.data, 'validation', global_batch_size=64,
                                             task=task))
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 100 and mask.shape == (128,)
  labels = np.concatenate([b['label'] for b in batches])[:100]
  np.testing.assert_array_equal(labels, np.arange(100) % 10)
  # Example 0 by hand: 7/8 of the shorter side, centred, resized, normalised.
  from perceiver_jax.data import image_augment
  image = pipeline.prepare('photo_crops', data_dir).as_data_source('validation')[0]['image']
  want = (image_augment.center_crop(image, 32, 32 * 32 / 224).astype(np.float32)
          - np.float32(image_augment.MEAN_RGB)) / np.float32(image_augment.STDDEV_RGB)
  np.testing.assert_allclose(batches[0]['inputs'][0], want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Configs: the recipe's numbers, validation, one-sentence errors.
# ------------------------------------------------------------------------------------------

def test_configs_carry_the_recipe_and_build(data_dir):
  config = imagenet_perceiver.get_config()
  validate_config(config)
  assert config.train.num_steps == 1_281_167 * 110 // 1024 == 137_625
  assert config.optimizer.learning_rate == pytest.approx(5e-4 * 1024 / 256)
  assert (config.optimizer.name, config.optimizer.schedule) == ('lamb', 'constant_cosine')
  assert config.optimizer.decay_start_fraction == 0.5 and config.optimizer.clip_norm == 10.0
  assert config.optimizer.weight_decay == 0.1 and config.task.label_smoothing == 0.1
  enc = config.model.encoder
  assert enc.cross_attend_every_block and enc.share_cross_attend_weights
  assert (enc.num_blocks, enc.num_self_attends_per_block) == (8, 6)
  assert (enc.num_latents, enc.num_latent_channels) == (512, 1024)
  assert config.model.preprocessor.position_encoding.num_bands == 64
  # Built abstractly: 44.9M parameters, the size reported for the Perceiver (FF) on ImageNet.
  assert round(abstract_run(config, (224, 224, 3)).model.num_params / 1e6, 1) == 44.9
  small = imagenet_perceiver_io.get_config('pos=conv,batch=256')
  assert small.optimizer.learning_rate == pytest.approx(5e-4)
  assert small.train.num_steps == 1_281_167 * 110 // 256
  assert small.model.preprocessor.prep_type == 'conv'
  assert imagenet_perceiver_io.get_config('pos=learned').model.preprocessor.prep_type == (
      'conv1x1')
  with pytest.raises(ValueError, match='Unknown imagenet_perceiver_io variant pos'):
    imagenet_perceiver_io.get_config('pos=patches')
  for arg in ('runlocal', 'runlocal,pos=learned', 'runlocal,pos=conv'):
    assert Run.create(runlocal(imagenet_perceiver_io, data_dir, arg)).data_spec.input_shape == (
        _imagenet.RUNLOCAL_IMAGE_SIZE, _imagenet.RUNLOCAL_IMAGE_SIZE, 3)


def test_bad_settings_are_one_sentence(data_dir):
  config = lambda **o: runlocal(imagenet_perceiver_io, data_dir, **o)
  with pytest.raises(UserError, match=r'config.task.image_size=0 is invalid'):
    validate_config(config(**{'task.image_size': 0}))
  with pytest.raises(UserError, match=r'config.task.randaugment_magnitude=11.0 is out of range'):
    validate_config(config(**{'task.randaugment_magnitude': 11.0}))
  with pytest.raises(UserError, match=r'config.task.mixup_alpha=-1.0 is invalid'):
    validate_config(config(**{'task.mixup_alpha': -1.0}))
  with pytest.raises(DatasetError, match=r"Dataset 'photo_crops' has 10 classes but "
                                                  r"config.model.num_classes=1000; set"):
    Run.create(config(**{'model.num_classes': 1000}))
  pipeline.prepare('digits', data_dir)
  with pytest.raises(DatasetError, match=r"Dataset 'digits' has no \(image uint8"):
    Run.create(config(**{'data.name': 'digits', 'data.eval_split': 'test'}))
  full = imagenet_perceiver.get_config()
  full.data.data_dir = data_dir
  with pytest.raises(DatasetError, match=r"Dataset 'imagenet2012' is not prepared in "
                                         r".*copy its folder into this data_dir, see "
                                         r"docs/datasets\.md\.$"):
    Run.create(full)


# ------------------------------------------------------------------------------------------
# Every runlocal variant through the trainer; the evaluator on another mesh.
# ------------------------------------------------------------------------------------------

# One fixed batch of 16 crops without the stochastic MixUp, CutMix and RandAugment (random
# crops and flips stay), at a learning rate that overfits it in 12 steps.
OVERFIT = {**fixed_batch(16, 12), 'task.mixup_alpha': 0.0, 'task.cutmix_alpha': 0.0,
           'task.randaugment_layers': 0, 'optimizer.learning_rate': 1e-2}


@pytest.mark.parametrize('module,arg', [
    (imagenet_perceiver, 'runlocal'), (imagenet_perceiver_io, 'runlocal'),
    (imagenet_perceiver_io, 'runlocal,pos=learned'), (imagenet_perceiver_io, 'runlocal,pos=conv')])
def test_runlocal_overfits_a_batch_and_evaluates(module, arg, data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  final = trainer.train_and_evaluate(runlocal(module, data_dir, arg, **OVERFIT), workdir)
  records = read(os.path.join(workdir, 'metrics.jsonl'))
  train = [r for r in records if r.get('split') == 'train']
  assert [r['step'] for r in train] == list(range(1, 13))
  for record in train + [final]:
    for key in ('loss', 'accuracy', 'top5_accuracy'):
      assert math.isfinite(record[key]), (key, record)
  # Near-uniform over 10 classes at the start: loss about ln 10 = 2.30.
  assert 1.5 < train[0]['loss'] < 3.5
  assert_loss_falls(workdir)
  assert final['num_examples'] == 100
  assert 0.0 <= final['accuracy'] <= final['top5_accuracy'] <= 1.0
  if arg != 'runlocal' or module is imagenet_perceiver:
    return
  # The evaluator on another mesh (data 4 x fsdp 2: parameters sharded, unlike training's
  # pure data parallelism) restores the checkpoint and reproduces the final metrics.
  result = evaluator.evaluate(runlocal(module, data_dir, **{'mesh.data': 4, 'mesh.fsdp': 2}),
                              workdir)
  with open(os.path.join(workdir, 'eval_12.json')) as f:
    assert json.load(f)['top5_accuracy'] == result['top5_accuracy']
  assert result['num_examples'] == final['num_examples']
  for key in ('loss', 'accuracy', 'top5_accuracy'):
    assert result[key] == pytest.approx(final[key], rel=1e-5, abs=1e-6), key
