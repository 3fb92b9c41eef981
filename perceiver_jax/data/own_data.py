"""Your own datasets, prepared offline on first use like the embedded ones (docs/datasets.md).

Two ways, chosen by the data config:
  builder_module  a dotted module name or a .py path defining a TFDS GeneratorBasedBuilder
                  named like `data.name` ('my_shapes' or 'my_shapes/config'); importing it
                  registers it with TFDS.
  npz_folder / image_folder (`data.name`) with `data.source_dir`: a folder turned into a
                  dataset by builders/folders.py, keyed by a hash of the folder's path, its
                  files (names, sizes, modification times) and the options, so different
                  folders, or a folder whose files changed, never share prepared files.

`resolve` returns an OwnDataset for `pipeline.prepare`, or None for embedded and catalogue
datasets.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys

from etils import epath
import tensorflow_datasets as tfds

from perceiver_jax.data.builders import folders
from perceiver_jax.errors import DatasetError

FOLDER_BUILDERS = {'npz_folder': folders.NpzFolder, 'image_folder': folders.ImageFolder}


@dataclasses.dataclass(frozen=True)
class OwnDataset:
  """A dataset perceiver_jax may prepare offline: `name` (TFDS name with config, for the
  lock file and messages) and `builder(data_dir)` (prepared or not)."""

  name: str
  builder: Callable[[str], tfds.core.DatasetBuilder]


def resolve(data_config) -> OwnDataset | None:
  """The OwnDataset the data config names, or None (embedded or catalogue dataset)."""
  name = data_config.name
  base = name.split('/')[0].split(':')[0]
  module = getattr(data_config, 'builder_module', '') or ''
  source_dir = getattr(data_config, 'source_dir', None) or None
  if base in FOLDER_BUILDERS:
    if module:
      raise DatasetError(
          f"config.data.builder_module='{module}' is set but data.name '{name}' is a folder "
          "dataset; clear builder_module or name your builder's dataset.")
    return _folder(data_config, base)
  if source_dir:
    raise DatasetError(
        f"config.data.source_dir is set but data.name '{name}' is not npz_folder or "
        "image_folder, which read it; use one of those or clear source_dir.")
  if module:
    return _from_module(module, name, base)
  return None


# ---------------------------------------------------------------------------
# builder_module
# ---------------------------------------------------------------------------


def _catalogue_clash(cls_name: str) -> bool:
  # TFDS's own datasets live in tensorflow_datasets/datasets/<name>/ (found without import).
  return importlib.util.find_spec(f'tensorflow_datasets.datasets.{cls_name}') is not None


def _clash_error(module: str, ds_name: str) -> DatasetError:
  return DatasetError(
      f"config.data.builder_module '{module}' defines dataset '{ds_name}', a name TFDS (or "
      "perceiver_jax) already uses; rename your builder class (class MyShapes3d is dataset "
      "my_shapes3d) and config.data.name with it.")


def _import(module: str):
  """Imports a dotted module name or a .py file once per process (a second import would
  register its builders twice)."""
  if not module.endswith('.py'):
    return importlib.import_module(module)
  path = os.path.abspath(os.path.expanduser(module))
  key = 'perceiver_jax_own_' + hashlib.sha1(path.encode()).hexdigest()[:10]
  if key in sys.modules:
    return sys.modules[key]
  if not os.path.isfile(path):
    raise FileNotFoundError(path)
  spec = importlib.util.spec_from_file_location(key, path)
  loaded = importlib.util.module_from_spec(spec)
  sys.modules[key] = loaded
  try:
    spec.loader.exec_module(loaded)
  except BaseException:
    del sys.modules[key]
    raise
  return loaded


def _from_module(module: str, name: str, base: str) -> OwnDataset:
  # Listing imports TFDS's own builders first, so a class named like one fails at import.
  tfds.list_builders(with_community_datasets=False)
  try:
    loaded = _import(module)
  except ValueError as e:
    found = re.search(r'Dataset with name (\S+) already registered', str(e))
    if found:
      raise _clash_error(module, found.group(1).rstrip('.')) from e
    raise DatasetError(f"config.data.builder_module '{module}' cannot be imported "
                       f"({type(e).__name__}: {' '.join(str(e).split())}); fix it.") from e
  except Exception as e:  # missing file or module, or an error inside it
    raise DatasetError(f"config.data.builder_module '{module}' cannot be imported "
                       f"({type(e).__name__}: {' '.join(str(e).split())}); give a module "
                       "name importable from here or the path of a .py file.") from e
  builders = {cls.name: cls for _, cls in inspect.getmembers(loaded, inspect.isclass)
              if issubclass(cls, tfds.core.DatasetBuilder) and cls.__module__ == loaded.__name__}
  for cls in builders.values():
    if _catalogue_clash(cls.name):
      raise _clash_error(module, cls.name)
    # TFDS infers the folder of README/CITATIONS from a package, which a lone file lacks.
    if 'pkg_dir_path' not in cls.__dict__ or cls.pkg_dir_path is None:
      cls.pkg_dir_path = epath.Path(inspect.getfile(cls)).parent
  cls = builders.get(base)
  if cls is None:
    raise DatasetError(
        f"config.data.builder_module '{module}' defines no TFDS builder named '{base}' (it "
        f"defines {sorted(builders) or 'none'}); set config.data.name to one of them (class "
        "MyShapes is dataset my_shapes).")
  if inspect.isabstract(cls):
    raise DatasetError(
        f"Builder class {cls.__name__} in '{module}' is abstract (it lacks "
        f"{', '.join(sorted(cls.__abstractmethods__))}); define them.")

  def builder(data_dir: str) -> tfds.core.DatasetBuilder:
    try:
      made = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # TFDS raises several types for unknown configs/versions
      configs = [c.name for c in cls.BUILDER_CONFIGS] or ['(none)']
      raise DatasetError(
          f"Dataset '{name}' names an unknown config or version of your builder '{base}' "
          f"({type(e).__name__}); use one of configs {configs}.") from e
    # Once prepared, read through the files alone: data sources then pickle without the
    # module (grain worker processes cannot import a module loaded from a file path).
    return _prepared_or(made)

  return OwnDataset(name, builder)


# ---------------------------------------------------------------------------
# npz_folder / image_folder
# ---------------------------------------------------------------------------


def _folder(data_config, kind: str) -> OwnDataset:
  if data_config.name != kind:
    raise DatasetError(f"config.data.name='{data_config.name}' has a config part; use "
                       f"'{kind}' (the prepared copy is keyed by config.data.source_dir).")
  source = getattr(data_config, 'source_dir', None)
  if not source or not os.path.isdir(os.path.expanduser(source)):
    raise DatasetError(
        f"Dataset '{kind}' reads config.data.source_dir, but {source!r} is not a folder; "
        "set --config.data.source_dir=/path/to/your/folder.")
  source = os.path.abspath(os.path.expanduser(source))
  fraction = float(getattr(data_config, 'test_fraction', 0.2))
  if not 0 < fraction < 1:
    raise DatasetError(f'config.data.test_fraction={fraction} is not in (0, 1); use e.g. 0.2.')
  resize = tuple(getattr(data_config, 'image_resize', ()) or ())
  if resize and (len(resize) != 2 or not all(isinstance(n, int) and n > 0 for n in resize)):
    raise DatasetError(f'config.data.image_resize={resize} is invalid; use (height, width) '
                       'in pixels, e.g. "(32, 32)", or () to keep the sizes.')
  files = folders.list_files(kind, source)
  stats = [(rel, st.st_size, st.st_mtime_ns) for rel in [*sorted(
      f for fs in files.values() for f in fs), 'classes.txt']
           for st in [_stat(os.path.join(source, rel))] if st]
  # Options that change the stored data are part of the key; the others are not.
  options = {'fraction': fraction if 'all' in files else None,
             'resize': list(resize) if kind == 'image_folder' else None}
  digest = hashlib.sha1(json.dumps([source, stats, options]).encode()).hexdigest()[:12]
  slug = re.sub(r'[^a-z0-9]+', '_', os.path.basename(source).lower()).strip('_') or 'data'
  config = folders.FolderConfig(name=f'{slug}_{digest}', source_dir=source, files=files,
                                test_fraction=fraction, image_resize=resize)
  cls = FOLDER_BUILDERS[kind]

  def builder(data_dir: str) -> tfds.core.DatasetBuilder:
    # Once prepared, features come from the files: the folder is not scanned again (and
    # TFDS does not log the custom config on every run).
    prepared = os.path.join(data_dir, kind, config.name, str(cls.VERSION))
    if os.path.exists(os.path.join(prepared, 'dataset_info.json')):
      return tfds.builder_from_directory(prepared)
    return cls(data_dir=data_dir, config=config)

  return OwnDataset(f'{kind}/{config.name}', builder)


def _prepared_or(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """A read-only builder of the prepared files, or `builder` when not yet prepared."""
  if os.path.exists(os.path.join(builder.data_dir, 'dataset_info.json')):
    return tfds.builder_from_directory(builder.data_dir)
  return builder


def _stat(path: str):
  try:
    return os.stat(path)
  except FileNotFoundError:
    return None
