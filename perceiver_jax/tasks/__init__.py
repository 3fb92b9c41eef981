"""Training objectives by name (`config.task`): data mapping, loss and metrics per task.

  classification   (inputs, label) datasets; cross-entropy, accuracy (classification.py)
  flow             frame pairs -> optical flow; end-point error (flow.py)
  image_classification  imagenet2012-style images; the Perceiver ImageNet recipe (crops,
                   RandAugment, MixUp/CutMix), top-1/top-5 (image_classification.py)
  mlm              byte corpora; whole-word masking, masked-byte accuracy, bits per byte
                   (mlm.py)
  multilabel       multi-hot labels (AudioSet-style); sigmoid cross-entropy, mAP (multilabel.py)
  multimodal_autoencoding  video + audio + label reconstruction; PSNR, top-1 (autoencoding.py)
  text_classification  (text, label) datasets as UTF-8 bytes; cross-entropy, accuracy
                   (text_classification.py)

`get_task(config)` returns the task of a config; perceiver_jax/tasks/base.py defines the
interface the pipeline, steps, trainer and evaluator go through.
"""

from __future__ import annotations

from perceiver_jax.errors import UserError
from perceiver_jax.tasks.autoencoding import MultimodalAutoencodingTask
from perceiver_jax.tasks.base import CLASS_LABEL, Task
from perceiver_jax.tasks.classification import (ClassificationTask, classification_loss,
                                                summarize)
from perceiver_jax.tasks.flow import FlowTask
from perceiver_jax.tasks.image_classification import ImageClassificationTask
from perceiver_jax.tasks.mlm import MlmTask
from perceiver_jax.tasks.multilabel import MultilabelTask
from perceiver_jax.tasks.text_classification import TextClassificationTask

TASKS = {'classification': ClassificationTask, 'flow': FlowTask,
         'image_classification': ImageClassificationTask, 'mlm': MlmTask,
         'multilabel': MultilabelTask,
         'multimodal_autoencoding': MultimodalAutoencodingTask,
         'text_classification': TextClassificationTask}


def get_task(config) -> Task:
  """The Task of `config.task` (default 'classification'), built from the config."""
  name = config.get('task', 'classification')
  if name not in TASKS:
    raise UserError(f'config.task={name!r} is unknown; use one of '
                    f'{", ".join(repr(t) for t in TASKS)}.')
  return TASKS[name].from_config(config)


def default_task() -> Task:
  """The task of callers that name none (plain classification, no label smoothing)."""
  return ClassificationTask()


__all__ = ['CLASS_LABEL', 'TASKS', 'ClassificationTask', 'MlmTask', 'Task', 'classification_loss',
           'default_task', 'get_task', 'summarize']
