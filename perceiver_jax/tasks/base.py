"""The Task interface: everything a training objective needs from the data and the model.

A task owns
  * which stored features it reads (checked per example) and how a stored example becomes a
    model example {'inputs', <targets>...}: grain transforms for every split, for training
    (after shuffling; random ones seeded from the run seed) and for evaluation (fixed);
  * the padding example that fills the last eval batch (per-example 'mask' 0);
  * how a batch feeds the model (model_inputs);
  * the loss and summed metrics from model outputs and a batch, exact over eval padding,
    and how accumulated sums become the reported metrics;
  * prediction: how one raw input (an image array, a text, two frames) becomes a model
    example through the same transforms evaluation applies, and how model outputs become
    what `perceiver_jax.predict` returns.
The pipeline, the step functions, the trainer and the evaluator call only this interface.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from perceiver_jax.errors import UserError

Transform = Any  # a grain.transforms.Map | RandomMap | MapWithIndex
Batch = Mapping[str, jax.Array]

# In Task.features: a feature checked as an integer class label rather than by shape/dtype.
CLASS_LABEL = 'class_label'


class Task:
  """Base class; see the module docstring. Subclasses set `name` and override the rest."""

  name: str = ''
  input_dtype: Any = np.float32  # dtype of batch['inputs'] (abstract shapes, model summary)
  # Keys of eval loss_sums holding per-example rows [batch, ...] that the evaluation loop
  # concatenates over batches instead of adding (metrics that are not sums, e.g. mAP).
  per_example_keys: tuple[str, ...] = ()

  # Constructor arguments that come from config.model (e.g. num_classes), not config.task:
  # one source of truth for what the model is.
  model_args: tuple[str, ...] = ()
  # Settings that shape training alone (augmentation, loss smoothing): an evaluation under
  # other values is the same evaluation (config_changes.py lets eval.py change them).
  training_only: tuple[str, ...] = ()

  @classmethod
  def settings(cls) -> dict[str, Any]:
    """{constructor argument: default} of the task's config.task section (no model_args)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params
            if p.name != 'self' and p.name not in cls.model_args
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

  @classmethod
  def model_kwargs(cls, model_config) -> dict[str, Any]:
    """The model_args' values from config.model."""
    return {}

  # -- config -------------------------------------------------------------------------------
  def check_config(self, config) -> None:
    """Raises UserError (one sentence) for task-specific config fields that are wrong."""

  # -- data -----------------------------------------------------------------------------------
  def features(self, builder) -> dict[str, Any]:
    """{stored feature: (shape, numpy dtype or 'int' for any integer or 'text' for a
    string) or CLASS_LABEL}, in the order they are checked."""
    raise NotImplementedError

  def input_shape(self, builder) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    """Per-example shape of the model's inputs (no batch axis); {modality: shape} for a
    multimodal model, whose model_inputs give {'inputs': {modality: array}}."""
    raise NotImplementedError

  def num_classes(self, builder) -> int:
    """Classes (or vocabulary entries) the model scores."""
    raise NotImplementedError

  def prepare(self, data_config, builder) -> Sequence[Transform]:
    """Deterministic per-example transforms of every split, applied before shuffling."""
    return ()

  def train_transforms(self, data_config) -> Sequence[Transform]:
    """Training-only transforms, after shuffling; RandomMaps are seeded by the pipeline."""
    return ()

  def eval_transforms(self, data_config) -> Sequence[Transform]:
    """Evaluation-only transforms; any randomness is fixed, so scores compare across runs."""
    return ()

  def batch_transforms(self, data_config) -> Sequence[Transform]:
    """Training-only transforms of each process-local batch (e.g. MixUp), after batching;
    RandomMaps are seeded by the pipeline."""
    return ()

  def padding_example(self, example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An example that fills the last eval batch: zeros like `example`, 'mask' 0."""
    pad = {k: np.zeros_like(v) for k, v in example.items()}
    pad['mask'] = np.float32(0.0)
    return pad

  # -- model and loss --------------------------------------------------------------------------
  def model_inputs(self, batch: Batch) -> dict[str, jax.Array]:
    """Keyword arguments of the model call for `batch` (at least 'inputs')."""
    return {'inputs': batch['inputs']}

  def loss_sums(self, outputs, batch: Batch, *, train: bool) -> dict[str, jax.Array]:
    """Summed loss and metrics of one batch: 'loss' (summed over what the loss averages)
    plus whatever summarize() needs. Eval batches carry 'mask' [batch] (0 = padding),
    whose examples add nothing."""
    raise NotImplementedError

  def normaliser(self, batch: Batch):
    """What the summed training loss of the whole batch is divided by (a mean)."""
    raise NotImplementedError

  def train_metrics(self, sums: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Metrics of one training step from its sums (traced: jnp arithmetic only)."""
    raise NotImplementedError

  def summarize(self, sums: Mapping[str, Any]) -> dict[str, float]:
    """Reported metrics from sums accumulated over many batches (host floats)."""
    raise NotImplementedError

  # -- prediction -------------------------------------------------------------------------------
  def predict_example(self, data_config, raw, input_shape) -> dict[str, Any]:
    """One raw input as a user holds it -> a model example {'inputs': ...} (no batch axis),
    made by the transforms evaluation applies; UserError (one sentence) when it does not
    fit `input_shape`, the model's per-example input shape."""
    raise UserError(f'The {self.name!r} task has no predict path; predict supports '
                    'classification, image_classification, text_classification, mlm, flow, '
                    'multilabel and multimodal_autoencoding models.')

  def predictions(self, outputs):
    """Model outputs [batch, ...] -> what predict returns (traced, jnp only: it is also
    the exported function's tail), e.g. class probabilities."""
    return outputs

  def present(self, predictions, examples: Mapping[str, np.ndarray]):
    """Host: predictions (numpy, [batch, ...]) and the batch's examples -> predict's
    result, e.g. filled texts."""
    return predictions


def check_shape(what: str, shape, input_shape) -> None:
  """UserError unless `shape` equals the model's per-example `input_shape`."""
  if tuple(shape) != tuple(input_shape):
    raise UserError(f'{what} has shape {tuple(shape)}, but the model takes inputs of shape '
                    f'{tuple(input_shape)}; pass inputs of that shape, one per example.')
