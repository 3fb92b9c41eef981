"""Reading released checkpoints and writing their arrays into a model.

`load_checkpoint_file` (from readers.py) turns a .safetensors, .npz, PyTorch .bin/.pt
(read without torch) or Haiku .pkl file into a flat {name: np.ndarray} dict.

`assign_params` writes {our/state/path: array} into an nnx model after checking
every parameter is given exactly once with the right shape. Per-family modules
(`hf_<family>.py`) map checkpoint names to our paths with the helpers below.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax
import numpy as np
from flax import nnx
from flax.nnx import graphlib

from perceiver_jax.convert.readers import (flatten_arrays, load_checkpoint_file,  # noqa: F401
                                           load_haiku_pickle, load_torch_zip)

Array = np.ndarray


# ----------------------------------------------------------------------- assigning


def _join(path: Iterable[Any]) -> str:
  return '/'.join(str(p) for p in path)


def variable_paths(model: nnx.Module, types=(nnx.Param, nnx.BatchStat)
                   ) -> tuple[dict[str, nnx.Variable], dict[str, str]]:
  """Every Variable of `types` in `model`.

  Returns ({canonical path: variable}, {alias path: canonical path}). A variable shared
  by two modules (tied embeddings) has one canonical path (the one nnx.state uses) and
  one alias per other place it is reachable from.
  """
  canonical: dict[int, str] = {}
  variables: dict[str, nnx.Variable] = {}
  for path, value in nnx.iter_graph(model):
    if isinstance(value, types):
      canonical[id(value)] = _join(path)
      variables[_join(path)] = value
  aliases: dict[str, str] = {}

  def walk(node, path, ancestors):
    if isinstance(node, nnx.Variable):
      name = _join(path)
      if id(node) in canonical and canonical[id(node)] != name:
        aliases[name] = canonical[id(node)]
      return
    if not graphlib.is_node(node) or id(node) in ancestors:
      return
    for key, child in graphlib.get_node_impl(node).node_dict(node).items():
      if isinstance(key, str) and key.startswith('_pytree__'):
        continue
      walk(child, (*path, key), ancestors | {id(node)})

  walk(model, (), frozenset())
  return variables, aliases


def _listing(names: Iterable[str], limit: int = 12) -> str:
  names = sorted(names)
  shown = ', '.join(names[:limit])
  return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def assign_params(model: nnx.Module, values: Mapping[str, Any]) -> None:
  """Writes `values` ({'encoder/cross_attend/attention/query/kernel': array, ...}) into
  the model's Params and BatchStats, casting to each variable's dtype.

  Every variable must be given exactly once (under its own path or, for a tied weight,
  any path it is reachable from) with the model's shape. Nothing is written unless all
  checks pass. Raises ValueError naming the offending parameters.
  """
  variables, aliases = variable_paths(model)
  resolved: dict[str, tuple[str, Any]] = {}
  unknown = []
  for key, value in values.items():
    name = aliases.get(key, key)
    if name not in variables:
      unknown.append(key)
      continue
    if name in resolved:
      raise ValueError(f'Parameter {name!r} is given twice (as {resolved[name][0]!r} and '
                       f'{key!r}); they are one tied weight, so give it once.')
    resolved[name] = (key, value)
  missing = [name for name in variables if name not in resolved]
  problems = []
  # Shapes beside the names: a missing parameter is often one present under another shape.
  if unknown:
    problems.append(f'the checkpoint has {len(unknown)} parameters the model does not: '
                    f'{_listing(f"{k} {tuple(np.shape(values[k]))}" for k in unknown)}')
  if missing:
    problems.append(f'the model has {len(missing)} parameters the checkpoint does not give: '
                    + _listing(f'{n} {tuple(variables[n].get_value().shape)}' for n in missing))
  if problems:
    raise ValueError('The checkpoint does not match the model config: '
                     + '; '.join(problems) + '.')
  for name, (key, value) in resolved.items():
    want = tuple(variables[name].get_value().shape)
    got = tuple(np.shape(value))
    if want != got:
      raise ValueError(f'Parameter {name!r} has shape {want} in the model but {got} in the '
                       f'checkpoint (key {key!r}); the checkpoint was made for another config.')
  for name, (_, value) in resolved.items():
    variable = variables[name]
    old = variable.get_value()
    new = np.asarray(value).astype(old.dtype)
    # Keep the placement of an already sharded model.
    sharding = getattr(old, 'sharding', None)
    variable.set_value(jax.device_put(new, sharding) if sharding is not None
                       else jax.numpy.asarray(new))


# ------------------------------------------------------------------ mapping helpers


def torch_linear(w: Array) -> Array:
  """torch.nn.Linear weight [out, in] -> our kernel [in, out]."""
  return np.ascontiguousarray(np.asarray(w).T)


def torch_conv(w: Array) -> Array:
  """torch ConvNd weight [out, in, *window] -> flax kernel [*window, in, out]."""
  w = np.asarray(w)
  return np.ascontiguousarray(np.moveaxis(w, (0, 1), (-1, -2)))


class StateDictReader:
  """Takes entries of a checkpoint dict by name and reports the ones never taken.

  Per-family converters read through it so a checkpoint with extra weights (another
  architecture) fails loudly instead of being half-used.
  """

  def __init__(self, state_dict: Mapping[str, Any], source: str = 'checkpoint'):
    self._sd = {k: np.asarray(v) for k, v in state_dict.items()}
    self._used: set[str] = set()
    self.source = source

  def __contains__(self, key: str) -> bool:
    return key in self._sd

  def keys(self):
    return self._sd.keys()

  def take(self, key: str) -> Array:
    if key not in self._sd:
      raise ValueError(f'The {self.source} has no entry {key!r} ({self._beside(key)}); it was '
                       'made for another architecture or config.')
    self._used.add(key)
    return self._sd[key]

  def _beside(self, key: str) -> str:
    """The entries of the module `key` belongs to, with their shapes."""
    sep = '/' if '/' in key else '.'
    parent = key.rsplit(sep, 1)[0] + sep if sep in key else ''
    siblings = [k for k in self._sd if parent and k.startswith(parent)]
    if not siblings:
      return f'nor any entry under {parent!r}; it holds {len(self._sd)} entries'
    return 'beside it: ' + _listing(f'{k} {self._sd[k].shape}' for k in siblings)

  def check_all_used(self) -> None:
    unused = [k for k in self._sd if k not in self._used]
    if unused:
      raise ValueError(f'The {self.source} has {len(unused)} entries this model does not '
                       f'use: {_listing(unused)}; it was made for another architecture.')


def hf_layer_norm(reader: StateDictReader, hf: str, ours: str, out: dict) -> None:
  """torch LayerNorm weight/bias -> our scale/bias."""
  out[f'{ours}/scale'] = reader.take(f'{hf}.weight')
  out[f'{ours}/bias'] = reader.take(f'{hf}.bias')


def hf_linear(reader: StateDictReader, hf: str, ours: str, out: dict) -> None:
  """torch Linear weight/bias -> our kernel [in, out] / bias (bias optional)."""
  out[f'{ours}/kernel'] = torch_linear(reader.take(f'{hf}.weight'))
  if f'{hf}.bias' in reader:
    out[f'{ours}/bias'] = reader.take(f'{hf}.bias')


def hf_perceiver_layer(reader: StateDictReader, hf: str, ours: str, out: dict, *,
                       cross: bool) -> None:
  """HF PerceiverLayer at `hf` -> our CrossAttention (cross=True) or SelfAttention at `ours`."""
  query_norm = 'query_norm' if cross else 'norm'
  hf_layer_norm(reader, f'{hf}.attention.self.layernorm1', f'{ours}/{query_norm}', out)
  if cross:
    hf_layer_norm(reader, f'{hf}.attention.self.layernorm2', f'{ours}/kv_norm', out)
  for name in ('query', 'key', 'value'):
    hf_linear(reader, f'{hf}.attention.self.{name}', f'{ours}/attention/{name}', out)
  hf_linear(reader, f'{hf}.attention.output.dense', f'{ours}/attention/output', out)
  hf_layer_norm(reader, f'{hf}.layernorm', f'{ours}/mlp_norm', out)
  hf_linear(reader, f'{hf}.mlp.dense1', f'{ours}/mlp/dense_in', out)
  hf_linear(reader, f'{hf}.mlp.dense2', f'{ours}/mlp/dense_out', out)


def hf_perceiver_encoder(reader: StateDictReader, hf: str, ours: str, out: dict, *,
                         num_self_attends: int) -> None:
  """HF PerceiverModel at `hf` ('perceiver'): latents + encoder -> our PerceiverEncoder."""
  out[f'{ours}/z_pos_enc/pos_embs'] = reader.take(f'{hf}.embeddings.latents')
  hf_perceiver_layer(reader, f'{hf}.encoder.cross_attention', f'{ours}/cross_attend', out,
                     cross=True)
  for i in range(num_self_attends):
    hf_perceiver_layer(reader, f'{hf}.encoder.self_attends.{i}', f'{ours}/self_attends/{i}',
                       out, cross=False)


def haiku_attention_block(params: StateDictReader, hk: str, ours: str, out: dict, *,
                          cross: bool) -> None:
  """DeepMind CrossAttention/SelfAttention at Haiku path `hk` -> ours (names from
  HAIKU_NAMES in attention.py: layer_norm*, attention/linear*, mlp/linear*)."""
  norms = (('query_norm', 'layer_norm'), ('kv_norm', 'layer_norm_1'),
           ('mlp_norm', 'layer_norm_2')) if cross else (
               ('norm', 'layer_norm'), ('mlp_norm', 'layer_norm_1'))
  for our_name, hk_name in norms:
    out[f'{ours}/{our_name}/scale'] = params.take(f'{hk}/{hk_name}/scale')
    out[f'{ours}/{our_name}/bias'] = params.take(f'{hk}/{hk_name}/offset')
  for our_name, hk_name in (('query', 'linear'), ('key', 'linear_1'), ('value', 'linear_2'),
                            ('output', 'linear_3')):
    haiku_linear(params, f'{hk}/attention/{hk_name}', f'{ours}/attention/{our_name}', out)
  haiku_linear(params, f'{hk}/mlp/linear', f'{ours}/mlp/dense_in', out)
  haiku_linear(params, f'{hk}/mlp/linear_1', f'{ours}/mlp/dense_out', out)


def haiku_linear(params: StateDictReader, hk: str, ours: str, out: dict) -> None:
  """hk.Linear w [in, out] / b -> our kernel / bias (same layout, no transpose)."""
  out[f'{ours}/kernel'] = params.take(f'{hk}/w')
  if f'{hk}/b' in params:
    out[f'{ours}/bias'] = params.take(f'{hk}/b')


def haiku_perceiver_encoder(params: StateDictReader, hk: str, ours: str, out: dict, *,
                            num_self_attends: int) -> None:
  """DeepMind PerceiverEncoder at Haiku path `hk` (e.g. 'perceiver_encoder') -> ours."""
  out[f'{ours}/z_pos_enc/pos_embs'] = params.take(
      f'{hk}/~/trainable_position_encoding/pos_embs')
  haiku_attention_block(params, f'{hk}/~/cross_attention', f'{ours}/cross_attend', out,
                        cross=True)
  for i in range(num_self_attends):
    suffix = '' if i == 0 else f'_{i}'
    haiku_attention_block(params, f'{hk}/~/self_attention{suffix}', f'{ours}/self_attends/{i}',
                          out, cross=False)
