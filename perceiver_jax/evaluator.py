"""evaluate(config, workdir, step): restore a checkpoint onto this run's mesh and evaluate it."""

from __future__ import annotations

import json
import logging
import os

import jax

from perceiver_jax import checkpoint as ckpt
from perceiver_jax import sharding as shd
from perceiver_jax import state as state_lib
from perceiver_jax import steps
from perceiver_jax import tasks
from perceiver_jax.data import pipeline
from perceiver_jax.metrics_log import format_metrics
from perceiver_jax.telemetry import Telemetry
from perceiver_jax.validate import check_run, checked_data_spec


def evaluate(config, workdir: str, step: int | None = None, split: str | None = None) -> dict:
  """Evaluates the checkpoint at `step` (default: latest) and writes WORKDIR/eval_<step>.json.

  The mesh comes from this run's config and devices, not the training run's: Orbax
  restores each array straight into the sharding this mesh wants.
  """
  mesh = check_run(config, workdir, training=False)  # one sentence if anything is wrong
  manager = ckpt.make_manager(workdir, read_only=True)
  step = ckpt.resolve_step(manager, workdir, step)
  split = split or config.data.eval_split
  task = tasks.get_task(config)

  input_shape = state_lib.input_shapes(checked_data_spec(config, splits=(split,)).input_shape)
  target, shardings, spec, _, _ = state_lib.create_train_state(
      config, input_shape, mesh, initialise=False)
  # Weights only: the optimizer state is neither needed nor (for converted models) present.
  ckpt.check_compatible(manager, step, target.params)
  params, model_state = ckpt.restore_weights(ckpt.state_path(manager, step), target.params,
                                             target.model_state)
  ckpt.log_restored(step, workdir)

  eval_step = steps.make_eval_step(spec, mesh, shardings.params, shardings.model_state,
                                   rules=config.sharding.rules, task=task)
  batches = pipeline.make_eval_iterator(
      config.data, split, global_batch_size=shd.eval_batch_size(config.eval.batch_size, mesh),
      process_index=jax.process_index(), process_count=jax.process_count(), task=task)
  to_global = lambda batch: pipeline.to_global(batch, shd.batch_sharding(mesh))
  metrics = steps.evaluate_split(eval_step, params, model_state, batches, to_global, task)
  manager.close()
  telemetry = Telemetry.create(config, spec, mesh, shardings, workdir)  # None: off
  scalars = telemetry.run(step, params, model_state, split) if telemetry else {}

  result = {'step': step, 'split': split, **metrics, **scalars}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f'eval_{step}.json'), 'w') as f:
      json.dump(result, f, indent=2)
    logging.info('eval of step %d on %s: %s', step, split, format_metrics(metrics))
  return result
