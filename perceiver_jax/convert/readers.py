"""Reading checkpoint files into flat {name: np.ndarray} dicts (re-exported by common).

  .safetensors         Hugging Face safetensors (bf16 included).
  .npz                 numpy archives.
  .bin / .pt / .pth    PyTorch zip checkpoints (torch.save of a state dict), read
                       without torch by an unpickler that only rebuilds tensors.
  .pkl / .pickle       DeepMind Haiku parameter pickles ({module: {param: array}},
                       optionally {'params': ..., 'state': ...}), flattened to
                       'module/path/param' keys.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile
from typing import Any, Mapping

import ml_dtypes
import numpy as np

Array = np.ndarray


class CheckpointFileError(ValueError):
  """A checkpoint file this module read and found wrong; the message is one sentence."""


class _ForeignObject(pickle.UnpicklingError):
  """A well-formed pickle of objects other than arrays and mappings."""


# What reading a damaged or foreign file can raise: unpickling arbitrary bytes can fail in
# almost any way (a huge length field gives MemoryError or OverflowError).
_DAMAGE = (pickle.UnpicklingError, EOFError, MemoryError, OverflowError, RecursionError,
           ValueError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError,
           struct.error, zipfile.BadZipFile)

# Extension -> (reader, what such a file is).
_KINDS = {'.safetensors': 'safetensors', '.npz': 'numpy .npz', '.bin': 'PyTorch',
          '.pt': 'PyTorch', '.pth': 'PyTorch', '.pkl': 'Haiku/PyTorch',
          '.pickle': 'Haiku/PyTorch', '.pystate': 'Haiku'}


def load_checkpoint_file(path: str) -> dict[str, Array]:
  """Reads a checkpoint file into a flat {name: np.ndarray} dict (see module doc); a file
  that is empty, truncated or of another kind is one ValueError sentence."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f'Checkpoint file {path!r} does not exist; check the path.')
  ext = os.path.splitext(path)[1].lower()
  if ext not in _KINDS:
    raise ValueError(f'Unknown checkpoint format {ext!r} for {path!r}; expected .safetensors, '
                     f'.npz, .bin/.pt/.pth (PyTorch) or .pkl/.pickle/.pystate (Haiku).')
  kind = _KINDS[ext]
  if os.path.getsize(path) == 0:
    raise ValueError(f'{path!r} is empty (0 bytes), not a {kind} checkpoint; download it '
                     'again.')
  try:
    return _read(path, ext)
  except CheckpointFileError:
    raise
  except OSError as e:
    raise ValueError(f'{path!r} cannot be read ({e.strerror or e}); check its permissions '
                     'and the disk.') from None
  except (*_DAMAGE, _safetensors_error()) as e:
    reason = ' '.join(str(e).split())[:120] or type(e).__name__
    raise ValueError(f'{path!r} is truncated or not a {kind} checkpoint ({type(e).__name__}: '
                     f'{reason}); download it again or pass the right file.') from None


def _read(path: str, ext: str) -> dict[str, Array]:
  if ext == '.safetensors':
    return _load_safetensors(path)
  if ext == '.npz':
    with np.load(path, allow_pickle=False) as data:
      return {k: np.asarray(data[k]) for k in data.files}
  if ext in ('.bin', '.pt', '.pth'):
    return load_torch_zip(path)
  return load_haiku_pickle(path)  # DeepMind's colabs release .pystate pickles


def _safetensors_error() -> type:
  try:
    from safetensors import SafetensorError
  except ImportError:  # no safetensors: nothing of its kind can be raised
    return CheckpointFileError
  return SafetensorError


def _load_safetensors(path: str) -> dict[str, Array]:
  from safetensors.numpy import load_file  # only .safetensors inputs need it
  try:
    return load_file(path)
  except TypeError:
    # numpy has no bfloat16, so safetensors' numpy API refuses bf16 files.
    return _read_safetensors_raw(path)


_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}


def _read_safetensors_raw(path: str) -> dict[str, Array]:
  """The documented layout: u64 header size, JSON header, then raw little-endian data."""
  with open(path, 'rb') as f:
    (header_size,) = struct.unpack('<Q', f.read(8))
    header = json.loads(f.read(header_size))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in _SAFETENSORS_DTYPES:
      raise CheckpointFileError(f'Tensor {name!r} in {path!r} has dtype {info["dtype"]}, which '
                                'this loader does not read; save it as float32.')
    start, end = info['data_offsets']
    dtype = np.dtype(_SAFETENSORS_DTYPES[info['dtype']]).newbyteorder('<')
    out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info['shape']).copy()
  return out


# PyTorch typed storages -> numpy dtypes.
_TORCH_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


class _StorageType:
  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_TORCH_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  """A strided view into a flat storage, copied (torch._utils._rebuild_tensor_v2)."""
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=tuple(size),
      strides=tuple(s * itemsize for s in stride))
  return np.array(view, dtype=storage.dtype.newbyteorder('='))


def _rebuild_parameter(data, *unused_args):
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Rebuilds tensors of a torch.save zip as numpy arrays; refuses any other object."""

  _ALLOWED = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
      ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
  }

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._byteorder = '<' if byteorder == 'little' else '>'
    self._storages: dict[str, Array] = {}

  def find_class(self, module: str, name: str):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if module == 'torch' and name in _TORCH_STORAGE_DTYPES:
      return _StorageType(name)
    raise _ForeignObject(
        f'The checkpoint refers to {module}.{name}, which is not part of a plain state '
        f'dict; save the tensors alone (torch.save(model.state_dict())) or as safetensors.')

  def persistent_load(self, pid):
    _, storage_type, key, _, numel = pid
    if key not in self._storages:
      raw = self._archive.read(f'{self._prefix}/data/{key}')
      dtype = storage_type.dtype.newbyteorder(self._byteorder)
      self._storages[key] = np.frombuffer(raw, dtype=dtype, count=numel)
    return self._storages[key]


def load_torch_zip(path: str) -> dict[str, Array]:
  """Reads a torch.save zip checkpoint into {name: np.ndarray} without importing torch."""
  if not zipfile.is_zipfile(path):
    raise CheckpointFileError(f'{path!r} is not a zip-format PyTorch checkpoint (torch >= '
                              '1.6); re-save it with torch.save or convert it to safetensors.')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise CheckpointFileError(f'{path!r} holds {len(pickles)} data.pkl entries instead of '
                                'one; it is not a torch.save checkpoint.')
    prefix = pickles[0][:-len('/data.pkl')]
    byteorder = 'little'
    if f'{prefix}/byteorder' in archive.namelist():
      byteorder = archive.read(f'{prefix}/byteorder').decode().strip()
    with archive.open(pickles[0]) as f:
      try:
        obj = _TorchUnpickler(f, archive, prefix, byteorder).load()
      except _ForeignObject as e:
        raise CheckpointFileError(f'Cannot read {path!r}: {e}') from None
  return flatten_arrays(obj, sep='.')


def _haiku_mapping(*args):
  # haiku's FlatMapping / frozendict pickle as (cls, (dict,)): a dict is all we need.
  return dict(*args)


class _HaikuUnpickler(pickle.Unpickler):
  """Unpickles nested mappings of numpy arrays; refuses any other object."""

  _NUMPY = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
            ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
            ('numpy', 'ndarray'), ('numpy', 'dtype')}

  def find_class(self, module: str, name: str):
    if (module, name) in self._NUMPY:
      return super().find_class(module, name)
    if module == 'collections' and name == 'OrderedDict':
      return collections.OrderedDict
    if module.startswith('haiku') and name in ('FlatMapping', 'FlatMap', 'frozendict'):
      return _haiku_mapping
    raise _ForeignObject(
        f'The pickle refers to {module}.{name}; only mappings of numpy arrays are read. '
        f'Convert the parameters with jax.device_get before pickling.')


def load_haiku_pickle(path: str) -> dict[str, Array]:
  """Reads a Haiku parameter pickle into {'module/path/param': np.ndarray}.

  {'params': {...}, 'state': {...}} (parameters plus e.g. BatchNorm moving averages)
  is merged into one dict; module names never collide between the two.
  """
  with open(path, 'rb') as f:
    try:
      obj = _HaikuUnpickler(f).load()
    except _ForeignObject as e:
      raise CheckpointFileError(f'Cannot read {path!r}: {e}') from None
  if not isinstance(obj, Mapping):
    raise CheckpointFileError(f'{path!r} does not hold a mapping of Haiku parameters.')
  if obj and set(obj) <= {'params', 'state'} and all(isinstance(v, Mapping)
                                                    for v in obj.values()):
    merged: dict[str, Array] = {}
    for part in obj.values():
      merged.update(flatten_arrays(part, sep='/'))
    return merged
  return flatten_arrays(obj, sep='/')


def flatten_arrays(tree: Any, sep: str = '/', prefix: str = '') -> dict[str, Array]:
  """Nested mappings -> {'a<sep>b<sep>c': array}; non-array leaves (e.g. counters) dropped."""
  out: dict[str, Array] = {}
  if isinstance(tree, Mapping):
    for key, value in tree.items():
      name = f'{prefix}{sep}{key}' if prefix else str(key)
      out.update(flatten_arrays(value, sep, name))
  elif isinstance(tree, (np.ndarray, np.generic)):
    out[prefix] = np.asarray(tree)
  return out
