"""The train state, the model spec the step functions apply, and the function that
initialises the state (jitted with shardings by run.py).

Kept below run.py: the train, eval and predict steps (trainer.py, evaluator.py, predict.py)
need TrainState and ModelSpec but not the Run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from perceiver_jax import averaging, precision
from perceiver_jax.model.build import build_model


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs (the data position is saved beside it)."""
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: Any              # pure dict of nnx.Param values
  model_state: Any         # pure dict of other model variables (e.g. BatchNorm statistics)
  opt_state: Any
  rng: jax.Array           # uint32 key data; per-step keys are fold_in(rng, step)
  loss_scale: Any = None   # precision.LossScale when computing in float16, else None
  # optimizer.ema_decay > 0: an exponential moving average of params, the weights that
  # evaluation, prediction and export use (averaging.py); else None.
  ema_params: Any = None

  def eval_params(self):
    """The weights to evaluate: the moving average when the run keeps one."""
    return self.params if self.ema_params is None else self.ema_params


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the step functions need to rebuild the model inside jit."""
  graphdef: Any
  input_shape: tuple[int, ...] | dict[str, tuple[int, ...]]  # dict: multimodal models
  num_params: int

  def apply(self, params, model_state, batch, task, *, train: bool, key=None):
    """The model on `batch` as `task` feeds it -> (outputs, new model state as a pure dict)."""
    model = nnx.merge(self.graphdef, params, model_state)
    rngs = nnx.Rngs(dropout=key) if key is not None else None
    outputs = model(**task.model_inputs(batch), deterministic=not train, rngs=rngs)
    _, _, new_model_state = nnx.split(model, nnx.Param, ...)
    return outputs, nnx.to_pure_dict(new_model_state)


def build(config, input_shape, seed_key=None) -> nnx.Module:
  """The model of `config` for per-example `input_shape` (eager; wrap in nnx.eval_shape)."""
  rngs = nnx.Rngs(params=seed_key if seed_key is not None else 0)
  return build_model(config.model, input_shape=input_shape, rngs=rngs)


def make_init(config, input_shape, tx: optax.GradientTransformation):
  """init(seed: uint32 scalar) -> a fresh TrainState; run.py jits it with out_shardings."""
  def init(seed: jax.Array) -> TrainState:
    param_key, rng = jax.random.split(jax.random.key(seed))
    model = build(config, input_shape, param_key)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=rest,
                      opt_state=tx.init(params), rng=jax.random.key_data(rng),
                      loss_scale=precision.make_loss_scale(config),
                      ema_params=averaging.start(config, params))
  return init


def abstract_train_state(config, abstract_params, abstract_model_state,
                         tx: optax.GradientTransformation) -> TrainState:
  """What make_init's state looks like (ShapeDtypeStructs), from the abstract params alone:
  the model is not built again."""
  return TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
      model_state=abstract_model_state, opt_state=jax.eval_shape(tx.init, abstract_params),
      rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
      loss_scale=jax.eval_shape(lambda: precision.make_loss_scale(config)),
      ema_params=averaging.start(config, abstract_params))


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs carrying target shardings: what Orbax restores into."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
