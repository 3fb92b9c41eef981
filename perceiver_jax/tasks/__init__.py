"""Training objectives by name (`config.task.name`): data mapping, loss and metrics per task.

  causal_lm        packed byte corpora; next-byte prediction at the latents, bits per byte
                   (causal_lm.py: Perceiver AR)
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

A config names its task in one section, `config.task = task_config('mlm', mask_prob=0.2)`:
the name plus every constructor argument of that task but those taken from config.model
(Task.settings(), defaults filled in), so each is overridable as --config.task.mask_prob=0.3.
`get_task(config)` builds TASKS[name](**settings, **model_kwargs(config.model));
perceiver_jax/tasks/base.py defines the interface the pipeline, steps, trainer and
evaluator go through.
"""

from __future__ import annotations

import difflib

import ml_collections

from perceiver_jax.errors import UserError
from perceiver_jax.tasks.autoencoding import MultimodalAutoencodingTask
from perceiver_jax.tasks.base import CLASS_LABEL, Task
from perceiver_jax.tasks.causal_lm import CausalLmTask
from perceiver_jax.tasks.classification import (ClassificationTask, classification_loss,
                                                summarize)
from perceiver_jax.tasks.flow import FlowTask
from perceiver_jax.tasks.image_classification import ImageClassificationTask
from perceiver_jax.tasks.mlm import MlmTask
from perceiver_jax.tasks.multilabel import MultilabelTask
from perceiver_jax.tasks.text_classification import TextClassificationTask

TASKS = {'causal_lm': CausalLmTask, 'classification': ClassificationTask, 'flow': FlowTask,
         'image_classification': ImageClassificationTask, 'mlm': MlmTask,
         'multilabel': MultilabelTask,
         'multimodal_autoencoding': MultimodalAutoencodingTask,
         'text_classification': TextClassificationTask}


def _task_class(name) -> type[Task]:
  if name not in TASKS:
    close = difflib.get_close_matches(str(name), list(TASKS), n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise UserError(f'config.task.name={name!r} is unknown; use one of '
                    f'{", ".join(repr(t) for t in TASKS)}{hint}.')
  return TASKS[name]


def _check_settings(name: str, given, cls: type[Task]) -> None:
  """One sentence for a field that is not a constructor setting of task `name`."""
  settings = cls.settings()
  for key in given:
    if key in settings:
      continue
    owners = [t for t, c in TASKS.items() if key in c.settings()]
    hint = (f' ({key} belongs to {", ".join(map(repr, owners))}: to switch tasks, set '
            'config.task = tasks.task_config(NAME) in the config file)' if owners else '')
    raise UserError(f'config.task.{key} is not a setting of task {name!r}; its settings are '
                    f'{", ".join(settings) or "none"}{hint}.')


def task_config(name: str = 'classification', **overrides) -> ml_collections.ConfigDict:
  """The whole config.task section of task `name`: every setting, `overrides` replacing
  their defaults."""
  cls = _task_class(name)
  _check_settings(name, overrides, cls)
  return ml_collections.ConfigDict(dict(name=name, **{**cls.settings(), **overrides}))


def get_task(config) -> Task:
  """The Task of config.task: TASKS[name](**its settings, **values from config.model)."""
  section = config.get('task')
  if isinstance(section, str):  # the pre-section form, e.g. from an older config file
    raise UserError(f'config.task={section!r} names a task, but config.task is now a section; '
                    f"set config.task = tasks.task_config({section!r}) in the config file "
                    f'(on the command line: --config.task.name={section}).')
  if section is None or 'name' not in section:
    raise UserError('config.task has no name; set config.task = tasks.task_config(NAME) with '
                    f'NAME one of {", ".join(repr(t) for t in TASKS)}.')
  settings = {k: v for k, v in section.items() if k != 'name'}
  cls = _task_class(section['name'])
  _check_settings(section['name'], settings, cls)
  return cls(**settings, **cls.model_kwargs(config.model))


def default_task() -> Task:
  """The task of callers that name none (plain classification, no label smoothing)."""
  return ClassificationTask()


__all__ = ['CLASS_LABEL', 'TASKS', 'ClassificationTask', 'MlmTask', 'Task', 'classification_loss',
           'default_task', 'get_task', 'summarize', 'task_config']
