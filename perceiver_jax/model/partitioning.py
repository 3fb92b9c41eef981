"""Logical axis names -> mesh axes: the sharding hook the model calls on its activations.

Parameters and activations carry logical dim names (e.g. ('batch', 'latents', 'act_embed'));
a rules dict {logical name: (mesh axes...)} maps them onto a mesh (MaxText style). The
model calls `constrain(x, names)` at block boundaries, and creates every parameter with
`logical_axes(names)` as its metadata. Outside `logical_sharding(mesh, rules)`
(unit tests, eager use) it does nothing; the train/eval steps enter that context inside the
traced function (`with_logical_sharding`), so activations follow the same rules and mesh as
the parameters. Building the mesh and reading the rules from a config is
perceiver_jax/sharding.py's job.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def logical_axes(names: Sequence[str | None]) -> dict:
  """Variable metadata recording a parameter's logical axis `names` for whoever places it.

  Flax's eager sharding would place each parameter as it is created, which needs the
  names to be mesh axes and a mesh context; ours are logical names that the Run maps through
  its rules (perceiver_jax/sharding.py), so the modules build anywhere, with or without a mesh.
  """
  return {'out_sharding': tuple(names), 'eager_sharding': False}


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


# (mesh, rules dict) while a step is being traced; None elsewhere (then constrain is a no-op).
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar('logical_sharding', default=None)


@contextlib.contextmanager
def logical_sharding(mesh: Mesh, rules: Mapping[str, tuple[str, ...]]):
  """Within this context `constrain` maps logical names through `rules` onto `mesh`.

  `rules` is a rules dict (perceiver_jax/sharding.py's rules_dict of the config's list).
  Enter it inside the function being traced (see with_logical_sharding): jax.jit traces
  lazily, at the first call.
  """
  if not isinstance(rules, Mapping):
    raise TypeError(f'logical_sharding needs a rules dict, got {type(rules).__name__}; pass '
                    'sharding.rules_dict(config.sharding.rules).')
  token = _ACTIVE.set((mesh, rules))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def with_logical_sharding(fn, mesh: Mesh, rules: Mapping[str, tuple[str, ...]] | None):
  """`fn` that traces its body inside logical_sharding(mesh, rules); wrap it before jax.jit.

  rules=None returns `fn` unchanged (no activation constraints).
  """
  if rules is None:
    return fn

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with logical_sharding(mesh, rules):
      return fn(*args, **kwargs)
  return wrapped


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """x constrained to the sharding its logical dim `names` map to; identity outside a
  logical_sharding context or on a 1-device mesh. len(names) must equal x.ndim."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  if mesh.size == 1:
    return x
  if len(names) != x.ndim:
    raise ValueError(f'constrain got {len(names)} names {tuple(names)} for an array of '
                     f'shape {x.shape}.')
  spec = logical_to_spec(names, x.shape, mesh, rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
