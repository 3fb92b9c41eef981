"""evaluate(config, workdir, step): restore a checkpoint onto this run's mesh and evaluate it."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax

from perceiver_jax import checkpoint as ckpt
from perceiver_jax import config_changes, steps
from perceiver_jax.metrics_log import format_metrics
from perceiver_jax.run import Run
from perceiver_jax.telemetry import Telemetry


def evaluate(config, workdir: str, step: int | None = None, split: str | None = None) -> dict:
  """Evaluates the checkpoint at `step` (default: latest) and writes WORKDIR/eval_<step>.json,
  or, under acknowledged config changes or beside a result on another split,
  eval_<step>.<id>.json (result_name).

  The mesh comes from this run's config and devices, not the training run's: Orbax
  restores each array straight into the sharding this mesh wants. No optimizer is built:
  only the weights are restored.
  """
  split = split or config.data.eval_split
  # Config, workdir, mesh, dataset and abstract model: one sentence if anything is wrong.
  run = Run.create(config, workdir, training=False, splits=(split,))
  manager = ckpt.make_manager(workdir, read_only=True)
  step = ckpt.resolve_step(manager, workdir, step)

  # Weights only: the optimizer state is neither needed nor (for converted models) present.
  params, model_state = run.abstract_weights()
  # Another model is named by its first misfit parameter and both shapes.
  ckpt.check_compatible(manager, step, params)
  # Other eval settings than training's must be asked for, and never replace its result.
  changes = config_changes.check_eval(workdir, config, step)
  name = result_name(workdir, step, split, changes)
  if changes and jax.process_index() == 0:
    logging.warning('Evaluating step %d under settings other than training\'s (%s, as '
                    'config.allow_changes permits); the result goes to %s.', step,
                    config_changes.describe(changes, limit=len(changes)), name)
  params, model_state = ckpt.restore_weights(ckpt.state_path(manager, step), params,
                                             model_state)
  ckpt.log_restored(step, workdir)

  metrics = steps.evaluate_split(run.eval_step(), params, model_state, run.eval_batches(split),
                                 run.task)
  manager.close()
  telemetry = Telemetry.create(run, workdir)  # None: off
  scalars = telemetry.run(step, params, model_state, split) if telemetry else {}

  result = {'step': step, 'split': split, **metrics, **scalars}
  if changes:
    result['config_changes'] = {path: list(change) for path, change in changes.items()}
  result['eval_file'] = name  # eval_<step>.json, or another name under other settings
  if jax.process_index() == 0:
    with open(os.path.join(workdir, name), 'w') as f:
      json.dump(result, f, indent=2)
    logging.info('eval of step %d on %s: %s (%s)', step, split, format_metrics(metrics), name)
  return result


def result_name(workdir: str, step: int, split: str, changes: dict) -> str:
  """eval_<step>.json, unless acknowledged config changes made the result or that file
  holds a result on another split: then a name of their own (the same for the same
  settings, so a rerun replaces only its own earlier result)."""
  default = f'eval_{step}.json'
  if not changes:
    try:
      with open(os.path.join(workdir, default)) as f:
        existing = json.load(f)
    except FileNotFoundError:
      return default
    except (OSError, ValueError):
      existing = None  # unreadable: kept as it is
    if isinstance(existing, dict) and existing.get('split') == split:
      return default
  settings = json.dumps({'split': split, 'changes': changes}, sort_keys=True)
  return f'eval_{step}.{hashlib.sha1(settings.encode()).hexdigest()[:8]}.json'
