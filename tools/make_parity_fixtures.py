"""Builds the parity fixtures: tiny Hugging Face Perceivers with random weights, saved
with their inputs and outputs as tests/fixtures/<name>.npz.

Needs torch and transformers (not dependencies of the package; CI never runs this):
  /work/torchenv/bin/python tools/make_parity_fixtures.py            # every fixture
  /work/torchenv/bin/python tools/make_parity_fixtures.py --only language_perceiver
  /work/torchenv/bin/python tools/make_parity_fixtures.py --list

Each family module in tools/parity_fixtures/ exposes FIXTURES (see its __init__). A
fixture .npz holds 'state_dict/<k>', 'inputs/<k>', 'outputs/<k>' arrays and 'meta', a
JSON string with the HF config, num_params_full and the library versions used.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIXTURE_DIR = os.path.join(ROOT, 'tests', 'fixtures')


def collect_fixtures() -> dict:
  """{fixture name: builder} over every family module that exists."""
  from tools import parity_fixtures
  builders = {}
  for info in sorted(pkgutil.iter_modules(parity_fixtures.__path__), key=lambda m: m.name):
    if info.name.startswith('_'):
      continue
    module = importlib.import_module(f'tools.parity_fixtures.{info.name}')
    for name, builder in module.FIXTURES.items():
      if name in builders:
        raise ValueError(f'Fixture name {name!r} is defined twice; names must be unique.')
      builders[name] = builder
  return builders


def _as_float32(a: np.ndarray) -> np.ndarray:
  # Keep fixtures small and exact: floats are stored as float32, ints untouched.
  a = np.asarray(a)
  return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


def save_fixture(name: str, result: dict, out_dir: str = FIXTURE_DIR) -> str:
  import torch
  import transformers
  for key in ('hf_config', 'state_dict', 'inputs', 'outputs', 'num_params_full'):
    if key not in result:
      raise ValueError(f'Fixture {name!r} returned no {key!r}; builders must return all of '
                       f'hf_config, state_dict, inputs, outputs and num_params_full.')
  arrays = {}
  for group in ('state_dict', 'inputs', 'outputs'):
    for k, v in result[group].items():
      arrays[f'{group}/{k}'] = _as_float32(v)
  meta = dict(name=name, hf_config=result['hf_config'],
              num_params_full=int(result['num_params_full']),
              torch=torch.__version__, transformers=transformers.__version__)
  meta.update(result.get('meta', {}))
  arrays['meta'] = np.array(json.dumps(meta, sort_keys=True))
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'{name}.npz')
  np.savez_compressed(path, **arrays)
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--only', action='append', default=[],
                      help='fixture name to build (repeatable); default: all')
  parser.add_argument('--list', action='store_true', help='list fixture names and exit')
  parser.add_argument('--out_dir', default=FIXTURE_DIR)
  args = parser.parse_args(argv)
  builders = collect_fixtures()
  if args.list:
    print('\n'.join(sorted(builders)))
    return
  unknown = [n for n in args.only if n not in builders]
  if unknown:
    parser.error(f'unknown fixture(s) {", ".join(unknown)}; known: {", ".join(sorted(builders))}')
  for name in args.only or sorted(builders):
    path = save_fixture(name, builders[name](), args.out_dir)
    print(f'{name}: {path} ({os.path.getsize(path) / 1024:.0f} KiB)')


if __name__ == '__main__':
  main()
