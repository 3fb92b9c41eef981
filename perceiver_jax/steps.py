"""The jitted train and eval steps: pure functions of (state, batch) with explicit shardings."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from perceiver_jax import sharding as shd
from perceiver_jax import tasks
from perceiver_jax.state import ModelSpec, TrainState


def _apply(spec: ModelSpec, params, model_state, inputs, *, train: bool, key=None):
  model = nnx.merge(spec.graphdef, params, model_state)
  rngs = nnx.Rngs(dropout=key) if key is not None else None
  logits = model(inputs, deterministic=not train, rngs=rngs)
  _, _, new_model_state = nnx.split(model, nnx.Param, ...)
  return logits, nnx.to_pure_dict(new_model_state)


def make_train_step(spec: ModelSpec, tx: optax.GradientTransformation, schedule, config,
                    mesh: Mesh, state_shardings: TrainState):
  """Returns train_step(state, batch) -> (state, metrics), jitted with donated state."""
  label_smoothing = float(config.train.label_smoothing)

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
      logits, model_state = _apply(spec, params, state.model_state, batch['inputs'],
                                   train=True, key=key)
      loss, sums = tasks.classification_loss(logits, batch['label'],
                                             label_smoothing=label_smoothing)
      return loss, (sums, model_state)

    (loss, (sums, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        'loss': loss,
        'accuracy': sums['correct'] / sums['count'],
        'grad_norm': optax.tree.norm(grads),
        'learning_rate': schedule(state.step),
    }
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    return new_state, metrics

  batch_sharding = shd.batch_sharding(mesh)
  return jax.jit(train_step,
                 in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, shd.replicated(mesh)),
                 donate_argnums=(0,))


def make_eval_step(spec: ModelSpec, mesh: Mesh, params_shardings, model_state_shardings):
  """Returns eval_step(params, model_state, batch) -> summed metrics (exact over padding)."""
  def eval_step(params, model_state, batch):
    logits, _ = _apply(spec, params, model_state, batch['inputs'], train=False)
    _, sums = tasks.classification_loss(logits, batch['label'], batch['mask'])
    return sums

  return jax.jit(eval_step,
                 in_shardings=(params_shardings, model_state_shardings, shd.batch_sharding(mesh)),
                 out_shardings=shd.replicated(mesh))


def evaluate_split(eval_step, params, model_state, batches, to_global) -> dict[str, float]:
  """Runs eval_step over an iterable of host batches and returns loss/accuracy."""
  totals = None
  for batch in batches:
    sums = eval_step(params, model_state, to_global(batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError('The evaluation split yielded no batches.')
  return tasks.summarize(jax.device_get(totals))
