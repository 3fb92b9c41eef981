"""Multi-process training: 2 processes x 4 CPU devices train, checkpoint, restart and resume
exactly like 1 process x 8 devices; a SIGTERM to one process stops both at one step with one
checkpoint, and a damaged newest checkpoint is set aside once and both resume from the one
before; and the multi-process settings resolve as documented."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from perceiver_jax import checkpoint as ckpt
from perceiver_jax import distributed
from perceiver_jax import sharding as shd
from perceiver_jax import trainer
from perceiver_jax.data import pipeline
from perceiver_jax.errors import UserError
from perceiver_jax.metrics_log import read
from perceiver_jax.optim import make_schedule
from perceiver_jax.run import Run
from tests.helpers import (ROOT, TINY, assert_params_close, complete_steps, flags_for,
                           prepared_data_dir, run_main, tiny_mnist1d_config, train_steps,
                           truncate_array_files, xla_flags)

NUM_STEPS = 4
# fsdp spans both processes (devices 0-3 are process 0's), tensor stays inside each. A
# constant learning rate after warmup keeps train.num_steps out of the compiled step, so the
# longer preempted run below reuses this one's compilations (cache_dir).
OVERRIDES = {'train.num_steps': NUM_STEPS, 'checkpoint.every_steps': 2,
             'mesh.data': 1, 'mesh.fsdp': 4, 'mesh.tensor': 2, 'optimizer.schedule': 'constant'}
PHASE_TIMEOUT_S = 240  # a hung collective fails the test instead of hanging CI


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class _Processes:
  """`script` started as 2 processes x 4 CPU devices, logs in files (no pipe can fill up)."""

  def __init__(self, script: str, args: list[str], logdir: str, cache_dir: str | None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('JAX_COORDINATOR', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
                                'JAX_COMPILATION_CACHE_DIR', 'SLURM_', 'OMPI_'))}
    env.update(XLA_FLAGS=xla_flags(4), JAX_PLATFORMS='cpu')
    if cache_dir:  # phase 2 and eval.py reuse phase 1's compilations: less CPU
      env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    port = _free_port()
    os.makedirs(logdir, exist_ok=True)
    self.logs = [os.path.join(logdir, f'process_{i}') for i in range(2)]
    self.procs = []
    for i, log in enumerate(self.logs):
      with open(log + '.out', 'w') as out, open(log + '.err', 'w') as err:
        self.procs.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, script), *args,
             f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
             f'--process_id={i}'], cwd=ROOT, env=env, stdout=out, stderr=err))

  def wait_for(self, condition, timeout: float = PHASE_TIMEOUT_S) -> None:
    """Polls `condition()` every 10 ms; kills both and fails if a process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
      if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
        self.wait(timeout=1)  # raises with both stderr tails (or kills both)
        raise AssertionError('2-process run ended before the condition held')
      time.sleep(0.01)

  def wait(self, timeout: float = PHASE_TIMEOUT_S) -> list[tuple[str, str]]:
    """(stdout, stderr) of each process; kills both and fails on a timeout or an exit != 0."""
    deadline = time.monotonic() + timeout
    try:
      for p in self.procs:
        p.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      for p in self.procs:
        p.kill()
        p.wait()
    outputs = []
    for log in self.logs:
      with open(log + '.out') as out, open(log + '.err') as err:
        outputs.append((out.read(), err.read()))
    codes = [p.returncode for p in self.procs]
    if codes != [0, 0]:
      tails = '\n'.join(f'--- process {i} (exit {c}):\n{e[-3000:]}'
                        for i, (c, (_, e)) in enumerate(zip(codes, outputs)))
      raise AssertionError(f'2-process run failed or timed out after {timeout}s:\n{tails}')
    return outputs


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory)


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  """JAX's persistent compilation cache, shared by this module's processes."""
  return str(tmp_path_factory.mktemp('jax_cache'))


@pytest.fixture(scope='module')
def runs(data_dir, cache_dir, tmp_path_factory):
  """The same config trained (a) by 2 processes, stopped at step 2 and restarted, then
  evaluated by eval.py on 2 processes; (b) straight through by 1 process x 8 devices."""
  root = tmp_path_factory.mktemp('multihost')
  overrides = {**TINY, **OVERRIDES, 'data.data_dir': data_dir}
  multi, single, cache = str(root / 'multi'), str(root / 'single'), cache_dir
  args = ['--config=configs/mnist1d.py', f'--workdir={multi}', *flags_for(overrides)]

  first = _Processes('train.py', [*args, '--config.train.max_steps_per_run=2'],
                     str(root / 'logs1'), cache)
  # The 1-process reference trains here meanwhile (this pytest process has 8 devices).
  assert jax.process_count() == 1 and jax.device_count() == 8
  single_eval = trainer.train_and_evaluate(tiny_mnist1d_config(**overrides), single)
  first_out = first.wait()
  with open(os.path.join(multi, 'metrics.jsonl')) as f:
    first_records = f.read()
  second_out = _Processes('train.py', args, str(root / 'logs2'), cache).wait()
  eval_out = _Processes('eval.py', args, str(root / 'logs3'), cache).wait()
  return dict(multi=multi, single=single, overrides=overrides, single_eval=single_eval,
              first=first_out, second=second_out, eval=eval_out, first_records=first_records)


def _train_losses(workdir):
  return [(r['step'], r['loss']) for r in read(os.path.join(workdir, 'metrics.jsonl'))
          if r['split'] == 'train']


def _restore(workdir, step, overrides, with_data=False):
  """The checkpoint at `step` restored into this (1-process, 8-device) run, and the
  data iterator moved to its saved position when `with_data`."""
  config = tiny_mnist1d_config(**overrides)
  mesh = shd.make_mesh(config.mesh)
  abstract = Run.from_input_shape(config, (40, 1), mesh).abstract_state()
  iterator = pipeline.make_train_iterator(config.data, global_batch_size=16, seed=config.seed)
  manager = ckpt.make_manager(workdir, read_only=True)
  state = ckpt.restore(manager, step, abstract, iterator if with_data else None)
  manager.close()
  return state, iterator


# The summed learning rate of the NUM_STEPS steps (tests/helpers.assert_params_close).
LR_SUM = sum(float(make_schedule(tiny_mnist1d_config(**OVERRIDES).optimizer, NUM_STEPS)(step))
             for step in range(NUM_STEPS))


def test_two_processes_train_and_resume_like_one_process(runs):
  (out0, err0), (out1, err1) = runs['first']
  assert 'stopped_early' in out0 and 'stopped_early' in out1
  assert 'Process 0 of 2 (--num_processes); 4 local and 8 global cpu devices' in err0
  assert "Mesh {'data': 1, 'fsdp': 4, 'tensor': 2}" in err0
  assert 'Process 0 of 2' not in err1  # process 1 keeps quiet
  # Each process saved its own data position; the state's shards came from both.
  step_dir = os.path.join(ckpt.checkpoint_dir(runs['multi']), '2')
  assert sorted(os.listdir(os.path.join(step_dir, 'data'))) == [
      'commit_success.txt', 'process_0-of-2.json', 'process_1-of-2.json']
  assert {'ocdbt.process_0', 'ocdbt.process_1'} <= set(os.listdir(os.path.join(step_dir, 'state')))
  # The restart restored step 2 on both processes and trained on from there.
  (_, err0), _ = runs['second']
  assert 'Restored checkpoint at step 2' in err0
  assert [r['step'] for r in read(os.path.join(runs['multi'], 'metrics.jsonl'))
          if r['split'] == 'train'] == [1, 2, 3, 4]  # one writer: no step twice
  assert runs['first_records'].count('"split": "train"') == 2

  multi, single = _train_losses(runs['multi']), _train_losses(runs['single'])
  assert [s for s, _ in multi] == [s for s, _ in single] == [1, 2, 3, 4]
  np.testing.assert_allclose([l for _, l in multi], [l for _, l in single], rtol=1e-5)
  assert single[-1][1] != single[0][1]  # it trained

  got, _ = _restore(runs['multi'], NUM_STEPS, runs['overrides'])
  want, _ = _restore(runs['single'], NUM_STEPS, runs['overrides'])
  assert int(got.step) == int(want.step) == NUM_STEPS
  assert_params_close(got.params, want.params, LR_SUM)
  # config.json comes from process 0 alone and describes the run.
  with open(os.path.join(runs['multi'], 'config.json')) as f:
    assert json.load(f)['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 2}


def test_final_and_eval_py_metrics_match_one_process(runs):
  want = runs['single_eval']
  logged = [r for r in read(os.path.join(runs['multi'], 'metrics.jsonl'))
            if r['split'] == 'eval']
  assert len(logged) == 1 and logged[0]['step'] == NUM_STEPS
  with open(os.path.join(runs['multi'], f'eval_{NUM_STEPS}.json')) as f:
    evaluated = json.load(f)
  assert evaluated['num_examples'] == want['num_examples'] == 1000
  for got in (logged[0], evaluated):
    assert got['accuracy'] == pytest.approx(want['accuracy'], abs=1e-6)
    assert got['loss'] == pytest.approx(want['loss'], rel=1e-5)
  # Both processes computed the same global metrics (gloo prints its own lines to stdout).
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in runs['eval']]
  assert results[0] == results[1] == evaluated


def test_two_process_checkpoint_resumes_on_one_process(runs):
  # Written by 2 processes (data/process_<i>-of-2.json), resumed by 1: the data position
  # carries over, so training would read exactly the batch the 2-process run read next.
  state, iterator = _restore(runs['multi'], 2, runs['overrides'], with_data=True)
  reference, _ = _restore(runs['single'], 2, runs['overrides'])
  assert int(state.step) == 2
  assert_params_close(state.params, reference.params, LR_SUM)
  config = tiny_mnist1d_config(**runs['overrides'])
  fresh = pipeline.make_train_iterator(config.data, global_batch_size=16, seed=config.seed)
  for _ in range(2):
    next(fresh)
  got, want = next(iterator), next(fresh)
  np.testing.assert_array_equal(got['inputs'], want['inputs'])
  np.testing.assert_array_equal(got['label'], want['label'])


# --------------------------------------------------------------------------------------
# Perceiver AR: the causal byte model with prefix dropout, on 2 processes.
# --------------------------------------------------------------------------------------

AR_STEPS = 4
# Random prefix dropout and random crops: both must draw the same numbers on any mesh.
AR_CONFIG = 'configs/perceiver_ar_stdlib.py:runlocal,prefix_dropout=0.25'
AR_OVERRIDES = {'train.num_steps': AR_STEPS, 'train.log_every_steps': 1,
                'checkpoint.every_steps': 2, 'data.eval_split': 'test[:16]',
                'mesh.data': 1, 'mesh.fsdp': 4, 'mesh.tensor': 2}


def test_perceiver_ar_on_two_processes_trains_and_resumes_like_one_process(tmp_path_factory):
  """Without the persistent compilation cache: a restarted pair that loaded this model's
  programs from it hung in its first collective (jax 0.10.2, CPU, gloo), where the
  mnist1d runs above do not; each phase compiles its own."""
  from configs import perceiver_ar_stdlib  # pylint: disable=g-import-not-at-top
  from tests.helpers import runlocal  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('multihost_ar')
  data_dir = prepared_data_dir(tmp_path_factory, 'python_stdlib/packed_tiny')
  overrides = {**AR_OVERRIDES, 'data.data_dir': data_dir}
  multi, single = str(root / 'multi'), str(root / 'single')
  args = [f'--config={AR_CONFIG}', f'--workdir={multi}', *flags_for(overrides)]
  first = _Processes('train.py', [*args, '--config.train.max_steps_per_run=2'],
                     str(root / 'logs1'), None)
  config = runlocal(perceiver_ar_stdlib, data_dir, 'runlocal,prefix_dropout=0.25',
                    **AR_OVERRIDES)
  want = trainer.train_and_evaluate(config, single)
  first.wait()
  (out0, err0), (out1, _) = _Processes('train.py', args, str(root / 'logs2'), None).wait()
  assert 'Restored checkpoint at step 2' in err0
  multi_losses, single_losses = _train_losses(multi), _train_losses(single)
  assert [s for s, _ in multi_losses] == list(range(1, AR_STEPS + 1))
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
  got = [_final(out0), _final(out1)]
  assert got[0] == got[1]  # both processes computed the same global metrics
  assert got[0]['num_targets'] == want['num_targets'] == 16 * 32  # 16 windows x 32 latents
  assert got[0]['bits_per_byte'] == pytest.approx(want['bits_per_byte'], rel=1e-5)


# --------------------------------------------------------------------------------------
# Preemption and damaged checkpoints: the processes must agree.
# --------------------------------------------------------------------------------------

# Long enough that the signal always lands mid-run; the run stops a step or two after it.
PREEMPTED = {'train.num_steps': 1000}


def _final(out: str) -> dict:
  """train.py's last stdout line (gloo prints its own lines before it)."""
  return json.loads(out.strip().splitlines()[-1])['final_eval']


@pytest.fixture(scope='module')
def preempted(data_dir, cache_dir, tmp_path_factory):
  """2 processes training; process 1 alone gets SIGTERM once step 3 is logged (so
  checkpoint 2 exists). Returns (workdir, train.py args, each process's (stdout, stderr),
  the complete checkpoint steps, the fixture's directory)."""
  root = tmp_path_factory.mktemp('preempted')
  workdir = str(root / 'run')
  args = ['--config=configs/mnist1d.py', f'--workdir={workdir}',
          *flags_for({**TINY, **OVERRIDES, **PREEMPTED, 'data.data_dir': data_dir})]
  run = _Processes('train.py', args, str(root / 'logs1'), cache_dir)
  run.wait_for(lambda: train_steps(workdir)[-1:] >= [3])
  # Process 1 never writes the metrics: process 0 learns of the signal only from it.
  run.procs[1].send_signal(signal.SIGTERM)
  outputs = run.wait()
  return workdir, args, outputs, complete_steps(workdir), root


def test_sigterm_to_one_process_stops_both_at_one_step_with_one_checkpoint(preempted):
  workdir, _, ((out0, err0), (out1, err1)), saved, _ = preempted
  stopped = [_final(out0), _final(out1)]
  step = stopped[0]['step']
  assert stopped == [{'step': step, 'stopped_early': True,
                      'preempted': 'a signal on another process'},
                     {'step': step, 'stopped_early': True, 'preempted': 'SIGTERM'}]
  assert 3 <= step < PREEMPTED['train.num_steps']
  assert (f'Received a signal on another process at step {step}; saved checkpoint {step} in '
          f'{ckpt.checkpoint_dir(workdir)}') in err0
  assert 'Received SIGTERM; stopping after the current step' in err1
  # One checkpoint of that step, written by both (off the every-2-steps schedule if odd),
  # and nothing trained past it; one writer logged each step once.
  assert saved[-1] == step and all(s % 2 == 0 for s in saved[:-1])
  step_dir = os.path.join(ckpt.checkpoint_dir(workdir), str(step))
  assert sorted(os.listdir(os.path.join(step_dir, 'data'))) == [
      'commit_success.txt', 'process_0-of-2.json', 'process_1-of-2.json']
  assert {'ocdbt.process_0', 'ocdbt.process_1'} <= set(os.listdir(os.path.join(step_dir, 'state')))
  assert train_steps(workdir) == list(range(1, step + 1))


def test_damaged_newest_checkpoint_is_set_aside_once_and_both_processes_resume_before_it(
    preempted, cache_dir):
  workdir, args, _, saved, root = preempted
  newest, previous = saved[-1], saved[-2]
  state_dir = os.path.join(ckpt.checkpoint_dir(workdir), str(newest), 'state')
  assert truncate_array_files(state_dir)
  (out0, err0), (out1, err1) = _Processes(
      'train.py', [*args, '--config.train.max_steps_per_run=1'], str(root / 'logs2'),
      cache_dir).wait()
  # Each process found the damage, and process 0 alone moved the checkpoint, once.
  damaged = f'Checkpoint {ckpt.checkpoint_dir(workdir)}/{newest} is damaged ('
  assert err0.count(damaged) == 1 and err1.count(damaged) == 1
  (moved,) = os.listdir(os.path.join(workdir, 'checkpoints.corrupt'))
  assert moved.startswith(f'{newest}-')
  # Both restored the previous checkpoint and trained one step from it: each process ends
  # at that step, and saved its own data position there.
  assert f'Restored checkpoint at step {previous} ' in err0
  assert _final(out0) == _final(out1) == {'step': previous + 1, 'stopped_early': True}
  assert complete_steps(workdir) == [*saved[:-1], previous + 1]
  data_item = os.path.join(ckpt.checkpoint_dir(workdir), str(previous + 1), 'data')
  positions = []
  for i in range(2):
    with open(os.path.join(data_item, f'process_{i}-of-2.json')) as f:
      positions.append(json.load(f))
  assert positions[0] == positions[1] == {'next_index': previous + 1}


def test_inconsistent_process_flags_are_one_clear_sentence(tmp_path):
  proc = run_main('train.py', ['--config=configs/mnist1d.py', f'--workdir={tmp_path}',
                               '--num_processes=2', '--process_id=2',
                               '--coordinator_address=127.0.0.1:1234'], check=False, timeout=120)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'Process id 2 is outside 0..1 for 2 processes' in proc.stderr


# --------------------------------------------------------------------------------------
# Where the settings come from (pure: no process is started).
# --------------------------------------------------------------------------------------

SLURM = {'SLURM_JOB_ID': '77', 'SLURM_STEP_NODELIST': 'gpu[01-04]', 'SLURM_NTASKS': '4',
         'SLURM_PROCID': '2', 'SLURM_LOCALID': '0'}


def test_single_process_runs_do_not_initialise():
  assert distributed.resolve(environ={}) is None
  assert distributed.resolve(num_processes=1, environ={}) is None
  assert distributed.resolve(environ={**SLURM, 'SLURM_NTASKS': '1'}) is None
  # salloc/sbatch without srun: no step, so JAX could not detect it either.
  assert distributed.resolve(environ={'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}) is None
  assert distributed.resolve(mode='off', environ=SLURM | {'SLURM_NTASKS': '1'}) is None


def test_flags_beat_environment_beat_cluster_detection():
  env = {'JAX_COORDINATOR_ADDRESS': 'head:1234', 'JAX_NUM_PROCESSES': '8',
         'JAX_PROCESS_ID': '5', **SLURM}
  assert distributed.resolve('h0:99', 2, 1, environ=env) == distributed.Settings(
      'h0:99', 2, 1, '--num_processes')
  assert distributed.resolve(environ=env) == distributed.Settings(
      'head:1234', 8, 5, 'JAX_NUM_PROCESSES')
  # SLURM alone: JAX's own detection fills the address and id.
  assert distributed.resolve(environ=SLURM) == distributed.Settings(None, 4, None, 'SLURM')
  ompi = {'OMPI_MCA_orte_hnp_uri': '1.0;tcp://10.0.0.1:4000', 'OMPI_COMM_WORLD_SIZE': '2'}
  assert distributed.resolve(environ=ompi).num_processes == 2
  gke = {'TPU_WORKER_HOSTNAMES': 'w-0,w-1,w-2,w-3', 'TPU_WORKER_ID': '1'}
  assert distributed.resolve(environ=gke) == distributed.Settings(
      None, 4, None, 'Cloud TPU (GKE)')
  # --distributed=on leaves everything to JAX (Cloud TPU VMs read their metadata server).
  assert distributed.resolve(mode='on', environ={}) == distributed.Settings(
      None, None, None, 'cluster detection')


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_processes=2, process_id=0), 'need a coordinator: pass --coordinator_address'),
    (dict(num_processes=2, coordinator_address='h:1'), 'need a process id'),
    (dict(num_processes=2, process_id=2, coordinator_address='h:1'), 'outside 0..1'),
    (dict(num_processes=2, process_id=0, coordinator_address='h'), 'is not HOST:PORT'),
    (dict(process_id=1), 'the process count is not'),
    (dict(num_processes=0), 'must be at least 1'),
    (dict(num_processes=2, process_id=0, coordinator_address='h:1', mode='off'),
     '--distributed=off but --num_processes asks for 2'),
])
def test_inconsistent_settings_are_user_errors(kwargs, message):
  with pytest.raises(UserError, match=message):
    distributed.resolve(environ={}, **kwargs)


def test_malformed_environment_is_a_user_error():
  with pytest.raises(UserError, match="JAX_NUM_PROCESSES='two' is not an integer"):
    distributed.resolve(environ={'JAX_NUM_PROCESSES': 'two'})
