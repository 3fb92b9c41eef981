"""train_and_evaluate(config, workdir): the training loop, in banner-marked sections."""

from __future__ import annotations

import contextlib
import logging
import os
import time

import jax

from perceiver_jax import checkpoint as ckpt
from perceiver_jax import config_changes, finetune, nonfinite, preemption, workdir_lock
from perceiver_jax import sharding as shd
from perceiver_jax import steps
from perceiver_jax.metrics_log import MetricsLog, Progress, format_metrics
from perceiver_jax.model.summary import format_summary
from perceiver_jax.run import Run
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

  train_step = run.train_step()
  eval_step = run.eval_step()
  log = MetricsLog(workdir, start_step=start_step)
  log.write_run_info(start_step, summary, dict(mesh.shape))  # read by perceiver-report
  telemetry = Telemetry.create(run, workdir, log)  # None: off

  def run_eval(step: int) -> dict:
    metrics = steps.evaluate_split(eval_step, state.params, state.model_state,
                                   run.eval_batches(), task)
    scalars = telemetry.run(step, state.params, state.model_state) if telemetry else {}
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
