"""Python's own standard library source as a byte-level text corpus (TFDS, offline).

The corpus is every `*.py` file under the running interpreter's
`sysconfig.get_paths()['stdlib']`, minus third-party code and test suites: a path
is dropped if any of its directories is `site-packages`, `dist-packages`, `test`,
`tests`, `idle_test` or `__pycache__` (this removes `test/`, `lib2to3/tests/`,
`idlelib/idle_test/`, `unittest/test/`, `ctypes/test/`, ...), if its file name
starts with `test_`, if it is empty, or if its bytes are not valid UTF-8. Files
are read in sorted relative-path order; symbolic links are not followed.

The corpus therefore depends on the Python version that prepares it; the version
is written into the dataset description and into `metadata.json`
(`python_version`), and `corpus_files()` lists what a given interpreter sees.

Split (file level, deterministic, independent of the file set): a file goes to
'test' when the first 8 bytes of SHA-256 of its relative POSIX path, read as a
big-endian integer, fall below 5% of 2**64 (`TEST_FRACTION`), else to 'train'.
So every window of a file lands in one split, and a file keeps its split across
Python versions.

Examples: each file's UTF-8 bytes cut into non-overlapping windows of
`window` bytes (512 in 'full'); the last partial window of a file is KEPT and
padded with zero bytes, and `length` says how many leading bytes are real.
Concatenating `bytes[:length]` over a file's windows in `window_index` order
gives the file back exactly. Features per example:
  bytes         uint8 [window]   the window, zero-padded after `length`
  length        int32 []         real bytes in the window, 1..window
  path          text             path relative to the stdlib root ('json/decoder.py')
  window_index  int32 []         position of the window in its file, 0, 1, ...
Examples are stored in generator order (file path, then window index).

Packed configs (long contexts, Perceiver AR): a split's files, in path order, each
followed by one zero byte (a document separator that source files do not contain), are
concatenated into one stream and cut into full windows; the incomplete tail is dropped.
`length` is then always `window`, `path` names the file the window starts in and
`window_index` counts windows through the split's stream.

Configs:
  full         all eligible files, window 512.
  tiny         6 train + 2 test files (the first eligible ones under 16 KiB in path
               order), window 128; for tests.
  packed       all eligible files packed into windows of 16385 bytes (a 16384-byte
               context and the byte after it).
  packed_tiny  the tiny files packed into windows of 513 bytes; for tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import sysconfig

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from perceiver_jax.errors import UserError

TEST_FRACTION = 0.05
EXCLUDED_DIRS = frozenset(
    {'site-packages', 'dist-packages', 'test', 'tests', 'idle_test', '__pycache__'})
SPLITS = ('train', 'test')


def stdlib_root() -> str:
  """Directory of the running interpreter's standard library."""
  return sysconfig.get_paths()['stdlib']


def python_version() -> str:
  return '.'.join(str(v) for v in sys.version_info[:3])


def split_of(relpath: str) -> str:
  """'train' or 'test' for a relative POSIX path (stable hash, see module doc)."""
  digest = hashlib.sha256(relpath.encode('utf-8')).digest()
  return 'test' if int.from_bytes(digest[:8], 'big') < TEST_FRACTION * 2**64 else 'train'


def _is_excluded(relpath: str) -> bool:
  *dirs, name = relpath.split('/')
  return (not name.endswith('.py') or name.startswith('test_')
          or any(d in EXCLUDED_DIRS for d in dirs))


def corpus_files(root: str | None = None) -> dict[str, list[str]]:
  """Eligible relative paths per split, each list sorted; see the module doc.

  Reads every candidate file once to drop empty and non-UTF-8 ones.
  """
  root = root or stdlib_root()
  found = []
  for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False
    dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
    for name in filenames:
      full = os.path.join(dirpath, name)
      rel = os.path.relpath(full, root).replace(os.sep, '/')
      if _is_excluded(rel) or os.path.islink(full):
        continue
      data = _read(full)
      if data:
        found.append(rel)
  found.sort()
  files = {split: [] for split in SPLITS}
  for rel in found:
    files[split_of(rel)].append(rel)
  return files


def _read(path: str) -> bytes | None:
  """The file's bytes, or None if it is not valid UTF-8."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    data.decode('utf-8')
  except UnicodeDecodeError:
    return None
  return data


def windows(data: bytes, window: int) -> tuple[np.ndarray, np.ndarray]:
  """data -> (uint8 [n, window] zero-padded windows, int32 [n] real lengths).

  n = ceil(len(data) / window); only the last window can be partial.
  """
  n = -(-len(data) // window)
  out = np.zeros((n * window,), np.uint8)
  out[:len(data)] = np.frombuffer(data, np.uint8)
  lengths = np.full((n,), window, np.int32)
  if n:
    lengths[-1] = len(data) - (n - 1) * window
  return out.reshape(n, window), lengths


@dataclasses.dataclass(kw_only=True)
class PythonStdlibConfig(tfds.core.BuilderConfig):
  """window: bytes per example; files_per_split: cap per split (None = all);
  max_file_bytes: skip larger files when capping (None = no limit)."""

  window: int = 512
  files_per_split: dict[str, int] | None = None
  max_file_bytes: int | None = None
  packed: bool = False

  def __post_init__(self):
    if self.window < 1:
      raise UserError(f'python_stdlib window must be a positive number of bytes, '
                      f'got {self.window}.')


class PythonStdlib(tfds.core.GeneratorBasedBuilder):
  """Windows of UTF-8 bytes of the Python standard library's source files."""

  # TFDS derives this from the package via `importlib_resources`, which is
  # not a declared dependency; giving it directly avoids that import.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'SHA-256 file-level split (5% test), padded last windows.'}
  # Known before preparation, so a bad split name fails before anything is built.
  SPLITS = SPLITS
  BUILDER_CONFIGS = [
      PythonStdlibConfig(name='full', window=512,
                         description='All eligible stdlib files, 512-byte windows.'),
      PythonStdlibConfig(name='tiny', window=128,
                         files_per_split={'train': 6, 'test': 2}, max_file_bytes=16384,
                         description='6 train + 2 test small files, 128-byte windows.'),
      PythonStdlibConfig(name='packed', window=16385, packed=True,
                         description='All eligible stdlib files packed into full '
                                     '16385-byte windows.'),
      PythonStdlibConfig(name='packed_tiny', window=513, packed=True,
                         files_per_split={'train': 6, 'test': 2}, max_file_bytes=16384,
                         description='The tiny files packed into full 513-byte windows.'),
  ]
  DEFAULT_CONFIG_NAME = 'full'

  def _info(self) -> tfds.core.DatasetInfo:
    window = self.builder_config.window
    return self.dataset_info_from_configs(
        description=f'{__doc__}\nPrepared from Python {python_version()} '
                    f'({stdlib_root()}).',
        features=tfds.features.FeaturesDict({
            'bytes': tfds.features.Tensor(shape=(window,), dtype=np.uint8),
            'length': tfds.features.Scalar(dtype=np.int32),
            'path': tfds.features.Text(),
            'window_index': tfds.features.Scalar(dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(python_version=python_version()),
        # Keep generator order on disk (TFDS would hash-shuffle by key), so a
        # file's windows are stored in order and eval order is known.
        disable_shuffling=True,
        homepage='https://docs.python.org/3/library/',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The corpus is the interpreter's own library.
    root = stdlib_root()
    files = corpus_files(root)
    cfg = self.builder_config
    if cfg.files_per_split is not None:
      files = {split: self._cap(root, paths, cfg.files_per_split[split])
               for split, paths in files.items()}
    return {split: self._generate_examples(root, files[split]) for split in SPLITS}

  def _cap(self, root: str, paths: list[str], count: int) -> list[str]:
    limit = self.builder_config.max_file_bytes
    small = [p for p in paths
             if limit is None or os.path.getsize(os.path.join(root, p)) <= limit]
    return small[:count]

  def _generate_examples(self, root: str, paths: list[str]):
    window = self.builder_config.window
    if self.builder_config.packed:
      yield from self._packed_examples(root, paths, window)
      return
    for rel in paths:
      data = _read(os.path.join(root, rel))
      for i, (chunk, length) in enumerate(zip(*windows(data, window))):
        # Key = path and window, so each example is traceable to its source.
        yield f'{rel}:{i}', {'bytes': chunk, 'length': int(length), 'path': rel,
                             'window_index': i}

  def _packed_examples(self, root: str, paths: list[str], window: int):
    stream, starts = bytearray(), []  # starts: (offset, path) of each document
    for rel in paths:
      starts.append((len(stream), rel))
      stream += _read(os.path.join(root, rel)) + b'\0'
    offsets = [offset for offset, _ in starts]
    for i in range(len(stream) // window):
      begin = i * window
      # The file the window starts in: the last document starting at or before it.
      rel = starts[int(np.searchsorted(offsets, begin, side='right')) - 1][1]
      chunk = np.frombuffer(bytes(stream[begin:begin + window]), np.uint8)
      yield f'packed:{i}', {'bytes': chunk, 'length': window, 'path': rel,
                            'window_index': i}
