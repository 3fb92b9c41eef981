"""Training objectives by name (`config.task`): data mapping, loss and metrics per task.

  classification   (inputs, label) datasets; cross-entropy, accuracy (classification.py)
  mlm              byte corpora; whole-word masking, masked-byte accuracy, bits per byte
                   (mlm.py)

`get_task(config)` returns the task of a config; perceiver_jax/tasks/base.py defines the
interface the pipeline, steps, trainer and evaluator go through.
"""

from __future__ import annotations

from perceiver_jax.errors import UserError
from perceiver_jax.tasks.base import CLASS_LABEL, Task
from perceiver_jax.tasks.classification import (ClassificationTask, classification_loss,
                                                summarize)
from perceiver_jax.tasks.mlm import MlmTask

TASKS = {'classification': ClassificationTask, 'mlm': MlmTask}


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
