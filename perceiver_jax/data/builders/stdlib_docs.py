"""Docstrings of Python's standard library as a labelled English text corpus (TFDS, offline).

Documents are the docstrings of the modules, classes and functions of the files that
python_stdlib reads (the same eligible `*.py` files: no tests, no third-party code), taken
with `ast` (nothing is imported or run) and cleaned by `ast.get_docstring` (indentation
removed). Docstrings shorter than `min_chars` characters (16 in both configs) are dropped.
Each document keeps its file's split, python_stdlib's SHA-256 file-level split (5% test),
so no file has documents in both splits. Examples are stored in file path order, then
source order (a module docstring, then its classes and functions, depth first).

Features per example:
  text   text            the docstring (UTF-8; a few have non-ASCII characters)
  label  class label     what it documents: 'module', 'class' or 'function'
                         (async functions and methods count as functions)
  path   text            file path relative to the stdlib root ('json/decoder.py')
  name   text            qualified name in the file ('JSONDecoder.decode'; '' for the module)
supervised_keys = ('text', 'label'): a text-classification dataset, and a text corpus for
byte-level masked language modelling (the 'text' feature, as TFDS c4 and wikipedia have).

Configs:
  full  every eligible file (Python 3.11.7: 8,148 train + 298 test docstrings).
  tiny  the first 8 train + 3 test eligible files under 32 KiB in path order; for tests.
The corpus depends on the Python version that prepares it (written into the description
and `metadata.json`), as python_stdlib's does.
"""

from __future__ import annotations

import ast
import dataclasses
import os

from etils import epath
import tensorflow_datasets as tfds

from perceiver_jax.data.builders import python_stdlib
from perceiver_jax.errors import UserError

LABELS = ('module', 'class', 'function')
SPLITS = python_stdlib.SPLITS


_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def docstrings(source: bytes, min_chars: int = 16) -> list[tuple[str, str, str]]:
  """(qualified name, label, cleaned docstring) of a module's source, in source order
  (depth first); [] if the source does not parse."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return []
  found = []

  def visit(node, name: str):
    label = ('module' if isinstance(node, ast.Module)
             else 'class' if isinstance(node, ast.ClassDef) else 'function')
    doc = ast.get_docstring(node, clean=True)
    if doc and len(doc) >= min_chars and _is_utf8(doc):
      found.append((name, label, doc))
    for child in _definitions(node.body):
      visit(child, f'{name}.{child.name}' if name else child.name)

  visit(tree, '')
  return found


def _is_utf8(text: str) -> bool:
  """False for a docstring with a lone surrogate ('\\udc80' escapes), which has no UTF-8."""
  try:
    text.encode('utf-8')
  except UnicodeEncodeError:
    return False
  return True


def _definitions(body) -> list:
  """Class and function definitions in a block of statements, in source order, including
  those inside if/try/with/for/while blocks (not those inside other definitions)."""
  out = []
  for stmt in body:
    if isinstance(stmt, _DEFS):
      out.append(stmt)
      continue
    for field in ('body', 'handlers', 'cases', 'orelse', 'finalbody'):  # source order
      for item in getattr(stmt, field, None) or ():
        # except clauses and match cases hold a body; the other fields are statements
        out.extend(_definitions(item.body if field in ('handlers', 'cases') else [item]))
  return out


@dataclasses.dataclass(kw_only=True)
class StdlibDocsConfig(tfds.core.BuilderConfig):
  """files_per_split: cap per split (None = all); max_file_bytes: skip larger files when
  capping; min_chars: shortest docstring kept."""

  files_per_split: dict[str, int] | None = None
  max_file_bytes: int | None = None
  min_chars: int = 16

  def __post_init__(self):
    if self.min_chars < 1:
      raise UserError(f'stdlib_docs min_chars must be >= 1, got {self.min_chars}.')


class StdlibDocs(tfds.core.GeneratorBasedBuilder):
  """Docstrings of the Python standard library, labelled module / class / function."""

  code_path = epath.Path(__file__)  # avoids TFDS's importlib_resources lookup
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Docstrings of python_stdlib files; its file-level split.'}
  SPLITS = SPLITS
  BUILDER_CONFIGS = [
      StdlibDocsConfig(name='full', description='Docstrings of all eligible stdlib files.'),
      StdlibDocsConfig(name='tiny', files_per_split={'train': 8, 'test': 3},
                       max_file_bytes=32768,
                       description='Docstrings of 8 train + 3 test small files.'),
  ]
  DEFAULT_CONFIG_NAME = 'full'

  def _info(self) -> tfds.core.DatasetInfo:
    version = python_stdlib.python_version()
    return self.dataset_info_from_configs(
        description=f'{__doc__}\nPrepared from Python {version} '
                    f'({python_stdlib.stdlib_root()}).',
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=LABELS),
            'path': tfds.features.Text(),
            'name': tfds.features.Text(),
        }),
        supervised_keys=('text', 'label'),
        metadata=tfds.core.MetadataDict(python_version=version),
        disable_shuffling=True,  # keep file and source order on disk
        homepage='https://docs.python.org/3/library/',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the corpus is the interpreter's own library
    root = python_stdlib.stdlib_root()
    files = python_stdlib.corpus_files(root)
    cfg = self.builder_config
    if cfg.files_per_split is not None:
      files = {split: self._cap(root, paths, cfg.files_per_split[split])
               for split, paths in files.items()}
    return {split: self._generate_examples(root, files[split]) for split in SPLITS}

  def _cap(self, root: str, paths: list[str], count: int) -> list[str]:
    limit = self.builder_config.max_file_bytes
    kept = []
    for rel in paths:
      if len(kept) == count:
        break
      full = os.path.join(root, rel)
      if limit is not None and os.path.getsize(full) > limit:
        continue
      with open(full, 'rb') as f:  # only files with at least one document count
        if docstrings(f.read(), self.builder_config.min_chars):
          kept.append(rel)
    return kept

  def _generate_examples(self, root: str, paths: list[str]):
    for rel in paths:
      with open(os.path.join(root, rel), 'rb') as f:
        source = f.read()
      for i, (name, label, doc) in enumerate(docstrings(source, self.builder_config.min_chars)):
        # Key = file, position and name: unique even for redefined names.
        yield f'{rel}:{i}:{name}', {'text': doc, 'label': label, 'path': rel, 'name': name}
