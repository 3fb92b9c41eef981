"""Text classification on UTF-8 bytes: (text, label) datasets read by the byte Perceiver.

Data: one or more string features (`task.text_keys`; default the first supervised key)
and a class label (`task.label_key`; default the second), e.g. TFDS glue/sst2
('sentence', 'label'), glue/mnli ('premise', 'hypothesis'; 'label'), imdb_reviews
('text', 'label') or the embedded stdlib_docs ('text', 'label'). Each example becomes
  inputs int32 [seq_len]  the texts' UTF-8 bytes as perceiver_jax.tokenizer ids (byte + 6),
                          several texts joined by [SEP], cut to seq_len from the end of
                          the longest text first (never inside a character), [PAD] after
  label  int32 []
the same in training and evaluation (data/text_windows.encode_texts). The model sees
input_mask = inputs != PAD_ID and returns logits [batch, num_classes]; loss, accuracy and
label smoothing are ClassificationTask's, exact over eval padding.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np
import tensorflow_datasets as tfds

from perceiver_jax.data import text_windows
from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.tasks.base import CLASS_LABEL
from perceiver_jax.tasks.classification import ClassificationTask
from perceiver_jax.tokenizer import PAD_ID


@dataclasses.dataclass(frozen=True)
class EncodeTexts(grain.transforms.Map):
  """{text keys: UTF-8 bytes or str, label_key: int} -> {'inputs' int32 [seq_len],
  'label' int32 []}."""

  text_keys: tuple[str, ...]
  label_key: str
  seq_len: int

  def map(self, element):
    return {'inputs': text_windows.encode_texts([element[k] for k in self.text_keys],
                                                self.seq_len),
            'label': np.asarray(element[self.label_key], np.int32)}


class TextClassificationTask(ClassificationTask):
  """Byte-level text classification; settings are config.task fields (seq_len, text_keys,
  label_key, label_smoothing)."""

  name = 'text_classification'
  input_dtype = np.int32

  def __init__(self, seq_len: int = 2048, text_keys: tuple[str, ...] = (),
               label_key: str = '', label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
               num_classes: int | None = None):
    # mixup_alpha only so that a classification section carries over; byte tokens do not
    # mix, so check_config refuses any value but 0.
    super().__init__(label_smoothing=label_smoothing, mixup_alpha=mixup_alpha,
                     num_classes=num_classes)
    self.seq_len = int(seq_len)
    if isinstance(text_keys, str):
      text_keys = (text_keys,)
    # --config.task.text_keys=premise,hypothesis arrives as ('premise,hypothesis',).
    self.text_keys = tuple(k for item in text_keys for k in item.split(',') if k)
    self.label_key = str(label_key or '')

  def check_config(self, config) -> None:
    super().check_config(config)
    if self.mixup_alpha:
      raise UserError(f'config.task.mixup_alpha={self.mixup_alpha!r}: MixUp cannot mix byte '
                      'tokens; set it to 0 for text classification.')
    if self.seq_len < 1:
      raise UserError(f'config.task.seq_len={self.seq_len!r} must be a positive number of '
                      'bytes per example, e.g. 2048.')

  # -- data -----------------------------------------------------------------------------------
  def _keys(self, builder) -> tuple[tuple[str, ...], str]:
    """(text keys, label key) from config.task or the dataset's supervised_keys."""
    supervised = builder.info.supervised_keys
    pair = (isinstance(supervised, tuple) and len(supervised) == 2
            and all(isinstance(k, str) for k in supervised))
    text_keys = self.text_keys or ((supervised[0],) if pair else ())
    label_key = self.label_key or (supervised[1] if pair else '')
    if not text_keys or not label_key:
      raise DatasetError(
          f"Dataset '{builder.name}' has no (text, label) supervised_keys; name its text "
          "and label features with config.task.text_keys and config.task.label_key.")
    feats = builder.info.features
    for key in text_keys:
      if key not in feats or not isinstance(feats[key], tfds.features.Text):
        raise DatasetError(
            f"Dataset '{builder.name}' has no text feature {key!r}, so the "
            f"text_classification task cannot read it; set config.task.text_keys to its "
            f"string features (it has {sorted(feats.keys())}).")
    if label_key not in feats or not isinstance(feats[label_key], tfds.features.ClassLabel):
      raise DatasetError(
          f"Dataset '{builder.name}' has no class-label feature {label_key!r}; set "
          f"config.task.label_key to one (it has {sorted(feats.keys())}).")
    return tuple(text_keys), label_key

  def features(self, builder):
    text_keys, label_key = self._keys(builder)
    self.check_classes(builder, label_key)
    return {**{k: ((), 'text') for k in text_keys}, label_key: CLASS_LABEL}

  def input_shape(self, builder):
    return (self.seq_len,)

  def num_classes(self, builder):
    return builder.info.features[self._keys(builder)[1]].num_classes

  def prepare(self, data_config, builder):
    text_keys, label_key = self._keys(builder)
    return (EncodeTexts(text_keys, label_key, self.seq_len),)

  def train_transforms(self, data_config):
    return ()  # no augmentation of text

  # -- model ------------------------------------------------------------------------------------
  def model_inputs(self, batch):
    """inputs int32 [batch, seq] and input_mask bool [batch, seq] (False at padding)."""
    return {'inputs': batch['inputs'], 'input_mask': batch['inputs'] != PAD_ID}

  # -- prediction -------------------------------------------------------------------------------
  def predict_example(self, data_config, raw, input_shape):
    """raw: a text, or a tuple of texts (one per config.task.text_keys), encoded and cut to
    seq_len as in training; predict returns class probabilities."""
    texts = (raw,) if isinstance(raw, (str, bytes)) else tuple(raw)
    if not texts or not all(isinstance(t, (str, bytes)) for t in texts):
      raise UserError('The text_classification model takes texts; pass a string (or a tuple '
                      'of strings, one per config.task.text_keys) per example.')
    return {'inputs': text_windows.encode_texts(texts, int(input_shape[0]))}
