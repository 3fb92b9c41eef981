"""Evaluation: `python -m perceiver_jax.evaluator --workdir=DIR [--config=FILE] [--step=N]`
(also eval.py and perceiver-eval).

evaluate(config, workdir, step) restores a checkpoint onto this run's mesh and evaluates it;
make_eval_step and evaluate_split are the jitted step and its sum over a split, which the
training loop's evaluations use too; main is the command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from perceiver_jax import checkpoint as ckpt
from perceiver_jax import command_line, config_changes, tasks, workdir_config
from perceiver_jax import sharding as shd
from perceiver_jax.flag_parsing import flag_value
from perceiver_jax.model.partitioning import with_logical_sharding
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

  metrics = evaluate_split(make_eval_step(run), params, model_state, run.eval_batches(split),
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


# ------------------------------------------------------------------------------------------
# The step, and its sum over a split.
# ------------------------------------------------------------------------------------------

def make_eval_step(run: Run):
  """Returns eval_step(params, model_state, batch) -> the task's summed metrics of the batch
  (exact over padding), jitted with the run's shardings and activation constraints."""
  spec, task, mesh = run.model, run.task, run.mesh

  def eval_step(params, model_state, batch):
    outputs, _ = spec.apply(params, model_state, batch, task, train=False)
    return task.loss_sums(outputs, batch, train=False)

  eval_step = with_logical_sharding(eval_step, mesh, shd.rules_dict(run.config.sharding.rules))
  return jax.jit(eval_step,
                 in_shardings=(run.params_shardings, run.model_state_shardings,
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


# ------------------------------------------------------------------------------------------
# The command line.
# ------------------------------------------------------------------------------------------

def _workdir_config(argv: list[str]) -> str | None:
  """Without --config: the config the workdir was trained with, as a --config value
  (workdir_config.get_config), so that --config.x=y overrides apply to it."""
  workdir = flag_value(argv, 'workdir')
  if not workdir:
    return None  # command_line.start asks for the flags
  step = flag_value(argv, 'step')
  # --step=N: the config that trained that step (a resume may have changed it since).
  if step and step.isdigit():
    workdir_config.read_for_step(workdir, int(step))  # its one sentence, before parsing
    return f'{workdir_config.__file__}:{workdir}{workdir_config.STEP_MARK}{step}'
  workdir_config.read(workdir)  # missing or unreadable: its one sentence, before any parsing
  return f'{workdir_config.__file__}:{workdir}'


def _main(argv) -> None:
  del argv
  command_line.start()
  FLAGS = command_line.FLAGS
  result = evaluate(FLAGS.config, FLAGS.workdir, step=FLAGS.step, split=FLAGS.split)
  command_line.print_summary(result)
  print(json.dumps(result))


def main() -> None:
  flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).')
  flags.DEFINE_string('split', None, 'Split to evaluate (default: config.data.eval_split).')
  command_line.run(
      _main,
      'Evaluates a checkpoint of a workdir and writes WORKDIR/eval_<step>.json.\n\n'
      'usage: {prog} --workdir=DIR [--config=FILE[:VARIANT]] [--step=N] [--split=SPLIT]\n'
      'Without --config it uses the config the workdir was trained with (config.json).',
      default_config=_workdir_config)


if __name__ == '__main__':
  main()
