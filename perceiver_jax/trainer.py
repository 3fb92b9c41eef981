"""Training: `python -m perceiver_jax.trainer --config=FILE --workdir=DIR` (also train.py and
perceiver-train).

train_and_evaluate(config, workdir) is the loop, in banner-marked sections; make_train_step
is the jitted step it runs; main is the command line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from perceiver_jax import averaging
from perceiver_jax import checkpoint as ckpt
from perceiver_jax import command_line
from perceiver_jax import config_changes, evaluator, finetune, nonfinite, precision
from perceiver_jax import preemption, workdir_lock
from perceiver_jax import sharding as shd
from perceiver_jax.metrics_log import MetricsLog, Progress, format_metrics
from perceiver_jax.model.partitioning import with_logical_sharding
from perceiver_jax.model.summary import format_summary
from perceiver_jax.run import Run
from perceiver_jax.state import TrainState
from perceiver_jax.telemetry import Telemetry


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints) and evaluates at the end.

  Returns the final evaluation metrics, or {'step', 'stopped_early', ...} when the run
  stopped before num_steps (max_steps_per_run, or SIGTERM/SIGINT: see preemption.py).
  """
  # The workdir lock and the signal handlers are released however the run ends.
  with contextlib.ExitStack() as cleanup:
    return _train_and_evaluate(config, workdir, cleanup)


def _refuse_another_recipe(config, workdir: str) -> None:
  """A resume whose config changes the recipe unasked is refused before anything in the
  workdir is written (the lock file included)."""
  # No Orbax manager here: creating one synchronises the processes, and another process
  # may already have made the checkpoint directory this one looks for.
  latest = ckpt.newest_finished_step(workdir)
  if latest:
    config_changes.check_resume(workdir, config, latest)


def _train_and_evaluate(config, workdir: str, cleanup: contextlib.ExitStack) -> dict:
  # ----------------------------------------------------------------------------------------
  # Set-up, once: config, workdir, mesh, task, dataset, abstract model and shardings
  # (run.py); one sentence if anything is wrong, before anything is written.
  # ----------------------------------------------------------------------------------------
  run = Run.create(config, workdir)
  mesh, task = run.mesh, run.task
  _refuse_another_recipe(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  # One trainer per workdir; taken before anything in it is written.
  cleanup.enter_context(workdir_lock.acquire(workdir, process_index=jax.process_index()))
  num_steps = int(config.train.num_steps)

  # ----------------------------------------------------------------------------------------
  # State: born sharded, or restored (with the data position) from the newest checkpoint.
  # ----------------------------------------------------------------------------------------
  manager = ckpt.make_manager(workdir, config.checkpoint)
  # If the run fails (bad data, NaN), an asynchronous save already under way still lands.
  cleanup.callback(manager.wait_until_finished)
  start_step = manager.latest_step() or 0
  # A resumed run spends no initialisation: it restores into the abstract state.
  state = run.abstract_state() if start_step else run.init_state()
  summary = run.summary()
  if jax.process_index() == 0:
    logging.info('Model: %s', format_summary(summary).replace('\n', '; '))
    logging.info('Mesh %s; %s', dict(mesh.shape), shd.describe(run.state_shardings, state))

  # Batches arrive on the devices ahead of their step; the checkpointed position is the
  # number of batches the loop took, so a resume continues exactly.
  train_iter = run.train_batches()
  cleanup.callback(train_iter.close)
  if start_step:
    # The newest checkpoint that reads back whole; damaged newer ones are moved aside.
    start_step, state = ckpt.restore_newest(manager, workdir, state, train_iter)
    ckpt.log_restored(start_step, workdir)
  elif config.get('init_from'):
    # Fine-tuning starts from pretrained weights; a resumed run ignores them (its own win).
    state = finetune.init_from_checkpoint(state, run.state_shardings, config.init_from,
                                          config.get('init_exclude', ''),
                                          config.get('init_rename', ''))
  # Written only once the workdir's checkpoints are known to fit this config; the configs
  # of earlier starts are kept.
  if jax.process_index() == 0:
    config_changes.record_start(workdir, config, start_step)

  train_step = make_train_step(run)
  eval_step = evaluator.make_eval_step(run)
  log = MetricsLog(workdir, start_step=start_step)
  log.write_run_info(start_step, summary, dict(mesh.shape))  # read by perceiver-report
  telemetry = Telemetry.create(run, workdir, log)  # None: off

  def run_eval(step: int) -> dict:
    params = state.eval_params()  # the moving average when optimizer.ema_decay > 0
    metrics = evaluator.evaluate_split(eval_step, params, state.model_state,
                                       run.eval_batches(), task)
    scalars = telemetry.run(step, params, state.model_state) if telemetry else {}
    log.write(step, 'eval', {**metrics, **scalars})
    if jax.process_index() == 0:
      logging.info('eval at step %d: %s', step, format_metrics(metrics))
    return metrics

  # ----------------------------------------------------------------------------------------
  # The loop.
  # ----------------------------------------------------------------------------------------
  log_every = max(int(config.train.log_every_steps), 1)
  eval_every = int(config.train.eval_every_steps)
  progress = Progress(start_step, num_steps)
  window_start, window_steps = time.perf_counter(), 0
  step = start_step
  # A job may be limited to a slice of the run (cluster time limits); rerunning resumes.
  stop_step = num_steps
  if int(config.train.max_steps_per_run) > 0:
    stop_step = min(num_steps, start_step + int(config.train.max_steps_per_run))
  watch = nonfinite.NonFiniteWatch(config)
  stop = cleanup.enter_context(preemption.StopRequest())
  preempted = False
  while step < stop_step:
    # Nothing here waits for the devices: the step is dispatched and the loop goes on
    # (log, eval and save steps read results; see nonfinite.py and preemption.py).
    state, metrics = train_step(state, next(train_iter))
    if step == start_step:
      # The first call compiled the step (and the data readers started); throughput is
      # timed from here, so the first log window is not a measure of compilation.
      window_start = time.perf_counter()
    step += 1
    window_steps += 1
    metrics = watch.add(step, metrics)

    log_now = step % log_every == 0 or step == num_steps
    eval_now = bool(eval_every) and step % eval_every == 0 and step != num_steps
    save_now = step % int(config.checkpoint.every_steps) == 0 or step == stop_step
    preempted = stop.should_stop(at_sync_point=log_now or save_now)
    if log_now or eval_now or save_now or preempted:
      watch.check(manager)  # before any save: a NaN state is never written

    if log_now:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if watch.skip:
        metrics['skipped_steps'] = watch.skipped
      elapsed = time.perf_counter() - window_start
      metrics['examples_per_sec'] = window_steps * int(config.train.batch_size) / elapsed
      log.write(step, 'train', metrics)
      progress.update(step, metrics)
      window_start, window_steps = time.perf_counter(), 0
    elif progress.interactive:
      progress.update(step)

    if eval_now and not preempted:
      run_eval(step)
    if save_now or preempted:
      ckpt.save(manager, step, state, train_iter, force=step == stop_step or preempted)
    if preempted:
      break
  progress.close()

  # ----------------------------------------------------------------------------------------
  # Final evaluation; wait for the last asynchronous save before returning.
  # ----------------------------------------------------------------------------------------
  if step < num_steps:
    manager.wait_until_finished()
    manager.close()
    log.close()
    if preempted:
      message = preemption.stopped_message(stop.received, step, ckpt.checkpoint_dir(workdir))
      if jax.process_index() == 0:
        logging.warning(message)
      return {'step': step, 'stopped_early': True, 'preempted': stop.received}
    logging.info('Stopped at step %d of %d (train.max_steps_per_run); rerun to resume.',
                 step, num_steps)
    return {'step': step, 'stopped_early': True}
  final = run_eval(step)
  manager.wait_until_finished()
  manager.close()
  log.close()
  return final


# ------------------------------------------------------------------------------------------
# The step: a pure function of (state, batch) with explicit shardings.
# ------------------------------------------------------------------------------------------

def split_micro_batches(x: jax.Array, num_micro: int, mesh: Mesh) -> jax.Array:
  """[batch, ...] -> [num_micro, batch // num_micro, ...], micro-batch i = rows i, i+k, ...

  Strided rather than contiguous: each device's rows of the batch hold an equal share of
  every micro-batch, so the split moves no data (batch must divide by k x data-parallel).
  """
  x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)
  spec = P(None, shd.BATCH_AXES, *(None,) * (x.ndim - 2))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def make_train_step(run: Run):
  """Returns train_step(state, batch) -> (state, metrics) of `run`, jitted with donated state
  and the run's shardings.

  The loss and metrics are the run's task's; the loss is the task's summed loss of the batch
  over task.normaliser(batch), i.e. a mean.

  With train.grad_accum_steps = k the batch is processed as k micro-batches in a scan
  (gradients and metric sums added up) before one optimizer update: the same update as
  the whole batch at once, in about 1/k of the activation memory. Models with BatchNorm
  differ: each micro-batch is normalised by its own statistics and updates the running
  averages once (k updates per step; tests/test_batchnorm.py). With a float16 model the
  loss is scaled by state.loss_scale, and a step with non-finite gradients changes nothing
  but the scale; with train.skip_nonfinite so does any non-finite step. metrics['finite']
  says whether the loss and gradients were finite.
  """
  run.need_training('make_train_step')
  spec, tx, schedule, task = run.model, run.tx, run.schedule, run.task
  config, mesh = run.config, run.mesh
  num_micro = int(config.train.get('grad_accum_steps', 1))
  skip_nonfinite = bool(config.train.get('skip_nonfinite', False))

  def micro_grads(params, model_state, batch, key, total, scale):
    """Gradient of scale * (this micro-batch's summed loss / the whole batch's
    normaliser), and sums."""
    def loss_fn(params):
      outputs, new_model_state = spec.apply(params, model_state, batch, task, train=True,
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
    ema_params = averaging.update(config, state.ema_params, params, state.step)
    if loss_scale is not None or skip_nonfinite:
      # A non-finite step is skipped: the old params/optimizer state stay (float16: the scale halves).
      params, opt_state, model_state, ema_params = precision.select_tree(
          finite, (params, opt_state, model_state, ema_params),
          (state.params, state.opt_state, state.model_state, state.ema_params))
      metrics['skipped'] = (~finite).astype(jnp.float32)
    if loss_scale is not None:
      loss_scale = loss_scale.adjust(finite)
      metrics['loss_scale'] = loss_scale.scale
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state, loss_scale=loss_scale,
                              ema_params=ema_params)
    return new_state, metrics

  batch_sharding = shd.batch_sharding(mesh)
  # Activations are constrained by their logical names while the step is traced.
  train_step = with_logical_sharding(train_step, mesh, shd.rules_dict(config.sharding.rules))
  return jax.jit(train_step,
                 in_shardings=(run.state_shardings, batch_sharding),
                 out_shardings=(run.state_shardings, shd.replicated(mesh)),
                 donate_argnums=(0,))


# ------------------------------------------------------------------------------------------
# The command line.
# ------------------------------------------------------------------------------------------

def _main(argv) -> None:
  del argv
  command_line.start()
  result = train_and_evaluate(command_line.FLAGS.config, command_line.FLAGS.workdir)
  command_line.print_summary(result)
  print(json.dumps({'final_eval': result}))  # the last line: for scripts


def main() -> None:
  command_line.run(
      _main,
      'Trains a Perceiver; rerunning the same command resumes from the newest checkpoint.\n\n'
      'usage: {prog} --config=FILE[:VARIANT] --workdir=DIR [--config.FIELD=VALUE ...]')


if __name__ == '__main__':
  main()
