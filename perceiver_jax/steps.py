"""The jitted train and eval steps: pure functions of (state, batch) with explicit shardings."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from perceiver_jax import precision
from perceiver_jax import sharding as shd
from perceiver_jax import tasks
from perceiver_jax.model.partitioning import with_logical_sharding
from perceiver_jax.state import ModelSpec, TrainState


def _apply(spec: ModelSpec, params, model_state, batch, task: tasks.Task, *, train: bool,
           key=None):
  """The model on `batch` as the task feeds it -> (outputs, new model state)."""
  model = nnx.merge(spec.graphdef, params, model_state)
  rngs = nnx.Rngs(dropout=key) if key is not None else None
  outputs = model(**task.model_inputs(batch), deterministic=not train, rngs=rngs)
  _, _, new_model_state = nnx.split(model, nnx.Param, ...)
  return outputs, nnx.to_pure_dict(new_model_state)


def split_micro_batches(x: jax.Array, num_micro: int, mesh: Mesh) -> jax.Array:
  """[batch, ...] -> [num_micro, batch // num_micro, ...], micro-batch i = rows i, i+k, ...

  Strided rather than contiguous: each device's rows of the batch hold an equal share of
  every micro-batch, so the split moves no data (batch must divide by k x data-parallel).
  """
  x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)
  spec = P(None, shd.BATCH_AXES, *(None,) * (x.ndim - 2))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def make_train_step(spec: ModelSpec, tx: optax.GradientTransformation, schedule, config,
                    mesh: Mesh, state_shardings: TrainState, task: tasks.Task | None = None):
  """Returns train_step(state, batch) -> (state, metrics), jitted with donated state.

  The loss and metrics are `task`'s (default: the task of config.task); the loss is the
  task's summed loss of the batch over task.normaliser(batch), i.e. a mean.

  With train.grad_accum_steps = k the batch is processed as k micro-batches in a scan
  (gradients and metric sums added up) before one optimizer update: the same update as
  the whole batch at once, in about 1/k of the activation memory. Models with BatchNorm
  differ: each micro-batch is normalised by its own statistics and updates the running
  averages once (k updates per step; tests/test_batchnorm.py). With a float16 model the
  loss is scaled by state.loss_scale, and a step with non-finite gradients changes nothing
  but the scale; with train.skip_nonfinite so does any non-finite step. metrics['finite']
  says whether the loss and gradients were finite.
  """
  task = task or tasks.get_task(config)
  num_micro = int(config.train.get('grad_accum_steps', 1))
  skip_nonfinite = bool(config.train.get('skip_nonfinite', False))

  def micro_grads(params, model_state, batch, key, total, scale):
    """Gradient of scale * (this micro-batch's summed loss / the whole batch's
    normaliser), and sums."""
    def loss_fn(params):
      outputs, new_model_state = _apply(spec, params, model_state, batch, task, train=True,
                                        key=key)
      sums = task.loss_sums(outputs, batch, train=True)
      objective = sums['loss'] / total
      return (objective if scale is None else objective * scale), (sums, new_model_state)
    (_, (sums, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, sums, new_model_state

  def accumulated_grads(state: TrainState, batch, key, scale):
    total = task.normaliser(batch)  # of the whole batch, before any micro-batch split
    if num_micro == 1:
      return micro_grads(state.params, state.model_state, batch, key, total, scale)
    micro = jax.tree.map(lambda x: split_micro_batches(x, num_micro, mesh), batch)

    def body(carry, xs):
      grads, sums, model_state = carry
      index, micro_batch = xs
      g, s, model_state = micro_grads(state.params, model_state, micro_batch,
                                      jax.random.fold_in(key, index), total, scale)
      return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, s), model_state), None

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(micro_grads, state.params, state.model_state, first, key, total,
                            scale)
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes[:2])
    (grads, sums, model_state), _ = jax.lax.scan(
        body, (*zeros, state.model_state), (jnp.arange(num_micro), micro))
    return grads, sums, model_state

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    loss_scale = state.loss_scale
    scale = None if loss_scale is None else loss_scale.scale
    grads, sums, model_state = accumulated_grads(state, batch, key, scale)
    if loss_scale is not None:
      grads = jax.tree.map(lambda g: g / scale, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        **task.train_metrics(sums),
        'grad_norm': optax.tree.norm(grads),
        'learning_rate': schedule(state.step),
    }
    # Read by the loop (perceiver_jax/nonfinite.py): a non-finite step stops the run or is skipped.
    finite = precision.all_finite(grads) & jnp.isfinite(metrics['loss'])
    metrics['finite'] = finite
    if loss_scale is not None or skip_nonfinite:
      # A non-finite step is skipped: the old params/optimizer state stay (float16: the scale halves).
      params, opt_state, model_state = precision.select_tree(
          finite, (params, opt_state, model_state),
          (state.params, state.opt_state, state.model_state))
      metrics['skipped'] = (~finite).astype(jnp.float32)
    if loss_scale is not None:
      loss_scale = loss_scale.adjust(finite)
      metrics['loss_scale'] = loss_scale.scale
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state, loss_scale=loss_scale)
    return new_state, metrics

  batch_sharding = shd.batch_sharding(mesh)
  # Activations are constrained by their logical names while the step is traced.
  train_step = with_logical_sharding(train_step, mesh, shd.rules_dict(config.sharding.rules))
  return jax.jit(train_step,
                 in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, shd.replicated(mesh)),
                 donate_argnums=(0,))


def make_eval_step(spec: ModelSpec, mesh: Mesh, params_shardings, model_state_shardings,
                   rules=None, task: tasks.Task | None = None):
  """Returns eval_step(params, model_state, batch) -> summed metrics (exact over padding).

  rules: config.sharding.rules, to constrain activations as in training (None: no constraints).
  task: whose loss and metrics (default: classification).
  """
  task = task or tasks.default_task()

  def eval_step(params, model_state, batch):
    outputs, _ = _apply(spec, params, model_state, batch, task, train=False)
    return task.loss_sums(outputs, batch, train=False)

  eval_step = with_logical_sharding(eval_step, mesh,
                                    None if rules is None else shd.rules_dict(rules))
  return jax.jit(eval_step,
                 in_shardings=(params_shardings, model_state_shardings, shd.batch_sharding(mesh)),
                 out_shardings=shd.replicated(mesh))


def predict_fn(spec: ModelSpec, task: tasks.Task):
  """predict(params, model_state, batch) -> task.predictions of the model on `batch`
  (deterministic, unjitted: make_predict_step jits it, perceiver_jax/export.py exports it)."""
  def predict(params, model_state, batch):
    outputs, _ = _apply(spec, params, model_state, batch, task, train=False)
    return task.predictions(outputs)
  return predict


def make_predict_step(spec: ModelSpec, mesh: Mesh, params_shardings, model_state_shardings,
                      rules=None, task: tasks.Task | None = None):
  """Returns predict_step(params, model_state, batch) -> the task's predictions
  (replicated), activations constrained as in evaluation."""
  step = with_logical_sharding(predict_fn(spec, task or tasks.default_task()), mesh,
                               None if rules is None else shd.rules_dict(rules))
  return jax.jit(step, in_shardings=(params_shardings, model_state_shardings,
                                     shd.batch_sharding(mesh)),
                 out_shardings=shd.replicated(mesh))


def evaluate_split(eval_step, params, model_state, batches,
                   task: tasks.Task | None = None) -> dict[str, float]:
  """Runs eval_step over an iterable of global batches (run.Run.eval_batches) and returns
  the task's metrics (default: classification's loss/accuracy) from the summed totals. The
  task's per_example_keys are concatenated over batches instead (metrics that are not
  sums)."""
  task = task or tasks.default_task()
  row_keys = tuple(getattr(task, 'per_example_keys', ()))
  totals, rows = None, []
  for batch in batches:
    sums = dict(eval_step(params, model_state, batch))
    if row_keys:
      rows.append({k: sums.pop(k) for k in row_keys})
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError('The evaluation split yielded no batches.')
  totals = jax.device_get(totals)
  if row_keys:
    rows = jax.device_get(rows)  # one transfer at the end: the loop stays asynchronous
    totals.update({k: np.concatenate([r[k] for r in rows]) for k in row_keys})
  return task.summarize(totals)
