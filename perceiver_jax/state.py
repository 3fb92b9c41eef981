"""The train state, born sharded: built inside `jax.jit(init, out_shardings=...)`.

Shardings come from `jax.eval_shape` of the same init plus the logical axis names the model
annotates its parameters with, so no array is ever materialised unsharded on one device.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from perceiver_jax import precision
from perceiver_jax import sharding as shd
from perceiver_jax.model.build import build_model
from perceiver_jax.model.build_multimodal import input_shapes
from perceiver_jax.optim import make_optimizer


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs (the data position is saved beside it)."""
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: Any              # pure dict of nnx.Param values
  model_state: Any         # pure dict of other model variables (e.g. BatchNorm statistics)
  opt_state: Any
  rng: jax.Array           # uint32 key data; per-step keys are fold_in(rng, step)
  loss_scale: Any = None   # precision.LossScale when computing in float16, else None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the step functions need to rebuild the model inside jit."""
  graphdef: Any
  input_shape: tuple[int, ...] | dict[str, tuple[int, ...]]  # dict: multimodal models
  num_params: int


def build(config, input_shape, seed_key=None) -> nnx.Module:
  """The model of `config` for per-example `input_shape` (eager; wrap in nnx.eval_shape)."""
  rngs = nnx.Rngs(params=seed_key if seed_key is not None else 0)
  return build_model(config.model, input_shape=input_shapes(input_shape), rngs=rngs)


def model_spec(config, input_shape) -> tuple[ModelSpec, dict, Any]:
  """Abstract model: graphdef, logical names of the params, abstract params (no FLOPs spent)."""
  abstract_model = nnx.eval_shape(lambda: build(config, input_shape))
  graphdef, params, _ = nnx.split(abstract_model, nnx.Param, ...)
  names = shd.logical_names(abstract_model)
  abstract_params = nnx.to_pure_dict(params)
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))
  return ModelSpec(graphdef, input_shapes(input_shape), num_params), names, abstract_params


def _init_fn(config, input_shape, tx):
  def init(seed: jax.Array) -> TrainState:
    param_key, rng = jax.random.split(jax.random.key(seed))
    model = build(config, input_shape, param_key)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=rest,
                      opt_state=tx.init(params), rng=jax.random.key_data(rng),
                      loss_scale=precision.make_loss_scale(config))
  return init


def state_shardings(config, input_shape, mesh: Mesh, tx) -> tuple[TrainState, TrainState]:
  """(abstract state, its NamedShardings) for this config on this mesh."""
  _, names, abstract_params = model_spec(config, input_shape)
  abstract = jax.eval_shape(_init_fn(config, input_shape, tx), jnp.uint32(0))
  rules = shd.rules_dict(config.sharding.rules)
  param_shardings = shd.tree_shardings(abstract.params, names, mesh, rules)
  # Optimizer moments mirror the params they belong to; counts etc. are replicated.
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract.opt_state, param_shardings,
      transform_non_params=lambda _: shd.replicated(mesh))
  rep = shd.replicated(mesh)
  shardings = TrainState(step=rep, params=param_shardings,
                         model_state=jax.tree.map(lambda _: rep, abstract.model_state),
                         opt_state=opt_shardings, rng=rep,
                         loss_scale=jax.tree.map(lambda _: rep, abstract.loss_scale))
  return abstract, shardings


def create_train_state(config, input_shape, mesh: Mesh, *, initialise: bool = True):
  """Optimizer and state, sharded at birth.

  Returns (state, shardings, spec, tx, schedule). With `initialise=False` the state is
  abstract (ShapeDtypeStructs carrying their shardings), ready to restore a checkpoint
  into without spending an initialisation on it.
  """
  tx, schedule = make_optimizer(config.optimizer, int(config.train.num_steps))
  spec, _, _ = model_spec(config, input_shape)
  abstract, shardings = state_shardings(config, input_shape, mesh, tx)
  if not initialise:
    return abstract_with_shardings(abstract, shardings), shardings, spec, tx, schedule
  init = jax.jit(_init_fn(config, input_shape, tx), out_shardings=shardings)
  state = init(jnp.uint32(config.seed))
  return state, shardings, spec, tx, schedule


def abstract_with_shardings(abstract, shardings):
  """ShapeDtypeStructs carrying target shardings: what Orbax restores into."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
