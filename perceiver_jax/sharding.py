"""Device mesh from config, logical-axis rules, and shardings of state and batches.

Parameters carry logical axis names (e.g. ('embed', 'mlp')); one rule table in the config
maps each logical name to mesh axes (MaxText style). A dimension whose size is not divisible
by its mesh axes is replicated instead, so small or odd layers never block a layout.

Layouts. One rule table serves every layout, because mesh axes of size 1 are dropped: the
mesh shape alone picks the layout. With the default rules
  data=N                  pure data parallel: batch split N ways, everything else replicated;
  fsdp=N                  FSDP: batch split N ways, and every parameter (hence its optimizer
                          moments) split N ways on its model-width dim ('embed', ...);
  tensor=N                tensor parallel: attention heads (q/k/v output channels, output
                          projection input) and the MLP hidden dim split N ways;
and any product of them (data=2 x fsdp=2 x tensor=2). `config.sharding.layout` is an optional
shortcut that writes the mesh for you (see LAYOUTS and layout_mesh_config).

Activations follow the same rules: the model calls perceiver_jax/model/partitioning.py's
`constrain` at block boundaries, and the train/eval steps trace inside its
`with_logical_sharding(fn, mesh, rules_dict(config.sharding.rules))`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from perceiver_jax.errors import UserError
from perceiver_jax.model.partitioning import logical_to_spec

MESH_AXES = ('data', 'fsdp', 'tensor')
# The batch dimension of inputs and activations is split over every data-like axis.
BATCH_AXES = ('data', 'fsdp')


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """Resolves the config's axis sizes (one may be -1: "the rest") against the devices."""
  sizes = [int(mesh_config[name]) for name in MESH_AXES]
  bad = [(n, s) for n, s in zip(MESH_AXES, sizes) if s == 0 or s < -1]
  if bad:
    raise UserError(f'Mesh axis {bad[0][0]}={bad[0][1]} is invalid: use a positive size, or -1 '
                    'for "all remaining devices" (config.mesh).')
  if sizes.count(-1) > 1:
    raise UserError('Only one mesh axis may be -1 ("the rest"); set the others explicitly '
                    f'(config.mesh = {dict(zip(MESH_AXES, sizes))}).')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise UserError(f'The mesh axes {dict(zip(MESH_AXES, sizes))} do not divide the '
                      f'{num_devices} available devices; choose sizes whose product divides it.')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(f'The mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices '
                    f'but {num_devices} are available; make the product of config.mesh sizes '
                    f'equal {num_devices} (or set one axis to -1).')
  return tuple(sizes)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over all devices (of all processes)."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=devices)


# config.sharding.layout -> the mesh axes it puts devices on, in the order they take them.
LAYOUTS = {
    'dp': ('data',),
    'fsdp': ('fsdp',),
    'tp': ('tensor',),
    'dp_fsdp': ('data', 'fsdp'),
    'dp_tp': ('data', 'tensor'),
    'fsdp_tp': ('fsdp', 'tensor'),
    'dp_fsdp_tp': ('data', 'fsdp', 'tensor'),
}


def layout_mesh_config(layout: str, mesh_config) -> dict[str, int]:
  """config.mesh as `layout` writes it ('' = config.mesh unchanged).

  Axes the layout does not name get size 1; its first axis takes the devices left over
  (-1) unless config.mesh sets it > 1; its other axes need their size set > 1 in config.mesh.
  E.g. layout='fsdp_tp' with mesh.tensor=2 on 8 devices -> data=1, fsdp=4, tensor=2.
  """
  sizes = {name: int(mesh_config[name]) for name in MESH_AXES}
  if not layout:
    return sizes
  if layout not in LAYOUTS:
    raise UserError(f'config.sharding.layout={layout!r} is unknown; use one of '
                    f'{", ".join(repr(k) for k in LAYOUTS)} or \'\' (config.mesh as written).')
  named = LAYOUTS[layout]
  for name in MESH_AXES:
    if name not in named and sizes[name] > 1:
      raise UserError(f'config.sharding.layout={layout!r} puts no devices on {name!r} but '
                      f'config.mesh.{name}={sizes[name]}; set config.mesh.{name}=1 or choose '
                      'a layout that names it.')
  for name in named[1:]:
    if sizes[name] <= 1:
      raise UserError(f'config.sharding.layout={layout!r} needs the size of {name!r}: set '
                      f'config.mesh.{name} > 1 (e.g. --config.mesh.{name}=2).')
  out = {name: (sizes[name] if name in named else 1) for name in MESH_AXES}
  if out[named[0]] <= 1:
    out[named[0]] = -1
  return out


def mesh_from_config(config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of an experiment config: config.mesh, rewritten by config.sharding.layout."""
  layout = config.sharding.get('layout', '') or ''
  return make_mesh(layout_mesh_config(layout, config.mesh), devices)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def eval_batch_size(requested: int, mesh: Mesh) -> int:
  """The eval batch rounded up to split evenly over devices and processes.

  Eval batches are padded and masked, so rounding up never changes the metrics; it lets
  any checkpoint be evaluated on any mesh without touching the config.
  """
  multiple = math.lcm(data_parallel_size(mesh), jax.process_count())
  return -(-int(requested) // multiple) * multiple


def rules_dict(rules) -> dict[str, tuple[str, ...]]:
  """The config's rule list [(logical, mesh_axes), ...] as {logical: (mesh axes...)}."""
  out = {}
  for logical, axes in rules:
    if axes is None:
      axes = ()
    elif isinstance(axes, str):
      axes = (axes,)
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
      raise UserError(f'Sharding rule {logical!r} -> {unknown[0]!r} names an unknown mesh axis; '
                      f'use one of {MESH_AXES} or None (config.sharding.rules).')
    out[logical] = tuple(axes)
  return out


def logical_names(abstract_module: nnx.Module, variable_type=nnx.Param) -> dict:
  """Pure-dict tree of the logical axis names each variable was annotated with."""
  state = nnx.state(abstract_module, variable_type)
  names = jax.tree.map(lambda v: v.get_metadata().get('out_sharding'), state,
                       is_leaf=lambda x: isinstance(x, nnx.Variable))
  return _to_nested_dict(names)


def _to_nested_dict(tree) -> Any:
  if isinstance(tree, Mapping):
    return {k: _to_nested_dict(v) for k, v in tree.items()}
  return tree


def tree_shardings(abstract_tree, names_tree, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree of arrays given a matching tree of logical names."""
  def one(leaf, names):
    return NamedSharding(mesh, logical_to_spec(names, leaf.shape, mesh, rules))
  return jax.tree.map(one, abstract_tree, names_tree,
                      is_leaf=lambda x: x is None or isinstance(x, tuple))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-like axes; the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def describe(shardings_tree, abstract_tree) -> str:
  """A short table of how many bytes each device holds, for the start-of-run log."""
  total = 0
  per_device = 0
  for sharding, leaf in zip(jax.tree.leaves(shardings_tree), jax.tree.leaves(abstract_tree)):
    nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    total += nbytes
    shard = sharding.shard_shape(leaf.shape)
    per_device += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return f'state {total / 2**20:.2f} MiB in all, {per_device / 2**20:.2f} MiB per device'
