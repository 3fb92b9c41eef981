"""Device mesh from config, logical-axis rules, and shardings of state and batches.

Parameters carry logical axis names (e.g. ('embed', 'mlp')); one rule table in the config
maps each logical name to mesh axes (MaxText style). A dimension whose size is not divisible
by its mesh axes is replicated instead, so small or odd layers never block a layout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from perceiver_jax.errors import UserError

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


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, tuple[str, ...]]) -> P:
  """PartitionSpec for one array: each logical name mapped by the rules.

  A mesh axis is used at most once per array, and a dimension not divisible by the product
  of its mesh axes is replicated (logged once) rather than failing.
  """
  if not names:
    return P()
  used: set[str] = set()
  spec = []
  for name, size in zip(names, shape):
    # Size-1 mesh axes are dropped so specs stay readable (and equal across meshes).
    axes = tuple(a for a in rules.get(name, ()) if a not in used and mesh.shape[a] > 1)
    if axes and size % math.prod(mesh.shape[a] for a in axes):
      logging.debug('Replicating dim %r of size %d: not divisible by mesh axes %s.',
                    name, size, axes)
      axes = ()
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


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
