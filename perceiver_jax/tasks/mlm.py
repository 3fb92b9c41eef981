"""Masked language modelling on UTF-8 bytes (Perceiver IO's pretraining objective).

Data, either of
  * a byte corpus with features 'bytes' uint8 [window] and 'length' int32 [] (e.g. the
    embedded python_stdlib): the stored windows are the examples;
  * a text corpus with a string feature `task.text_key` ('text': TFDS c4/en,
    wikipedia/20230601.en, the embedded stdlib_docs): each document's UTF-8 bytes
    (data/text_windows.py) are cut to one window of `task.seq_len` bytes (2048 as the
    released model reads), never splitting a character. Training takes a window at a
    uniformly random offset of its document, drawn afresh every epoch from the run seed
    (every part of a long document gets seen); evaluation takes each document's first
    window, so eval scores compare across runs. Shorter documents are padded with [PAD]
    and hidden by the input mask. (The released model's card says DeepMind concatenated
    10 documents before cropping, to waste less compute on padding; that packing builds
    one example from several records, which per-example transforms cannot, and is not
    done here.)
Training windows are masked by data/mlm_masking.WholeWordMask, drawing from (run seed,
position in the shuffled stream): deterministic and resumable. Eval windows are masked
with a Generator seeded by (eval_seed, example index), the same in every run and the way
benchmarks/baselines.py masks the test split (seed 1), so eval scores compare across runs
and with the unigram baseline.

Examples: inputs int32 [window] (masked ids), targets int32 [window], target_mask
float32 [window] (1 at the bytes to predict). The model sees input_mask = inputs != PAD_ID
and returns logits [batch, window, vocab]. Loss: mean cross-entropy over the target
bytes of the batch. Metrics: masked-byte accuracy and bits per byte (sum of -log2 p over
the targets / number of targets), exact over batches and eval padding.
"""

from __future__ import annotations

import dataclasses
import math

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow_datasets as tfds

from perceiver_jax.data import mlm_masking, text_windows
from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.tasks.base import Task
from perceiver_jax.tokenizer import MASK_ID, PAD_ID, SPECIAL_TOKENS, VOCAB_SIZE, BytesTokenizer

SEQ_LEN = 2048  # text corpora: bytes per window, as the released model reads
MASK = SPECIAL_TOKENS[MASK_ID]  # '[MASK]': one masked byte in a text given to predict
DOCUMENT = 'document'  # a text corpus example before windowing: uint8 [n], one document


@dataclasses.dataclass(frozen=True)
class EncodeDocument(grain.transforms.Map):
  """{text_key: UTF-8 bytes or str, ...} -> {'document': uint8 [n]} (the whole text)."""

  text_key: str = 'text'

  def map(self, element):
    return {DOCUMENT: text_windows.utf8_bytes(element[self.text_key])}


def _window(element, seq_len: int, rng: np.random.Generator | None):
  """A text example's window ({'bytes' uint8 [seq_len], 'length'}): at a random offset
  drawn from `rng`, or the first one (rng None); byte-corpus examples pass unchanged."""
  if DOCUMENT not in element:
    return element
  doc = element[DOCUMENT]
  start = 0 if rng is None else text_windows.random_start(doc.shape[0], seq_len, rng)
  data, length = text_windows.crop(doc, seq_len, start)
  return {'bytes': data, 'length': length}


@dataclasses.dataclass(frozen=True)
class WindowAndMask(grain.transforms.RandomMap):
  """Training: a random window of a text document (byte-corpus windows as stored), then
  WholeWordMask, both from one generator. Byte corpora draw nothing for the window, so
  their masks are the same as WholeWordMask's alone."""

  mask: mlm_masking.WholeWordMask
  seq_len: int

  def random_map(self, element, rng: np.random.Generator):
    return self.mask.random_map(_window(element, self.seq_len, rng), rng)


@dataclasses.dataclass(frozen=True)
class FixedSeedWholeWordMask(grain.transforms.MapWithIndex):
  """WholeWordMask drawing from np.random.default_rng([seed, example index]): the same
  masks in every run, whatever the batch size or process count. Text documents are cut
  to their first window of seq_len bytes first."""

  mask: mlm_masking.WholeWordMask
  seed: int
  seq_len: int = SEQ_LEN

  def map_with_index(self, index: int, element):
    element = _window(element, self.seq_len, None)
    return self.mask.random_map(element, np.random.default_rng([self.seed, int(index)]))


def masked_ids(text: str) -> np.ndarray:
  """A text in which each '[MASK]' stands for one masked byte -> int32 ids [n] (the
  training encoding: UTF-8 bytes + 6, no [CLS]/[SEP]; [MASK] ids where marked)."""
  tokenizer = BytesTokenizer()
  pieces = [tokenizer.encode(piece) for piece in str(text).split(MASK)]
  ids = [pieces[0]]
  for piece in pieces[1:]:
    ids += [np.asarray([MASK_ID], np.int32), piece]
  return np.concatenate(ids).astype(np.int32)


def mask_substring(text: str, substring: str) -> str:
  """`text` with every byte of the last occurrence of `substring` written as '[MASK]'
  (the reference example masks the bytes of ' missing.')."""
  start = text.rfind(substring)
  if not substring or start < 0:
    raise UserError(f'The text to mask, {substring!r}, does not occur in the text {text!r}; '
                    'pass a part of the text.')
  return text[:start] + MASK * len(substring.encode('utf-8')) + text[start + len(substring):]


def mlm_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array
             ) -> dict[str, jax.Array]:
  """Summed MLM loss and metrics over the weighted positions.

  Args:
    logits: [batch, seq, vocab].
    targets: [batch, seq] int ids.
    weights: [batch, seq] float, 1 at positions scored (targets of real examples), else 0.
  Returns:
    {'loss': sum of -ln p(target) (nats), 'correct': targets that are the argmax,
     'count': number of targets}, all summed over the weighted positions.
  """
  logits = logits.astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  scored = weights > 0
  # where, not a product: a position's nll never leaks into the sum, even if not finite.
  return {'loss': jnp.where(scored, nll * weights, 0.0).sum(),
          'correct': jnp.where(scored, (jnp.argmax(logits, -1) == targets) * weights, 0.0).sum(),
          'count': weights.sum()}


def mlm_metrics(sums, xp=jnp):
  """{'loss' (nats), 'accuracy', 'bits_per_byte'} per target from summed totals."""
  count = xp.maximum(sums['count'], 1.0)
  loss = sums['loss'] / count
  return {'loss': loss, 'accuracy': sums['correct'] / count,
          'bits_per_byte': loss / math.log(2.0)}


def mlm_summary(sums) -> dict[str, float]:
  """Reported metrics from accumulated sums: mlm_metrics plus the target and example counts."""
  sums = {k: float(v) for k, v in sums.items()}
  metrics = {k: float(v) for k, v in mlm_metrics(sums, np).items()}
  return {**metrics, 'num_targets': int(sums['count']), 'num_examples': int(sums['examples'])}


class MlmTask(Task):
  """Byte-level masked language modelling; the constructor arguments are config.task's
  fields (BERT's 15% of words, 80/10/10; text corpora: the 'text' feature)."""

  name = 'mlm'
  input_dtype = np.int32

  def __init__(self, mask_prob: float = 0.15, mask_token_prob: float = 0.8,
               random_token_prob: float = 0.1, word_definition: str = 'code',
               eval_mask_seed: int = 1, seq_len: int = SEQ_LEN, text_key: str = 'text'):
    self.masking = mlm_masking.WholeWordMask(
        mask_prob=float(mask_prob), mask_token_prob=float(mask_token_prob),
        random_token_prob=float(random_token_prob), word_definition=word_definition)
    self.eval_mask_seed = int(eval_mask_seed)
    self.seq_len = int(seq_len)  # text corpora only: bytes per window
    self.text_key = str(text_key)

  def check_config(self, config) -> None:
    m = self.masking
    if not 0.0 < m.mask_prob < 1.0:
      raise UserError(f'config.task.mask_prob={m.mask_prob!r} is out of range; use a fraction '
                      'of words in (0, 1), e.g. 0.15.')
    if (m.mask_token_prob < 0 or m.random_token_prob < 0
        or m.mask_token_prob + m.random_token_prob > 1):
      raise UserError(f'config.task.mask_token_prob={m.mask_token_prob!r} and '
                      f'random_token_prob={m.random_token_prob!r} must be >= 0 and sum to at '
                      'most 1, e.g. 0.8 and 0.1.')
    if m.word_definition not in mlm_masking.WORD_DEFINITIONS:
      raise UserError(f'config.task.word_definition={m.word_definition!r} is unknown; use one '
                      f'of {", ".join(repr(w) for w in mlm_masking.WORD_DEFINITIONS)}.')
    if self.seq_len < 1:
      raise UserError(f'config.task.seq_len={self.seq_len!r} must be a positive number of '
                      'bytes per window, e.g. 2048.')

  # -- data -----------------------------------------------------------------------------------
  def _is_text(self, builder) -> bool:
    """True for a text corpus (a string feature text_key), False for a byte corpus."""
    feats = builder.info.features
    if 'bytes' in feats and 'length' in feats and len(feats['bytes'].shape) == 1:
      return False
    if self.text_key in feats and isinstance(feats[self.text_key], tfds.features.Text):
      return True
    raise DatasetError(
        f"Dataset '{builder.name}' has no 'bytes' [window] and 'length' features, so the "
        f"mlm task cannot read it, nor a text feature {self.text_key!r} "
        "(config.task.text_key); use a byte corpus such as python_stdlib, a text corpus "
        "such as c4/en, wikipedia or stdlib_docs, or another config.task.name.")

  def features(self, builder):
    if self._is_text(builder):
      return {self.text_key: ((), 'text')}
    feats = builder.info.features
    return {'bytes': (tuple(feats['bytes'].shape), np.dtype(feats['bytes'].np_dtype)),
            'length': ((), 'int')}

  def input_shape(self, builder):
    if self._is_text(builder):
      return (self.seq_len,)
    return tuple(self.features(builder)['bytes'][0])

  def num_classes(self, builder):
    return VOCAB_SIZE

  def prepare(self, data_config, builder):
    return (EncodeDocument(self.text_key),) if self._is_text(builder) else ()

  def train_transforms(self, data_config):
    return (WindowAndMask(self.masking, self.seq_len),)

  def eval_transforms(self, data_config):
    return (FixedSeedWholeWordMask(self.masking, self.eval_mask_seed, self.seq_len),)

  # -- model and loss --------------------------------------------------------------------------
  def model_inputs(self, batch):
    """inputs int32 [batch, seq] and input_mask bool [batch, seq] (False at padding)."""
    return {'inputs': batch['inputs'], 'input_mask': batch['inputs'] != PAD_ID}

  def loss_sums(self, outputs, batch, *, train):
    """outputs: logits [batch, seq, vocab]; sums as mlm_sums, plus 'examples'."""
    weights = batch['target_mask'].astype(jnp.float32)
    if 'mask' in batch:  # eval: padding examples score nothing
      weights = weights * batch['mask'][:, None]
      examples = batch['mask'].sum()
    else:
      examples = jnp.asarray(batch['inputs'].shape[0], jnp.float32)
    return {**mlm_sums(outputs, batch['targets'], weights), 'examples': examples}

  def normaliser(self, batch):
    return jnp.maximum(batch['target_mask'].sum(), 1.0)

  def train_metrics(self, sums):
    return mlm_metrics(sums)

  def summarize(self, sums):
    return mlm_summary(sums)

  # -- prediction -------------------------------------------------------------------------------
  def predict_example(self, data_config, raw, input_shape):
    """raw: a text in which each '[MASK]' is one masked byte; predict returns the text with
    every masked byte replaced by the model's most likely byte."""
    if not isinstance(raw, (str, bytes)):
      raise UserError(f'The mlm model takes texts, not {type(raw).__name__}; pass a string '
                      "in which each '[MASK]' stands for one byte to fill.")
    ids = masked_ids(raw.decode('utf-8') if isinstance(raw, bytes) else raw)
    seq_len = int(input_shape[0])
    if len(ids) > seq_len:
      raise UserError(f'A text of {len(ids)} bytes is longer than the {seq_len} bytes this '
                      'model reads; shorten it.')
    inputs = np.full((seq_len,), PAD_ID, np.int32)
    inputs[:len(ids)] = ids
    return {'inputs': inputs}

  def predictions(self, outputs):
    """The most likely id at every position [batch, seq]."""
    return jnp.argmax(outputs, axis=-1).astype(jnp.int32)

  def present(self, predictions, examples):
    """The texts with their [MASK] bytes replaced by the predicted ones."""
    inputs = np.asarray(examples['inputs'])
    filled = np.where(inputs == MASK_ID, predictions, inputs)
    tokenizer = BytesTokenizer()
    return [tokenizer.decode(row[row != PAD_ID]) for row in filled]
