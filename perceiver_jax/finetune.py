"""Fine-tuning: a fresh train state's weights replaced by those of another checkpoint.

config.init_from names the checkpoint (a train.py or perceiver-convert workdir),
config.init_exclude the parameters that stay freshly initialised (a new head) and
config.init_rename the ones read under another path. The step, optimizer state and RNG
stay fresh; a resumed run never calls this (its own checkpoint wins).
"""

from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp

from perceiver_jax import checkpoint as ckpt
from perceiver_jax.errors import UserError


def parse_rename(text: str) -> dict[str, str]:
  """'a/b=c/d,e=f' (config.init_rename) -> {'a/b': 'c/d', 'e': 'f'}."""
  pairs = {}
  for item in filter(None, (part.strip() for part in (text or '').split(','))):
    name, equals, source = item.partition('=')
    if not equals or not name.strip() or not source.strip():
      raise UserError(f'config.init_rename item {item!r} is not THIS_PATH=CHECKPOINT_PATH; '
                      "write e.g. 'preprocessor/embeddings=postprocessor/embeddings'.")
    pairs[name.strip()] = source.strip()
  return pairs


def init_from_checkpoint(state, shardings, path: str, exclude: str = '', rename=None):
  """Replaces the weights of a freshly initialised `state` by those of a checkpoint.

  Parameters whose path (e.g. 'decoder/decoder/output/kernel') matches the regular
  expression `exclude` keep their fresh initialisation: a new classifier head, say.
  Every other parameter must exist in the checkpoint with the same shape, under its own
  path or the one `rename` ({this model's path: the checkpoint's path}, or parse_rename's
  string) gives: e.g. an MLM checkpoint stores the language Perceiver's byte table, tied
  to its output layer, as 'postprocessor/embeddings', which a classifier reads as
  'preprocessor/embeddings'. The step, optimizer state and RNG stay fresh: this starts a
  new run from pretrained weights.
  """
  item_path, step = ckpt.find_checkpoint(path)
  skip = re.compile(exclude) if exclude else None
  rename = parse_rename(rename) if isinstance(rename, str) else dict(rename or {})
  loaded = {}
  for item in ('params', 'model_state'):
    tree, tree_shardings = getattr(state, item), getattr(shardings, item)
    have = ckpt.saved_shapes(item_path, item)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = list(ckpt.array_shapes(tree))
    keep = {}  # this model's path -> the checkpoint's
    for name, (_, leaf) in zip(names, leaves):
      if skip is not None and skip.fullmatch(name):
        continue
      source = rename.get(name, name)
      if source not in have:
        raise UserError(f'init_from checkpoint {item_path} has no {item} entry {source!r} that '
                        f'this model needs; add it to config.init_exclude to keep it freshly '
                        f'initialised, or use a checkpoint of this architecture.')
      if have[source] != tuple(leaf.shape):
        raise UserError(f'{item} entry {source!r} has shape {have[source]} in init_from '
                        f'checkpoint {item_path} but {tuple(leaf.shape)} in this model; add '
                        f'it to config.init_exclude to train it from scratch.')
      keep[name] = source
    loaded[item] = (tree, tree_shardings, keep)

  def target_of(item):
    tree, tree_shardings, keep = loaded[item]
    return _select(tree, tree_shardings, keep)

  params, model_state = ckpt.restore_weights(item_path, target_of('params'),
                                        target_of('model_state'))
  params = _rename_back(params, loaded['params'][0], loaded['params'][2])
  model_state = _rename_back(model_state, loaded['model_state'][0], loaded['model_state'][2])
  new_params = _merge(state.params, params)
  new_model_state = _merge(state.model_state, model_state)
  if jax.process_index() == 0:
    kept = len(jax.tree.leaves(params))
    logging.info('Initialised %d parameter arrays from %s (step %d)%s.', kept, item_path,
                 step, f'; kept fresh: /{exclude}/' if exclude else '')
  # A run that keeps a moving average starts it at the loaded weights.
  ema_params = None if state.ema_params is None else jax.tree.map(jnp.copy, new_params)
  return state.replace(params=new_params, model_state=new_model_state, ema_params=ema_params)


def _path_keys(path) -> list:
  return [getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))) for k in path]


def _select(tree, tree_shardings, keep: dict[str, str]):
  """The leaves of `tree` at the paths in `keep`, as sharded ShapeDtypeStructs in a nested
  dict at the checkpoint's paths keep[path] (a restore target)."""
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  flat_shardings = jax.tree.leaves(tree_shardings)
  for (path, leaf), sharding in zip(flat, flat_shardings):
    keys = _path_keys(path)
    name = '/'.join(map(str, keys))
    if name not in keep:
      continue
    if keep[name] != name:
      keys = keep[name].split('/')
    node = out
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[keys[-1]] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
  return out


def _rename_back(restored, tree, keep: dict[str, str]):
  """`restored` (at the checkpoint's paths) with renamed leaves moved to this model's."""
  renamed = {name: source for name, source in keep.items() if source != name}
  if not renamed:
    return restored

  def take(keys):
    node = restored
    for key in keys:
      node = node[key]
    return node

  values = {name: take(source.split('/')) for name, source in renamed.items()}
  for source in set(renamed.values()) - set(keep):  # read under another name only
    keys = source.split('/')
    while keys:  # drop the leaf, then the dicts it leaves empty
      node = take(keys[:-1])
      del node[keys[-1]]
      if node or len(keys) == 1:
        break
      keys = keys[:-1]
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = _path_keys(path)
    name = '/'.join(map(str, keys))
    if name in values:
      node = restored
      for key in keys[:-1]:
        node = node.setdefault(key, {})
      node[keys[-1]] = values[name]
  return restored


def _merge(base, update):
  """`base` (a nested dict) with the leaves present in `update` replaced."""
  if not isinstance(update, dict):
    return update
  merged = dict(base)
  for key, value in update.items():
    merged[key] = _merge(base[key], value)
  return merged
