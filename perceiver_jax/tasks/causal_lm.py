"""Next-byte prediction over long contexts (Perceiver AR's objective).

Data: a byte corpus with features 'bytes' uint8 [window] and 'length' int32 [] whose
windows are full (e.g. python_stdlib's 'packed' configs: documents concatenated, then cut).
An example is context + 1 consecutive bytes of a stored window: training takes them at a
uniformly random offset, drawn afresh every epoch from the run seed; evaluation takes each
window's last context + 1 bytes, so every context length predicts the same bytes.

Examples: inputs int32 [context], targets int32 [num_latents] (the byte after each latent
position). The model returns logits [batch, num_latents, 256]. Loss: mean cross-entropy
over the targets; metrics: next-byte accuracy and bits per byte, exact over eval padding.
"""

from __future__ import annotations

import dataclasses

import grain
import jax.numpy as jnp
import numpy as np

from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.tasks.base import Task
from perceiver_jax.tasks.mlm import mlm_metrics, mlm_summary, mlm_sums

BYTE_VOCAB_SIZE = 256


def _example(window: np.ndarray, start: int, context: int, num_latents: int) -> dict:
  tokens = np.asarray(window[start:start + context + 1], np.int32)
  return {'inputs': tokens[:context], 'targets': tokens[context + 1 - num_latents:]}


@dataclasses.dataclass(frozen=True)
class RandomCrop(grain.transforms.RandomMap):
  """context + 1 bytes at a random offset of the window."""
  context: int
  num_latents: int

  def random_map(self, element, rng: np.random.Generator):
    window = element['bytes']
    start = int(rng.integers(0, window.shape[0] - self.context))
    return _example(window, start, self.context, self.num_latents)


@dataclasses.dataclass(frozen=True)
class LastCrop(grain.transforms.Map):
  """The window's last context + 1 bytes."""
  context: int
  num_latents: int

  def map(self, element):
    window = element['bytes']
    return _example(window, window.shape[0] - self.context - 1, self.context,
                    self.num_latents)


class CausalLmTask(Task):
  """The constructor arguments are config.task's fields; num_latents comes from
  config.model (the latents are the context's last positions)."""

  name = 'causal_lm'
  input_dtype = np.int32
  model_args = ('num_latents',)

  def __init__(self, context: int = 1024, num_latents: int = 256):
    self.context = int(context)
    self.num_latents = int(num_latents)

  @classmethod
  def model_kwargs(cls, model_config):
    return {'num_latents': model_config.num_latents}

  def check_config(self, config) -> None:
    if self.context < 1:
      raise UserError(f'config.task.context={self.context} must be a positive number of '
                      'bytes.')
    if not 1 <= self.num_latents <= self.context:
      raise UserError(f'config.model.num_latents={self.num_latents} is above the context '
                      f'(config.task.context={self.context}); use 1..{self.context}.')
    max_context = config.model.get('max_context')
    if max_context is not None and self.context > max_context:
      raise UserError(f'config.task.context={self.context} exceeds config.model.max_context='
                      f'{max_context}; raise max_context or shorten the context.')

  # -- data -----------------------------------------------------------------------------------
  def features(self, builder):
    feats = builder.info.features
    if not ('bytes' in feats and 'length' in feats and len(feats['bytes'].shape) == 1):
      raise DatasetError(
          f"Dataset '{builder.name}' has no 'bytes' [window] and 'length' features, so the "
          "causal_lm task cannot read it; use a packed byte corpus such as "
          "python_stdlib/packed.")
    window = feats['bytes'].shape[0]
    if window < self.context + 1:
      raise DatasetError(
          f"Dataset '{builder.name}' stores windows of {window} bytes, fewer than "
          f'config.task.context + 1 = {self.context + 1}; use a shorter context or a '
          'dataset with longer windows (python_stdlib/packed holds 16385).')
    return {'bytes': ((window,), np.dtype(feats['bytes'].np_dtype)), 'length': ((), 'int')}

  def input_shape(self, builder):
    self.features(builder)
    return (self.context,)

  def num_classes(self, builder):
    return BYTE_VOCAB_SIZE

  def train_transforms(self, data_config):
    return (RandomCrop(self.context, self.num_latents),)

  def eval_transforms(self, data_config):
    return (LastCrop(self.context, self.num_latents),)

  # -- model and loss --------------------------------------------------------------------------
  def loss_sums(self, outputs, batch, *, train):
    """outputs: logits [batch, num_latents, 256]."""
    targets = batch['targets']
    weights = jnp.ones(targets.shape, jnp.float32)
    if 'mask' in batch:  # eval: padding examples score nothing
      weights = weights * batch['mask'][:, None]
      examples = batch['mask'].sum()
    else:
      examples = jnp.asarray(targets.shape[0], jnp.float32)
    return {**mlm_sums(outputs, targets, weights), 'examples': examples}

  def normaliser(self, batch):
    return jnp.asarray(batch['targets'].size, jnp.float32)

  def train_metrics(self, sums):
    return mlm_metrics(sums)

  def summarize(self, sums):
    return mlm_summary(sums)
