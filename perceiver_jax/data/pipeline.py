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

What an example holds is the task's business (perceiver_jax/tasks): which
stored features are read and checked, and the transforms that make them
`inputs` plus targets. Classification (the default) gives `inputs` float32
[L, *input_shape] and `label` int32 [L]; eval batches add `mask` float32 [L]
(1 real, 0 padding). `to_global` turns batches into `jax.Array`s sharded over
the mesh.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import io
import json
import logging as std_logging
import os
import sys

from absl import flags
from absl import logging
import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from perceiver_jax import tasks
from perceiver_jax.data import own_data
from perceiver_jax.data import transforms
from perceiver_jax.data.builders import EMBEDDED
from perceiver_jax.errors import DatasetError

# Eval examples' random transforms draw from this fixed seed (not the run's), so eval
# scores of different runs are computed on the same examples.
EVAL_SEED = 1


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the model and trainer need to know about a dataset, per example."""

  # e.g. (40, 1) or (8, 8, 1), or {modality: shape} for multimodal data; no batch axis
  input_shape: tuple[int, ...] | dict[str, tuple[int, ...]]
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


def _check_data_dir(given: str | None, data_dir: str) -> None:
  """A data_dir that is a file, or under one, fails in one sentence naming where it came
  from (config.data.data_dir, $TFDS_DATA_DIR or the TFDS default)."""
  if given:
    source = f'config.data.data_dir={given}'
  elif os.environ.get('TFDS_DATA_DIR'):
    source = f"$TFDS_DATA_DIR={os.environ['TFDS_DATA_DIR']}"
  else:
    source = f'the TFDS default data_dir {data_dir}'
  existing = data_dir
  while not os.path.exists(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    what = 'is a file' if existing == data_dir else f'lies under {existing}, which is a file'
    raise DatasetError(f'{source} {what}, not a directory; point it at a TFDS data '
                       'directory (a new one is made and embedded datasets prepared there).')


def _make_data_dir(data_dir: str) -> None:
  try:
    os.makedirs(data_dir, exist_ok=True)
  except OSError as e:
    raise DatasetError(
        f"data_dir '{data_dir}' cannot be created ({e.strerror or e}); set "
        'config.data.data_dir (or $TFDS_DATA_DIR) to a directory you can write, or mount '
        'the one it names.') from None


def _unreadable_info(name: str, data_dir: str, error: Exception) -> str | None:
  """The prepared dataset_info.json of `name` that TFDS failed on, if one is there."""
  base, _, config = name.split(':')[0].partition('/')
  root = os.path.join(data_dir, base, *(config.split('/')[:1] if config else ()))
  files = [os.path.join(folder, 'dataset_info.json') for folder, _, names in os.walk(root)
           if 'dataset_info.json' in names]
  for file in files:
    try:
      with open(file) as f:
        if not isinstance(json.load(f), dict):
          return file
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
      return file
  # Valid JSON with fields TFDS cannot parse (protobuf's ParseError).
  if files and type(error).__name__ == 'ParseError':
    return files[0]
  return None


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
    info = _unreadable_info(name, data_dir, e)
    if info:
      # TFDS prefixes its reason with the builder's arguments, which say nothing new.
      reason = ' '.join(str(e).split()).split('": ', 1)[-1].rstrip('.')[-160:]
      raise DatasetError(
          f"Dataset '{name}' is prepared in data_dir '{data_dir}', but its {info} cannot be "
          f"read ({reason}); delete {os.path.dirname(info)} and prepare it again.") from e
    if base in EMBEDDED:
      configs = [c.name for c in EMBEDDED[base].BUILDER_CONFIGS] or ['(none)']
      raise DatasetError(
          f"Dataset '{name}' (data_dir '{data_dir}') names an unknown config or "
          f"version of embedded dataset '{base}'; use one of configs "
          f"{configs}.") from e
    raise DatasetError(
        f"Dataset '{name}' is not known to TFDS and has no prepared files in "
        f"data_dir '{data_dir}' ({type(e).__name__}); check the name (embedded: "
        f"{', '.join(sorted(EMBEDDED))}) or, for your own data, set config.data.builder_module "
        f"or use npz_folder / image_folder (docs/datasets.md)."
    ) from e


def _is_prepared(builder) -> bool:
  # Checked first because TFDS's own check logs a warning for missing dirs.
  info_file = os.path.join(builder.data_dir, 'dataset_info.json')
  return os.path.exists(info_file) and builder.is_prepared()


def _check_split_names(builder, splits, data_dir: str) -> None:
  """Unknown split names fail before any data is built or read.

  The names come from the prepared metadata, or (not yet prepared) from the
  builder's SPLITS (embedded and folder builders declare them); other unprepared
  datasets fail on preparation.
  """
  if _is_prepared(builder):
    known = list(builder.info.splits.keys())
  else:
    known = list(getattr(builder, 'SPLITS', ()))
  for split in splits:
    if known and split.split('[')[0] not in known:  # slices like 'train[:90%]'
      raise DatasetError(
          f"Split '{split}' does not exist in dataset '{builder.name}' (data_dir "
          f"'{data_dir}'); use one of {sorted(known)}.")


def prepare(name: str, data_dir: str | None, splits: tuple[str, ...] = (),
            manual_dir: str | None = None,
            own: own_data.OwnDataset | None = None) -> tfds.core.DatasetBuilder:
  """Returns the builder of a prepared dataset, building embedded and own ones once.

  Args:
    name: TFDS name, optionally with config and version ('mnist1d/shuffled').
    data_dir: TFDS data directory; None means $TFDS_DATA_DIR or
      ~/tensorflow_datasets.
    splits: split names to check exist before anything is built.
    manual_dir: where builders that read downloaded files find them; None
      means TFDS's default, <data_dir>/downloads/manual.
    own: your own dataset (own_data.resolve: a builder_module or a folder),
      prepared offline like the embedded ones.
  """
  given, data_dir = data_dir, _resolve_data_dir(data_dir)
  _check_data_dir(given, data_dir)
  make_builder = own.builder if own else lambda d: _builder(name, d)
  builder = make_builder(data_dir)
  _check_split_names(builder, splits, data_dir)
  if not _is_prepared(builder):
    if own is None and builder.name not in EMBEDDED:
      raise DatasetError(
          f"Dataset '{name}' is not prepared in data_dir '{data_dir}', and perceiver_jax "
          "prepares only its embedded datasets and your own (config.data.builder_module, "
          "npz_folder, image_folder) offline; prepare it with TFDS (file_format "
          "array_record) on a machine that can download it and copy its folder into this "
          "data_dir, see docs/datasets.md.")
    _make_data_dir(data_dir)
    lock_name = own.name if own else name
    lock_path = os.path.join(
        data_dir, f".{lock_name.replace('/', '_').replace(':', '_')}.lock")
    # Several local processes may start at once: one builds, the others wait
    # on the lock and then find the dataset prepared.
    with open(lock_path, 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      try:
        if not _is_prepared(builder):
          logging.info("Preparing dataset '%s' in %s (offline, once).",
                       lock_name, data_dir)
          with _quiet():
            builder.download_and_prepare(
                file_format='array_record', download_config=tfds.download.DownloadConfig(
                    manual_dir=os.path.abspath(os.path.expanduser(manual_dir))
                    if manual_dir else None))
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
    # A fresh builder reads the split sizes written by whoever prepared it.
    builder = make_builder(data_dir)
  file_format = builder.info.file_format
  if file_format is None or file_format.value != 'array_record':
    raise DatasetError(
        f"Dataset '{name}' in data_dir '{data_dir}' is stored as "
        f"{getattr(file_format, 'value', file_format)}, but grain needs "
        f"ArrayRecord; prepare it again with file_format array_record (see "
        f"docs/datasets.md).")
  return builder


def _num_examples(builder, split: str, data_dir: str | None) -> int:
  base = split.split('[')[0]  # TFDS slicing like 'train[:90%]' is allowed
  if base not in builder.info.splits:
    raise DatasetError(
        f"Split '{split}' does not exist in dataset '{builder.name}' (data_dir "
        f"'{_resolve_data_dir(data_dir)}'); use one of "
        f"{sorted(builder.info.splits.keys())}.")
  return builder.info.splits[split].num_examples


def _per_example_shape(shape):
  # A tuple of ints, or {modality: tuple of ints} for multimodal tasks.
  if isinstance(shape, dict):
    return {m: tuple(int(n) for n in s) for m, s in shape.items()}
  return tuple(int(n) for n in shape)


def dataset_info(data_config, extra_splits: tuple[str, ...] = (),
                 task=None) -> DatasetSpec:
  """Shapes and sizes from the TFDS metadata (prepares embedded data once).

  The train and eval splits, and `extra_splits`, must exist. `task` (default
  classification) says which features make the inputs and the classes.
  """
  task = task or tasks.default_task()
  splits = (data_config.train_split, data_config.eval_split, *extra_splits)
  builder = prepare(data_config.name, data_config.data_dir, splits,
                    manual_dir=getattr(data_config, 'manual_dir', None) or None,
                    own=own_data.resolve(data_config))
  task.features(builder)  # a dataset the task cannot read fails here, in one sentence
  for split in extra_splits:
    _num_examples(builder, split, data_config.data_dir)
  return DatasetSpec(
      input_shape=_per_example_shape(task.input_shape(builder)),
      num_classes=task.num_classes(builder),
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

  A malformed record (undecodable, a missing feature, a feature of another shape
  or dtype, or a non-integer class label) raises a DatasetError naming the
  dataset, split and example index, instead of failing later inside a batch or
  the model. `features` is the task's {name: (shape, dtype, 'int' or 'text') or
  CLASS_LABEL}.
  """

  def __init__(self, source, dataset: str, split: str, features):
    self._source = source
    self._dataset, self._split = dataset, split
    self._features = dict(features)

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
    missing = set(self._features) - set(element)
    if missing:
      raise self._fail(index, f'lacks the features {sorted(missing)}')
    for key, declared in self._features.items():
      x = np.asarray(element[key])
      if declared == tasks.CLASS_LABEL:
        if x.ndim or x.dtype.kind not in 'iu':
          raise self._fail(index, f"has label {x.tolist()!r} of shape "
                                  f"{x.shape} and dtype {x.dtype}, but a "
                                  "class label is an integer scalar")
        continue
      shape, dtype = tuple(declared[0]), declared[1]
      shape_ok = len(x.shape) == len(shape) and all(
          want is None or want == got for want, got in zip(shape, x.shape))
      # 'int': any integer dtype (TFDS may decode an int32 scalar as int64); 'text': a
      # TFDS Text feature, which as_data_source decodes to UTF-8 bytes (str if hand-made).
      dtype_ok = (x.dtype.kind in 'iu' if dtype == 'int' else x.dtype.kind in 'SU'
                  if dtype == 'text' else x.dtype == np.dtype(dtype))
      if not shape_ok or not dtype_ok:
        wanted = ('an integer dtype' if dtype == 'int' else 'a string' if dtype == 'text'
                  else f'dtype {np.dtype(dtype)}')
        raise self._fail(index, f"has '{key}' of shape {x.shape} and "
                                f"dtype {x.dtype}, but the dataset declares shape "
                                f"{shape} and {wanted}")
    return element


def _examples(data_config, split: str, task) -> tuple[grain.MapDataset, int]:
  """The task's examples of a split (no batch axis, before any random transform),
  and their count."""
  builder = prepare(data_config.name, data_config.data_dir,
                    manual_dir=getattr(data_config, 'manual_dir', None) or None,
                    own=own_data.resolve(data_config))
  num = _num_examples(builder, split, data_config.data_dir)
  source = CheckedSource(builder.as_data_source(split=split), data_config.name,
                         split, task.features(builder))
  ds = grain.MapDataset.source(source)
  for op in task.prepare(data_config, builder):
    ds = ds.map(op)
  return ds, num


def _apply(ds: grain.MapDataset, ops, seed: int) -> grain.MapDataset:
  """Applies grain transforms in order; RandomMap i draws from (seed, i, example index),
  so it is deterministic and resumable; MapWithIndex sees the example index."""
  for i, op in enumerate(ops):
    if isinstance(op, grain.transforms.RandomMap):
      ds = ds.random_map(op, seed=_shuffle_seed(seed) + i + 1)
    elif isinstance(op, grain.transforms.MapWithIndex):
      ds = ds.map_with_index(op)
    else:
      ds = ds.map(op)
  return ds


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


def make_train_dataset(data_config, *, global_batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1, task=None
                       ) -> grain.MapDataset:
  """This process's training batches as an infinite, random-access grain MapDataset:
  element i is the process's part of global batch i (see make_train_iterator)."""
  task = task or tasks.default_task()
  local = _local_batch_size(global_batch_size, process_index, process_count)
  ops = task.train_transforms(data_config)  # a bad setting fails before data is read
  ds, _ = _examples(data_config, data_config.train_split, task)
  ds = ds.shuffle(seed=_shuffle_seed(seed)).repeat()  # epoch e: own shuffle
  # Random ops draw from (seed, op, position in the stream): deterministic and resumable.
  ds = _apply(ds, ops, seed)
  # Chunk c of L examples is rows [(c % P) * L, ...) of global batch c // P,
  # so process p takes chunks p, p + P, ... (see module docstring).
  ds = ds.batch(local)
  # Batch-level random ops (e.g. MixUp) draw from (hashed seed, op, chunk c): resumable,
  # unrelated to the per-example draws, and never shared by two processes' chunks.
  ds = _apply(ds, task.batch_transforms(data_config), _shuffle_seed(seed))
  return ds[process_index::process_count]


def make_train_iterator(data_config, *, global_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1, task=None
                        ) -> grain.DatasetIterator:
  """Infinite iterator over this process's part of the training batches.

  Yields the task's batches (classification: `inputs` float32 [L, *input_shape]
  and `label` int32 [L]), L = global_batch_size // process_count. Each epoch is
  a fresh permutation derived from `seed`; `get_state()`/`set_state()` save and
  restore the exact position.
  """
  ds = make_train_dataset(data_config, global_batch_size=global_batch_size, seed=seed,
                          process_index=process_index, process_count=process_count,
                          task=task)
  return iter(ds.to_iter_dataset(_read_options(data_config)))


class DeviceBatches:
  """The training loop's batches: read on the host, already on the devices when used.

  Host batches come from grain (`data.read_threads` threads, or `data.worker_count`
  processes, building whole batches ahead); each is handed to `to_global` (an
  asynchronous host-to-device copy) `prefetch` steps before the loop takes it, so the
  copy and the host work overlap the steps still running on the devices.

  The position is the number of batches the loop has taken (grain's own
  {'next_index': n} of the dataset), not how far the prefetch has read, so a checkpoint
  resumes exactly; it does not depend on the thread or worker count. Implements the
  get_state/set_state/start_prefetch protocol of grain's Orbax checkpoint handler.
  """

  def __init__(self, dataset: grain.MapDataset, to_global, *, data_config=None,
               prefetch: int = 2):
    self._dataset = dataset
    self._to_global = to_global
    self._read_options = _read_options(data_config)
    self._workers = int(getattr(data_config, 'worker_count', 0) or 0)
    if self._workers < 0 or prefetch < 0:
      raise DatasetError(f'config.data.worker_count ({self._workers}) and the device '
                         f'prefetch ({prefetch}) must be >= 0.')
    self._prefetch = int(prefetch)
    self._next_index = 0   # batches taken by the loop
    self._host = None      # grain iterator from self._next_index + len(self._queue)
    self._queue = collections.deque()

  def _start(self) -> None:
    ds = self._dataset[self._next_index:].to_iter_dataset(self._read_options)
    if self._workers:
      if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (library use)
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
    self._host = iter(ds)

  def __iter__(self):
    return self

  def __next__(self):
    if self._host is None:
      self._start()
    while len(self._queue) <= self._prefetch:
      self._queue.append(self._to_global(next(self._host)))
    self._next_index += 1
    return self._queue.popleft()

  def close(self) -> None:
    """Stops the host readers (worker processes) and drops prefetched batches."""
    if self._host is not None and hasattr(self._host, 'close'):
      self._host.close()
    self._host = None
    self._queue.clear()

  def get_state(self) -> bytes:
    return json.dumps({'next_index': self._next_index}).encode()

  def set_state(self, state) -> None:
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    self.close()
    self._next_index = int(state['next_index'])

  def start_prefetch(self) -> None:
    """Part of grain's checkpoint protocol; reading starts at the first batch taken."""


def make_eval_iterator(data_config, split: str, *, global_batch_size: int,
                       process_index: int = 0, process_count: int = 1, task=None
                       ) -> grain.IterDataset:
  """One ordered pass over `split`, padded to whole global batches.

  Yields the task's batches (classification: `inputs` float32 [L, *input_shape],
  `label` int32 [L]) plus `mask` float32 [L] (1 real, 0 padding), L =
  global_batch_size // process_count. Every process yields the same number of
  batches and each example appears exactly once across processes. Random eval
  transforms use EVAL_SEED. Iterating again starts from the beginning.
  """
  task = task or tasks.default_task()
  local = _local_batch_size(global_batch_size, process_index, process_count)
  ds, num = _examples(data_config, split, task)
  ds = _apply(ds, task.eval_transforms(data_config), EVAL_SEED)
  ds = ds.map(transforms.AddMask(1.0))
  num_padding = -num % global_batch_size
  if num_padding:
    pad = task.padding_example(ds[0])
    ds = grain.MapDataset.concatenate(
        [ds, grain.MapDataset.range(num_padding).map(lambda _: pad)])
  ds = ds.batch(local)[process_index::process_count]
  return ds.to_iter_dataset(_read_options(data_config))


# ---------------------------------------------------------------------------
# To device
# ---------------------------------------------------------------------------


def to_global(batch: dict[str, object],
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

  # A tree: multimodal tasks nest their inputs ({'inputs': {modality: array}, ...}).
  return jax.tree.map(
      lambda v: jax.make_array_from_process_local_data(leaf_sharding(v), v), batch)

