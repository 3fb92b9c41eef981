"""Input pipeline: TFDS (catalogue, ArrayRecord files) read by grain.

Every process builds the same global order of examples (shuffled per epoch
from the seed) and reads only its own contiguous block of each global batch:

  global batch b = examples [b*G, (b+1)*G) of the global order,
  process p reads rows [p*L, (p+1)*L) of it (L = G // process_count).

So concatenating all processes' local batches gives exactly the batch a single
process would read with the same seed, and a run can change its process count
without changing what it trains on. The iterator state is the number of
local batches read, which equals the global step on every process, so a
checkpointed position also restores under a different process count.

Batches are dicts of numpy arrays: `inputs` float32 [L, *input_shape],
`label` int32 [L] (and `mask` float32 [L] for eval). `to_global` turns them
into `jax.Array`s sharded over the mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import logging as std_logging
import os
import sys

from absl import logging
import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from perceiver_jax.data import transforms
from perceiver_jax.errors import UserError
from perceiver_jax.data.builders import EMBEDDED


class DatasetError(UserError):
  """A dataset cannot be used as configured; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the model and trainer need to know about a dataset, per example."""

  input_shape: tuple[int, ...]  # e.g. (40, 1) or (8, 8, 1); no batch axis
  num_classes: int
  num_train: int
  num_eval: int


# ---------------------------------------------------------------------------
# Preparation and metadata
# ---------------------------------------------------------------------------


def _resolve_data_dir(data_dir: str | None) -> str:
  # Resolved here (not inside TFDS) so the lock file and the builder agree.
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


@contextlib.contextmanager
def _quiet():
  """Swallows TFDS's prints, progress bars and INFO logs; prints on failure."""
  out = io.StringIO()
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(max(level, std_logging.WARNING))
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
      yield
  except BaseException:
    sys.stderr.write(out.getvalue())
    raise
  finally:
    absl_logger.setLevel(level)


def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  base = name.split('/')[0].split(':')[0]
  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several types for unknown names/configs.
    if base in EMBEDDED:
      configs = [c.name for c in EMBEDDED[base].BUILDER_CONFIGS] or ['(none)']
      raise DatasetError(
          f"Dataset '{name}' (data_dir '{data_dir}') names an unknown config or "
          f"version of embedded dataset '{base}'; use one of configs "
          f"{configs}.") from e
    raise DatasetError(
        f"Dataset '{name}' is not known to TFDS and has no prepared files in "
        f"data_dir '{data_dir}' ({type(e).__name__}); check the name (embedded: "
        f"{', '.join(sorted(EMBEDDED))}) or prepare it there with "
        f"`tfds build {name} --data_dir={data_dir} --file_format=array_record`."
    ) from e


def _is_prepared(builder) -> bool:
  # Checked first because TFDS's own check logs a warning for missing dirs.
  info_file = os.path.join(builder.data_dir, 'dataset_info.json')
  return os.path.exists(info_file) and builder.is_prepared()


def _check_split_names(builder, splits, data_dir: str) -> None:
  """Unknown split names fail before any data is built or read.

  The names come from the prepared metadata, or (not yet prepared) from an
  embedded builder's SPLITS; other unprepared datasets fail on preparation.
  """
  if _is_prepared(builder):
    known = list(builder.info.splits.keys())
  else:
    known = list(getattr(EMBEDDED.get(builder.name), 'SPLITS', ()))
  for split in splits:
    if known and split.split('[')[0] not in known:  # slices like 'train[:90%]'
      raise DatasetError(
          f"Split '{split}' does not exist in dataset '{builder.name}' (data_dir "
          f"'{data_dir}'); use one of {sorted(known)}.")


def prepare(name: str, data_dir: str | None, splits: tuple[str, ...] = ()
            ) -> tfds.core.DatasetBuilder:
  """Returns the builder of a prepared dataset, building embedded ones once.

  Args:
    name: TFDS name, optionally with config and version ('mnist1d/shuffled').
    data_dir: TFDS data directory; None means $TFDS_DATA_DIR or
      ~/tensorflow_datasets.
    splits: split names to check exist before anything is built.
  """
  data_dir = _resolve_data_dir(data_dir)
  builder = _builder(name, data_dir)
  _check_split_names(builder, splits, data_dir)
  if not _is_prepared(builder):
    if builder.name not in EMBEDDED:
      raise DatasetError(
          f"Dataset '{name}' is not prepared in data_dir '{data_dir}'; prepare "
          f"it with `tfds build {name} --data_dir={data_dir} "
          f"--file_format=array_record` (datasets that need a manual download "
          f"first want their files in {data_dir}/downloads/manual).")
    os.makedirs(data_dir, exist_ok=True)
    lock_path = os.path.join(
        data_dir, f".{name.replace('/', '_').replace(':', '_')}.lock")
    # Several local processes may start at once: one builds, the others wait
    # on the lock and then find the dataset prepared.
    with open(lock_path, 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      try:
        if not _is_prepared(builder):
          logging.info("Preparing dataset '%s' in %s (offline, once).",
                       name, data_dir)
          with _quiet():
            builder.download_and_prepare(file_format='array_record')
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
    # A fresh builder reads the split sizes written by whoever prepared it.
    builder = _builder(name, data_dir)
  file_format = builder.info.file_format
  if file_format is None or file_format.value != 'array_record':
    raise DatasetError(
        f"Dataset '{name}' in data_dir '{data_dir}' is stored as "
        f"{getattr(file_format, 'value', file_format)}, but grain needs "
        f"ArrayRecord; rebuild it with `tfds build {name} --data_dir={data_dir} "
        f"--file_format=array_record`.")
  return builder


def _keys(builder) -> tuple[str, str]:
  keys = builder.info.supervised_keys
  if not (isinstance(keys, tuple) and len(keys) == 2
          and all(isinstance(k, str) for k in keys)):
    raise DatasetError(
        f"Dataset '{builder.name}' has no (inputs, label) supervised_keys, so "
        "this classification pipeline cannot read it; add a task-specific "
        "pipeline for it.")
  return keys


def _num_examples(builder, split: str, data_dir: str | None) -> int:
  base = split.split('[')[0]  # TFDS slicing like 'train[:90%]' is allowed
  if base not in builder.info.splits:
    raise DatasetError(
        f"Split '{split}' does not exist in dataset '{builder.name}' (data_dir "
        f"'{_resolve_data_dir(data_dir)}'); use one of "
        f"{sorted(builder.info.splits.keys())}.")
  return builder.info.splits[split].num_examples


def dataset_info(data_config, extra_splits: tuple[str, ...] = ()) -> DatasetSpec:
  """Shapes and sizes from the TFDS metadata (prepares embedded data once).

  The train and eval splits, and `extra_splits`, must exist.
  """
  splits = (data_config.train_split, data_config.eval_split, *extra_splits)
  builder = prepare(data_config.name, data_config.data_dir, splits)
  inputs_key, label_key = _keys(builder)
  for split in extra_splits:
    _num_examples(builder, split, data_config.data_dir)
  return DatasetSpec(
      input_shape=tuple(builder.info.features[inputs_key].shape),
      num_classes=builder.info.features[label_key].num_classes,
      num_train=_num_examples(
          builder, data_config.train_split, data_config.data_dir),
      num_eval=_num_examples(
          builder, data_config.eval_split, data_config.data_dir),
  )


# ---------------------------------------------------------------------------
# Iterators
# ---------------------------------------------------------------------------


def _local_batch_size(global_batch_size: int, process_index: int,
                      process_count: int) -> int:
  if not 0 <= process_index < process_count:
    raise DatasetError(
        f'process_index {process_index} is outside [0, {process_count}); pass '
        'jax.process_index() and jax.process_count().')
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise DatasetError(
        f'Global batch size {global_batch_size} is not a positive multiple of '
        f'the {process_count} processes; choose a batch size divisible by it.')
  return global_batch_size // process_count


class CheckedSource:
  """A TFDS data source whose examples are checked against the declared features.

  A malformed record (undecodable, or inputs of another shape or dtype, or a
  non-integer label) raises a DatasetError naming the dataset, split and
  example index, instead of failing later inside a batch or the model.
  """

  def __init__(self, source, dataset: str, split: str, inputs_key: str,
               label_key: str, inputs_feature):
    self._source = source
    self._dataset, self._split = dataset, split
    self._inputs_key, self._label_key = inputs_key, label_key
    self._shape = tuple(inputs_feature.shape)
    self._dtype = np.dtype(inputs_feature.np_dtype)

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f'CheckedSource({self._source!r})'

  def _fail(self, index: int, problem: str) -> DatasetError:
    return DatasetError(
        f"Example {index} of split '{self._split}' of dataset '{self._dataset}' "
        f"{problem}; rebuild the dataset (embedded ones rebuild when their "
        "directory under data_dir is deleted) or fix its builder.")

  def __getitem__(self, index: int):
    try:
      element = self._source[index]
    except Exception as e:  # corrupt bytes raise many types inside TFDS
      raise self._fail(index, f"cannot be decoded ({type(e).__name__}: "
                              f"{' '.join(str(e).split())})") from e
    missing = {self._inputs_key, self._label_key} - set(element)
    if missing:
      raise self._fail(index, f'lacks the features {sorted(missing)}')
    x = np.asarray(element[self._inputs_key])
    shape_ok = len(x.shape) == len(self._shape) and all(
        want is None or want == got for want, got in zip(self._shape, x.shape))
    if not shape_ok or x.dtype != self._dtype:
      raise self._fail(index, f"has '{self._inputs_key}' of shape {x.shape} and "
                              f"dtype {x.dtype}, but the dataset declares shape "
                              f"{self._shape} and dtype {self._dtype}")
    label = np.asarray(element[self._label_key])
    if label.ndim or label.dtype.kind not in 'iu':
      raise self._fail(index, f"has label {label.tolist()!r} of shape "
                              f"{label.shape} and dtype {label.dtype}, but a "
                              "class label is an integer scalar")
    return element


def _examples(data_config, split: str) -> tuple[grain.MapDataset, int]:
  """Decoded, normalised examples of a split (no batch axis), and their count."""
  builder = prepare(data_config.name, data_config.data_dir)
  num = _num_examples(builder, split, data_config.data_dir)
  inputs_key, label_key = _keys(builder)
  source = CheckedSource(builder.as_data_source(split=split), data_config.name,
                         split, inputs_key, label_key,
                         builder.info.features[inputs_key])
  normalize = getattr(data_config, 'normalize', None) or (0.0, 1.0)
  ds = (grain.MapDataset.source(source)
        .map(transforms.ToSupervised(inputs_key, label_key))
        .map(transforms.Normalize(*normalize)))
  return ds, num


def _read_options(data_config) -> grain.ReadOptions:
  # Off by default: the data is tiny and in memory-mapped files, and threads
  # only fight over the GIL on small machines. Order stays deterministic
  # either way (grain's prefetch keeps index order).
  return grain.ReadOptions(
      num_threads=getattr(data_config, 'read_threads', 0) or 0,
      prefetch_buffer_size=getattr(data_config, 'prefetch', 0) or 0)


def _shuffle_seed(seed: int) -> int:
  # grain shuffles epoch e with seed + e, so seeds s and s+1 would share
  # epochs; hashing the user seed first keeps different seeds unrelated.
  return int(np.random.SeedSequence(seed).generate_state(1)[0])


def make_train_iterator(data_config, *, global_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1
                        ) -> grain.DatasetIterator:
  """Infinite iterator over this process's part of the training batches.

  Yields `inputs` float32 [L, *input_shape] and `label` int32 [L], with
  L = global_batch_size // process_count. Each epoch is a fresh permutation
  derived from `seed`; `get_state()`/`set_state()` save and restore the exact
  position.
  """
  local = _local_batch_size(global_batch_size, process_index, process_count)
  augment = getattr(data_config, 'augment', '') or ''
  if augment not in transforms.AUGMENTATIONS:
    raise DatasetError(
        f"Unknown augmentation '{augment}' for dataset '{data_config.name}'; "
        f"use one of {sorted(transforms.AUGMENTATIONS)}.")
  ds, _ = _examples(data_config, data_config.train_split)
  ds = ds.shuffle(seed=_shuffle_seed(seed)).repeat()  # epoch e: own shuffle
  for i, op in enumerate(transforms.AUGMENTATIONS[augment](data_config)):
    # Random ops draw from (seed, op, example index): deterministic and resumable.
    if isinstance(op, grain.transforms.RandomMap):
      ds = ds.random_map(op, seed=_shuffle_seed(seed) + i + 1)
    else:
      ds = ds.map(op)
  # Chunk c of L examples is rows [(c % P) * L, ...) of global batch c // P,
  # so process p takes chunks p, p + P, ... (see module docstring).
  ds = ds.batch(local)[process_index::process_count]
  return iter(ds.to_iter_dataset(_read_options(data_config)))


def make_eval_iterator(data_config, split: str, *, global_batch_size: int,
                       process_index: int = 0, process_count: int = 1
                       ) -> grain.IterDataset:
  """One ordered pass over `split`, padded to whole global batches.

  Yields `inputs` float32 [L, *input_shape], `label` int32 [L] and `mask`
  float32 [L] (1 real, 0 padding), L = global_batch_size // process_count.
  Every process yields the same number of batches and each example appears
  exactly once across processes. Iterating again starts from the beginning.
  """
  local = _local_batch_size(global_batch_size, process_index, process_count)
  ds, num = _examples(data_config, split)
  ds = ds.map(transforms.AddMask(1.0))
  num_padding = -num % global_batch_size
  if num_padding:
    pad = {'inputs': np.zeros_like(ds[0]['inputs']), 'label': np.int32(0),
           'mask': np.float32(0.0)}
    ds = grain.MapDataset.concatenate(
        [ds, grain.MapDataset.range(num_padding).map(lambda _: pad)])
  ds = ds.batch(local)[process_index::process_count]
  return ds.to_iter_dataset(_read_options(data_config))


# ---------------------------------------------------------------------------
# To device
# ---------------------------------------------------------------------------


def to_global(batch: dict[str, np.ndarray],
              sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Assembles per-process batches into global arrays [G, ...] on `sharding`.

  A `NamedSharding` whose spec is longer than an array's rank (e.g. a
  ('data', None, None) spec for `label` [L]) is cut to that rank, so one batch
  sharding serves all entries.
  """
  def leaf_sharding(x: np.ndarray) -> jax.sharding.Sharding:
    if (isinstance(sharding, jax.sharding.NamedSharding)
        and len(sharding.spec) > x.ndim):
      return jax.sharding.NamedSharding(
          sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec[:x.ndim]))
    return sharding

  return {k: jax.make_array_from_process_local_data(leaf_sharding(v), v)
          for k, v in batch.items()}

