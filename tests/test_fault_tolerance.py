"""Runs that survive: signals, kill -9, damaged checkpoints, NaNs, two trainers on a workdir.

Process-level behaviour (signals, kill -9, exit codes) runs train.py in subprocesses that
share a persistent compilation cache, so only the first one compiles. Everything else runs
in-process.
"""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from perceiver_jax import checkpoint as ckpt
from perceiver_jax import nonfinite, preemption, trainer, workdir_lock
from perceiver_jax import sharding as shd
from perceiver_jax.data import pipeline
from perceiver_jax.errors import UserError
from perceiver_jax.run import Run
from tests.helpers import (ROOT, TINY, complete_steps, flags_for, prepared_data_dir, run_main,
                           tiny_mnist1d_config, train_steps, truncate_array_files,
                           xla_flags)

NUM_STEPS = 16
# Checkpoint every 2 steps, asynchronously, keeping 3: kills land mid-save and mid-delete.
RUN = {**TINY, 'train.num_steps': NUM_STEPS, 'checkpoint.every_steps': 2, 'checkpoint.keep': 3,
       'checkpoint.async_save': True, 'eval.telemetry_examples': 0}
TMP_MARK = '.orbax-checkpoint-tmp'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory)


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  """JAX's persistent compilation cache, shared by this module's train.py processes."""
  return str(tmp_path_factory.mktemp('jax_cache'))


class Trainer:
  """train.py in a subprocess, with its output in files (it may be killed at any moment)."""

  def __init__(self, workdir, data_dir, cache_dir, name):
    env = dict(os.environ, XLA_FLAGS=xla_flags(8),
               JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
    self.workdir = workdir
    self.err_path = os.path.join(os.path.dirname(workdir), f'{name}.stderr')
    self.out_path = os.path.join(os.path.dirname(workdir), f'{name}.stdout')
    self.lines_before = len(train_steps(workdir))
    args = ['--config=configs/mnist1d.py', f'--workdir={workdir}',
            *flags_for({**RUN, 'data.data_dir': data_dir})]
    with open(self.out_path, 'w') as out, open(self.err_path, 'w') as err:
      self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), *args],
                                   cwd=ROOT, env=env, stdout=out, stderr=err)

  def new_steps(self) -> list[int]:
    return train_steps(self.workdir)[self.lines_before:]

  def wait_for(self, condition, timeout=300):
    """Polls `condition()` every 2 ms while the process runs; fails if it ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
      if self.proc.poll() is not None:
        raise AssertionError(f'train.py ended ({self.proc.returncode}) too early:\n{self.stderr()}')
      if time.monotonic() > deadline:
        self.proc.kill()
        raise AssertionError(f'timed out waiting:\n{self.stderr()}')
      time.sleep(0.002)

  def finish(self, timeout=300) -> int:
    return self.proc.wait(timeout=timeout)

  def stderr(self) -> str:
    with open(self.err_path) as f:
      return f.read()[-6000:]

  def stdout(self) -> str:
    with open(self.out_path) as f:
      return f.read()


def partial_saves(workdir) -> set[str]:
  """Checkpoints being written (or left half-written): <step>.orbax-checkpoint-tmp-<time>."""
  directory = ckpt.checkpoint_dir(workdir)
  return {n for n in (os.listdir(directory) if os.path.isdir(directory) else ()) if TMP_MARK in n}


def saved_params(workdir, step) -> dict[str, np.ndarray]:
  """The parameters of a checkpoint, by '/'-joined name."""
  with ocp.CheckpointManager(ckpt.checkpoint_dir(workdir)) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return by_name(restored['state']['params'])


def by_name(tree) -> dict[str, np.ndarray]:
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_same_params(got: dict, want: dict):
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def restored_step(stderr: str) -> int | None:
  marker = 'Restored checkpoint at step '
  if marker not in stderr:
    return None
  return int(stderr.split(marker)[1].split()[0])


@pytest.fixture(scope='module')
def reference(data_dir, cache_dir, tmp_path_factory):
  """The uninterrupted run (it also fills the compilation cache for the others)."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  run = Trainer(workdir, data_dir, cache_dir, 'reference')
  assert run.finish() == 0, run.stderr()
  assert train_steps(workdir) == list(range(1, NUM_STEPS + 1))
  return workdir


# ------------------------------------------------------------------------------------------
# kill -9 at random moments.
# ------------------------------------------------------------------------------------------


def test_kill_9_at_random_moments_resumes_to_the_same_parameters(reference, data_dir, cache_dir,
                                                                 tmp_path):
  workdir = str(tmp_path / 'run')
  rng = random.Random(5)
  # Two kills: one at a random step of the first half, then one that waits for an
  # asynchronous save to be in flight and leaves it, half-written, to the final run. (Saves
  # every 2 steps keep one in flight most of the time: in trials every kill left one.)
  targets = [rng.randrange(2, NUM_STEPS // 2), None]
  mid_save = {1}
  left_partial = 0
  for i, target in enumerate(targets):
    newest = complete_steps(workdir)[-1:] or [None]
    old = partial_saves(workdir)  # left by the previous kill; this run removes them
    run = Trainer(workdir, data_dir, cache_dir, f'kill{i}')
    if i in mid_save:
      run.wait_for(lambda: run.new_steps() and partial_saves(workdir) - old)
    else:
      run.wait_for(lambda: run.new_steps() and run.new_steps()[-1] >= target)
      time.sleep(rng.uniform(0, 0.05))
    run.proc.send_signal(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    left_partial += bool(partial_saves(workdir) - old)
    # Every restart resumed from the newest complete checkpoint there was.
    assert restored_step(run.stderr()) == newest[0], run.stderr()
  assert left_partial, 'no kill landed during an asynchronous save'

  newest = complete_steps(workdir)[-1]
  run = Trainer(workdir, data_dir, cache_dir, 'final')
  assert run.finish() == 0, run.stderr()
  assert restored_step(run.stderr()) == newest
  assert not partial_saves(workdir)  # partial saves were cleaned up, and never restored
  assert_same_params(saved_params(workdir, NUM_STEPS), saved_params(reference, NUM_STEPS))


# ------------------------------------------------------------------------------------------
# SIGTERM / SIGINT.
# ------------------------------------------------------------------------------------------


def _send_to_self(sig, until):
  """Sends `sig` to this process and waits (up to 5 s) until the handler has run."""
  os.kill(os.getpid(), sig)
  deadline = time.monotonic() + 5
  while not until() and time.monotonic() < deadline:
    time.sleep(0.001)  # Python runs signal handlers in the main thread, between bytecodes


def test_stop_request_sets_a_flag_and_restores_the_handlers():
  calls = []
  previous = signal.signal(signal.SIGUSR1, lambda *a: calls.append('previous'))
  try:
    with preemption.StopRequest(signals=(signal.SIGUSR1,)) as stop:
      assert not stop.should_stop(at_sync_point=True)
      _send_to_self(signal.SIGUSR1, lambda: stop.received)
      assert stop.received == 'SIGUSR1' and stop.should_stop(at_sync_point=False)
      assert calls == []  # the first signal only sets the flag
      _send_to_self(signal.SIGUSR1, lambda: calls)
      assert calls == ['previous']  # a second one is passed on: stop now
    _send_to_self(signal.SIGUSR1, lambda: len(calls) == 2)
    assert calls == ['previous', 'previous']  # the old handler is back
  finally:
    signal.signal(signal.SIGUSR1, previous)
  original = signal.getsignal(signal.SIGINT)
  with preemption.StopRequest():  # SIGTERM and SIGINT by default
    assert signal.getsignal(signal.SIGINT) != original
    assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) == original


def test_sigterm_saves_exits_0_and_the_rerun_resumes_past_a_damaged_checkpoint(
    reference, data_dir, cache_dir, tmp_path):
  # SIGINT takes the same path (test_stop_request_... checks its handler is installed).
  workdir = str(tmp_path / 'run')
  run = Trainer(workdir, data_dir, cache_dir, 'term')
  run.wait_for(lambda: run.new_steps() and run.new_steps()[-1] >= 5)
  run.proc.send_signal(signal.SIGTERM)
  assert run.finish() == 0, run.stderr()
  step = int(run.stderr().split('Received SIGTERM at step ')[1].split(';')[0])
  assert (f'Received SIGTERM at step {step}; saved checkpoint {step} in '
          f'{ckpt.checkpoint_dir(workdir)}; rerun the same command to resume.') in run.stderr()
  assert json.loads(run.stdout().splitlines()[-1])['final_eval'] == {
      'step': step, 'stopped_early': True, 'preempted': 'SIGTERM'}
  # It finished the step it was in, saved that step (off the every-2-steps schedule if odd)
  # and stopped there.
  assert step >= 5 and train_steps(workdir)[-1] == step
  assert complete_steps(workdir)[-1] == step

  # That checkpoint then loses its data/ item: the rerun warns, sets it aside, resumes from
  # the one before, and still ends with the parameters of the uninterrupted run.
  before = complete_steps(workdir)[-2]
  shutil.rmtree(os.path.join(ckpt.checkpoint_dir(workdir), str(step), 'data'))
  run = Trainer(workdir, data_dir, cache_dir, 'resume')
  assert run.finish() == 0, run.stderr()
  assert (f'Checkpoint {ckpt.checkpoint_dir(workdir)}/{step} is damaged (its data/ '
          f'directory is missing)') in run.stderr()
  assert restored_step(run.stderr()) == before
  corrupt = os.listdir(os.path.join(workdir, 'checkpoints.corrupt'))
  assert len(corrupt) == 1 and corrupt[0].startswith(f'{step}-')
  assert_same_params(saved_params(workdir, NUM_STEPS), saved_params(reference, NUM_STEPS))


def test_a_damaged_checkpoint_on_resume_prints_one_warning(reference, data_dir, cache_dir,
                                                           tmp_path):
  # Orbax warned about routine things on every restore and about the failed attempt, around
  # the one line that says what happened (orbax_logs; test_orbax_logs.py covers tensorstore's
  # closed-event-loop tracebacks, which need a bigger model to show).
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  assert truncate_array_files(os.path.join(workdir, 'checkpoints', '16', 'state'))
  run = Trainer(workdir, data_dir, cache_dir, 'truncated')
  assert run.finish() == 0, run.stderr()
  with open(run.err_path) as f:
    lines = f.read().splitlines()
  assert restored_step('\n'.join(lines)) == 14
  # Model, mesh, restored, steps 15 and 16, final eval: info lines; one warning, no traceback.
  assert len(lines) <= 8 and not any('Traceback' in line for line in lines), '\n'.join(lines)
  warnings = [line for line in lines if not line.startswith('I')]
  assert len(warnings) == 1, '\n'.join(lines)
  assert (f'Checkpoint {ckpt.checkpoint_dir(workdir)}/16 is damaged (' in warnings[0]
          and f'moved it to {workdir}/checkpoints.corrupt/16-' in warnings[0])


# ------------------------------------------------------------------------------------------
# Damaged checkpoints (in-process, on copies of the reference run's checkpoints 12, 14, 16).
# ------------------------------------------------------------------------------------------


DAMAGE = {
    'truncated array files': lambda d: truncate_array_files(os.path.join(d, 'state')),
    'missing state/': lambda d: shutil.rmtree(os.path.join(d, 'state')),
    'missing data/': lambda d: shutil.rmtree(os.path.join(d, 'data')),
    'garbage metadata': lambda d: open(os.path.join(d, 'state', '_METADATA'), 'wb').write(
        b'\x00\x17not json'),
}


@pytest.fixture
def copy_of_reference(reference, tmp_path):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(reference, workdir)
  assert complete_steps(workdir) == [12, 14, 16]
  return workdir


def _resume_target(data_dir):
  config = tiny_mnist1d_config(**{**RUN, 'data.data_dir': data_dir})
  mesh = shd.mesh_from_config(config)
  abstract = Run.from_input_shape(config, (40, 1), mesh).abstract_state()
  iterator = pipeline.make_train_iterator(config.data, global_batch_size=16, seed=0)
  return config, abstract, iterator


@pytest.mark.parametrize('kind', sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_restored(
    kind, copy_of_reference, reference, data_dir, caplog):
  workdir = copy_of_reference
  DAMAGE[kind](os.path.join(ckpt.checkpoint_dir(workdir), '16'))
  _, abstract, iterator = _resume_target(data_dir)
  manager = ckpt.make_manager(workdir, tiny_mnist1d_config(**RUN).checkpoint)
  with caplog.at_level(logging.WARNING):
    step, state = ckpt.restore_newest(manager, workdir, abstract, iterator)
  assert step == 14 and int(state.step) == 14
  assert_same_params(by_name(state.params), saved_params(reference, 14))
  assert iterator.get_state() == {'next_index': 14}  # the data position came back with it
  warning = caplog.text
  assert f'Checkpoint {ckpt.checkpoint_dir(workdir)}/16 is damaged (' in warning
  # Set aside, not deleted; Orbax no longer sees it; the good ones are untouched.
  assert manager.all_steps() == [12, 14] and complete_steps(workdir) == [12, 14]
  (moved,) = os.listdir(os.path.join(workdir, 'checkpoints.corrupt'))
  assert moved.startswith('16-')
  manager.close()


def test_no_readable_checkpoint_left_is_one_sentence(copy_of_reference, data_dir):
  workdir = copy_of_reference
  for step in (12, 14, 16):
    DAMAGE['garbage metadata'](os.path.join(ckpt.checkpoint_dir(workdir), str(step)))
  _, abstract, iterator = _resume_target(data_dir)
  manager = ckpt.make_manager(workdir, tiny_mnist1d_config(**RUN).checkpoint)
  with pytest.raises(UserError, match='No readable checkpoint is left in .*checkpoints '):
    ckpt.restore_newest(manager, workdir, abstract, iterator)
  assert len(os.listdir(os.path.join(workdir, 'checkpoints.corrupt'))) == 3


def test_a_restore_failure_that_is_not_the_files_fault_moves_nothing(
    copy_of_reference, data_dir, monkeypatch):
  # Out of device memory while restoring, say: the files read fine on the host, so the
  # error propagates and the good checkpoint stays where it is.
  workdir = copy_of_reference
  _, abstract, iterator = _resume_target(data_dir)

  def out_of_memory(*args, **kwargs):
    raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2TiB')
  monkeypatch.setattr(ckpt.ocp.CheckpointManager, 'restore', out_of_memory)
  manager = ckpt.make_manager(workdir, tiny_mnist1d_config(**RUN).checkpoint)
  with pytest.raises(RuntimeError, match='RESOURCE_EXHAUSTED'):
    ckpt.restore_newest(manager, workdir, abstract, iterator)
  manager.close()
  assert complete_steps(workdir) == [12, 14, 16]
  assert not os.path.exists(os.path.join(workdir, 'checkpoints.corrupt'))


@pytest.mark.parametrize('change, entry', [
    ({'optimizer.name': 'lamb'}, "training-state entry 'opt_state/"),
    ({'model.dtype': 'float16'}, "no training-state entry 'loss_scale/"),
    ({'model.encoder.num_latents': 4}, "Parameter 'encoder/z_pos_enc/pos_embs' has shape (8, 32)"),
])
def test_resuming_with_another_optimizer_precision_or_model_is_one_sentence(
    change, entry, copy_of_reference, data_dir):
  # A config change is not damage: nothing may be set aside, and the error says what to do.
  workdir = copy_of_reference
  config = tiny_mnist1d_config(**{**RUN, **change, 'data.data_dir': data_dir})
  abstract = Run.from_input_shape(config, (40, 1),
                                  shd.mesh_from_config(config)).abstract_state()
  manager = ckpt.make_manager(workdir, config.checkpoint)
  with pytest.raises(UserError) as error:
    ckpt.restore_newest(manager, workdir, abstract)
  manager.close()
  message = str(error.value)
  assert entry in message and '\n' not in message, message
  assert 'with the config it was trained with' in message
  assert complete_steps(workdir) == [12, 14, 16]
  assert not os.path.exists(os.path.join(workdir, 'checkpoints.corrupt'))


@pytest.mark.parametrize('kind', ['truncated array files', 'missing state/', 'garbage metadata'])
def test_eval_of_a_damaged_checkpoint_is_one_sentence(kind, copy_of_reference, data_dir):
  from perceiver_jax import evaluator
  workdir = copy_of_reference
  DAMAGE[kind](os.path.join(ckpt.checkpoint_dir(workdir), '16'))
  config = tiny_mnist1d_config(**{**RUN, 'data.data_dir': data_dir})
  with pytest.raises(ckpt.CorruptCheckpointError,
                     match=r'checkpoints/16/state is damaged or incomplete \(.+\); use another'):
    evaluator.evaluate(config, workdir)


# ------------------------------------------------------------------------------------------
# NaN / Inf.
# ------------------------------------------------------------------------------------------


class FakeManager:
  directory = '/w/checkpoints'

  def __init__(self, latest):
    self.latest = latest

  def wait_until_finished(self):
    pass

  def latest_step(self):
    return self.latest


def _watch(**train):
  config = tiny_mnist1d_config(**{f'train.{k}': v for k, v in train.items()})
  return nonfinite.NonFiniteWatch(config)


def test_nonfinite_watch_stops_at_the_first_bad_step_or_after_consecutive_skips():
  watch = _watch()
  for step, ok in enumerate([True, True, False, True], start=11):
    assert watch.add(step, {'finite': np.bool_(ok), 'loss': 1.0}) == {'loss': 1.0}
  with pytest.raises(nonfinite.NonFiniteError,
                     match=r'NaN or Inf at step 13; the last good checkpoint \(step 10\) is kept '
                           r'in /w/checkpoints: .*train.skip_nonfinite=True'):
    watch.check(FakeManager(10))

  watch = _watch(skip_nonfinite=True, max_consecutive_skips=3)
  for step, ok in enumerate([True, False, False, True, False, False], start=1):
    watch.add(step, {'finite': np.bool_(ok)})
  watch.check(FakeManager(None))
  assert watch.skipped == 4 and watch.consecutive == 2
  watch.add(7, {'finite': np.bool_(False)})
  with pytest.raises(nonfinite.NonFiniteError,
                     match=r'for 3 steps in a row, up to step 7 .*; no checkpoint was saved'):
    watch.check(FakeManager(None))


def _nan_batches(monkeypatch, bad: set[int]):
  """Makes the training batches number `bad` (1-based) all NaN."""
  seen = [0]
  original = pipeline.to_global

  def to_global(batch, sharding):
    if 'mask' not in batch:  # a training batch (eval batches carry a padding mask)
      seen[0] += 1
      if seen[0] in bad:
        batch = {**batch, 'inputs': np.full_like(batch['inputs'], np.nan)}
    return original(batch, sharding)
  monkeypatch.setattr(pipeline, 'to_global', to_global)


NAN_RUN = {**TINY, 'train.num_steps': 10, 'train.log_every_steps': 5,
           'checkpoint.every_steps': 1, 'checkpoint.keep': 20, 'eval.telemetry_examples': 0}


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path,
                                                                       monkeypatch):
  _nan_batches(monkeypatch, {3})
  config = tiny_mnist1d_config(**{**NAN_RUN, 'data.data_dir': data_dir})
  workdir = str(tmp_path / 'run')
  with pytest.raises(nonfinite.NonFiniteError,
                     match=r'NaN or Inf at step 3; the last good checkpoint \(step 2\) is kept'):
    trainer.train_and_evaluate(config, workdir)
  assert complete_steps(workdir) == [1, 2]  # the NaN state was never saved
  assert all(np.isfinite(x).all() for x in saved_params(workdir, 2).values())


def test_skip_nonfinite_leaves_the_state_unchanged_and_stops_after_consecutive_skips(
    data_dir, tmp_path, monkeypatch):
  _nan_batches(monkeypatch, {3, 6, 7})
  config = tiny_mnist1d_config(**{**NAN_RUN, 'data.data_dir': data_dir,
                                  'train.skip_nonfinite': True,
                                  'train.max_consecutive_skips': 2})
  workdir = str(tmp_path / 'run')
  with pytest.raises(nonfinite.NonFiniteError,
                     match=r'for 2 steps in a row, up to step 7 .*last good checkpoint \(step 6\)'):
    trainer.train_and_evaluate(config, workdir)
  assert complete_steps(workdir) == [1, 2, 3, 4, 5, 6]
  params = {step: saved_params(workdir, step) for step in (2, 3, 4)}
  assert_same_params(params[3], params[2])  # step 3 was skipped
  assert any(not np.array_equal(params[4][k], params[3][k]) for k in params[3])
  logged = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  (at5,) = [r for r in logged if r['split'] == 'train' and r['step'] == 5]
  assert at5['skipped_steps'] == 1 and np.isfinite(at5['loss'])


# ------------------------------------------------------------------------------------------
# Two trainers on one workdir.
# ------------------------------------------------------------------------------------------


def test_second_trainer_on_a_locked_workdir_refuses_and_touches_nothing(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  with workdir_lock.acquire(workdir):
    before = {n: os.path.getmtime(os.path.join(workdir, n)) for n in os.listdir(workdir)}
    config = tiny_mnist1d_config(**{**RUN, 'data.data_dir': data_dir})
    with pytest.raises(UserError, match=rf'Another trainer \(pid {os.getpid()} on host .+\) is '
                                        rf'using workdir {workdir}; wait for it'):
      trainer.train_and_evaluate(config, workdir)
    # And as a process: exit code 2, one sentence, no traceback.
    proc = run_main('train.py', ['--config=configs/mnist1d.py', f'--workdir={workdir}',
                                 *flags_for({**RUN, 'data.data_dir': data_dir})], check=False)
    assert proc.returncode == 2
    assert f'error: Another trainer (pid {os.getpid()} on host' in proc.stderr
    assert 'Traceback' not in proc.stderr
    after = {n: os.path.getmtime(os.path.join(workdir, n)) for n in os.listdir(workdir)}
    assert after == before == {'.lock': before['.lock']}
  # Other processes of the same multi-process run share the workdir.
  with workdir_lock.acquire(workdir), workdir_lock.acquire(workdir, process_index=1):
    pass


def test_lock_of_a_killed_trainer_is_released(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from perceiver_jax import workdir_lock; '
       f'lock = workdir_lock.acquire({str(tmp_path)!r}); print("held", flush=True); '
       'time.sleep(600)'], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(UserError, match=rf'pid {holder.pid} on host'):
      workdir_lock.acquire(str(tmp_path))
  finally:
    holder.kill()
    holder.wait()
  workdir_lock.acquire(str(tmp_path)).release()  # the kernel dropped it: no stale lock
