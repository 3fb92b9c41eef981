"""MixUp for the generic classification task (config.task.mixup_alpha): whole examples are
mixed pairwise, so it suits sets and permuted sequences (shuffled MNIST-1D) as well as images.
"""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from perceiver_jax import tasks
from perceiver_jax.data import pipeline
from perceiver_jax.errors import UserError
from perceiver_jax.tasks.classification import ClassificationTask
from perceiver_jax.tasks.text_classification import TextClassificationTask


def test_mixup_mixes_whole_examples_and_their_labels_alike():
  task = ClassificationTask(mixup_alpha=0.4, num_classes=10)
  (op,) = task.batch_transforms(ml_collections.ConfigDict())
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.normal(size=(6, 40, 1)).astype(np.float32),
           'label': np.array([0, 1, 2, 3, 4, 5], np.int32)}
  out = op.random_map(dict(batch), np.random.default_rng(1))
  again = op.random_map(dict(batch), np.random.default_rng(1))
  np.testing.assert_array_equal(out['inputs'], again['inputs'])  # deterministic in the rng
  np.testing.assert_array_equal(out['label'], batch['label'])  # accuracy keeps its own class
  soft = out['soft_label']
  assert soft.shape == (6, 10) and soft.dtype == np.float32
  np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
  # Example i is w * x_i + (1 - w) * x_{i-1}, with w its own label's weight.
  w = soft[np.arange(6), batch['label']]
  expected = (w[:, None, None] * batch['inputs']
              + (1 - w[:, None, None]) * np.roll(batch['inputs'], 1, axis=0))
  np.testing.assert_allclose(out['inputs'], expected, rtol=1e-5, atol=1e-6)
  assert ClassificationTask().batch_transforms(ml_collections.ConfigDict()) == ()  # off


def test_mixup_soft_labels_drive_the_training_loss_only():
  task = ClassificationTask(mixup_alpha=0.2, num_classes=3)
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
  batch = {'label': jnp.array([0, 1]), 'soft_label': jnp.array([[0.5, 0.5, 0], [0, 1.0, 0]])}
  log_p = np.asarray(logits - jnp.log(jnp.exp(logits).sum(-1, keepdims=True)))
  train = task.loss_sums(logits, batch, train=True)
  np.testing.assert_allclose(train['loss'], -(0.5 * log_p[0, 0] + 0.5 * log_p[0, 1])
                             - log_p[1, 1], rtol=1e-5)
  assert float(train['correct']) == 2.0  # accuracy against 'label'
  evaluation = task.loss_sums(logits, batch, train=False)  # the hard labels
  np.testing.assert_allclose(evaluation['loss'], -log_p[0, 0] - log_p[1, 1], rtol=1e-5)


def test_mixup_alpha_is_checked_and_reaches_the_task():
  config = ml_collections.ConfigDict(dict(
      task=tasks.task_config('classification', mixup_alpha=0.3),
      model=dict(num_classes=10)))
  task = tasks.get_task(config)
  assert task.mixup_alpha == 0.3
  task.check_config(config)
  with pytest.raises(UserError, match='mixup_alpha=-1'):
    ClassificationTask(mixup_alpha=-1, num_classes=10).check_config(config)
  with pytest.raises(UserError, match='needs config.model.num_classes'):
    ClassificationTask(mixup_alpha=0.2).check_config(config)
  with pytest.raises(UserError, match='cannot mix byte tokens'):
    TextClassificationTask(mixup_alpha=0.2, num_classes=3).check_config(config)


def test_mixup_batches_from_the_mnist1d_pipeline(tmp_path):
  data_dir = str(tmp_path)
  pipeline.prepare('mnist1d/shuffled', data_dir)
  data = ml_collections.ConfigDict(dict(
      name='mnist1d/shuffled', data_dir=data_dir, train_split='train', eval_split='test',
      normalize=(0.0, 1.0), augment='scale_noise'))
  task = ClassificationTask(mixup_alpha=0.2, num_classes=10)
  batch = next(pipeline.make_train_iterator(data, global_batch_size=8, seed=0, task=task))
  assert batch['inputs'].shape == (8, 40, 1) and batch['soft_label'].shape == (8, 10)
  np.testing.assert_allclose(batch['soft_label'].sum(-1), 1.0, rtol=1e-6)
