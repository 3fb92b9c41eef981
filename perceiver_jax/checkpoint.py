"""Orbax checkpoints: the train state plus the data iterator's position, restorable on any mesh.

Layout: WORKDIR/checkpoints/<step>/{state, data}. `state` holds step, params, model
state, optimizer state and the RNG; `data` is grain's iterator state (one file per process;
a run on another process count resumes from any of them, see `_foreign_data_state`).
Evaluation restores `state` alone, with target shardings from whatever mesh it runs on;
fine-tuning from another run's weights lives in finetune.py.
A damaged checkpoint is one clear error; on resume it is moved aside and the previous one
restored (`restore_newest`, docs/fault_tolerance.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time

import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from perceiver_jax import orbax_logs
from perceiver_jax.errors import UserError


class CorruptCheckpointError(UserError):
  """A checkpoint directory that exists but cannot be read (partial, truncated, garbled)."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def newest_finished_step(workdir: str) -> int | None:
  """The newest step Orbax finished writing (renamed into place), or None: a file-system
  read with no Orbax manager, so it needs no agreement between processes."""
  directory = checkpoint_dir(workdir)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  steps = [int(n) for n in names if n.isdigit()]
  return max(steps) if steps else None


def make_manager(workdir: str, ckpt_config=None, *,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over WORKDIR/checkpoints with the config's keep-N and async policy."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  else:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(ckpt_config.keep),
        enable_async_checkpointing=bool(ckpt_config.async_save),
        # Saves go to <step>.orbax-checkpoint-tmp-* and are renamed when complete; a run
        # killed mid-save leaves one behind, which the next run removes here.
        cleanup_tmp_directories=True,
        create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator=None, *,
         force: bool = False) -> bool:
  """Saves state (and the iterator position); asynchronous when the manager is."""
  items = {'state': ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def array_shapes(tree) -> dict[str, tuple[int, ...]]:
  """{'a/b/kernel': shape} of every leaf of a (nested dict) tree."""
  def name(path):
    return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)
  return {name(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_params) -> None:
  """Raises a UserError naming the first parameter whose saved shape differs from the model's."""
  want, have = array_shapes(abstract_params), saved_shapes(state_path(manager, step), 'params')
  fix = ('evaluate or resume with the config it was trained with, or use a new --workdir')
  for name in sorted(want.keys() | have.keys()):
    if name not in have:
      raise UserError(f'The checkpoint at step {step} in {manager.directory} has no parameter '
                      f'{name!r} that this config\'s model needs; {fix}.')
    if name not in want:
      raise UserError(f'The checkpoint at step {step} in {manager.directory} has parameter '
                      f'{name!r} that this config\'s model lacks; {fix}.')
    if want[name] != have[name]:
      raise UserError(f'Parameter {name!r} has shape {have[name]} in the checkpoint at step '
                      f'{step} in {manager.directory} but {want[name]} in this config\'s model; '
                      f'{fix}.')


def check_training_state(manager: ocp.CheckpointManager, step: int, abstract_state) -> None:
  """Raises a UserError if the saved optimizer / loss-scale state does not fit this config.

  Parameters are checked by `check_compatible`. This catches a resume with another
  optimizer or precision (e.g. adamw -> lamb, float32 -> float16 adds a loss scale), which
  Orbax would report as a tree mismatch: that is a config change, not a damaged checkpoint.
  """
  path = state_path(manager, step)
  with ocp.StandardCheckpointer() as checkpointer:
    saved = array_shapes(checkpointer.metadata(path).item_metadata)
  want = array_shapes(abstract_state)
  mismatched = sorted(want.keys() ^ saved.keys()) + sorted(
      n for n in want.keys() & saved.keys() if want[n] != saved[n])
  mismatched = [n for n in mismatched if not n.startswith('params/')]  # check_compatible's job
  if not mismatched:
    return
  name = mismatched[0]
  if name not in saved:
    what = f'has no training-state entry {name!r} that this config needs'
  elif name not in want:
    what = f'has training-state entry {name!r} that this config lacks'
  else:
    what = f'has training-state entry {name!r} of shape {saved[name]}, not {want[name]}'
  raise UserError(
      f'The checkpoint at step {step} in {manager.directory} {what}: it was written with '
      'another optimizer or precision (optimizer.*, model.dtype); resume with the config it '
      'was trained with, or start a new run from its weights with '
      '--config.init_from=WORKDIR and a new --workdir.')


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iterator=None):
  """Restores into `abstract_state` (ShapeDtypeStructs with the target shardings).

  Parameters, then the optimizer and loss-scale state, are checked against the checkpoint
  first, so a checkpoint of another model or optimizer is one clear error (and never
  taken for a damaged one). The data iterator, if given, is moved to its saved position
  in place.
  """
  check_compatible(manager, step, abstract_state.params)
  check_training_state(manager, step, abstract_state)
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  foreign = _foreign_data_state(manager, step) if data_iterator is not None else None
  if data_iterator is not None and foreign is None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if foreign is not None:
    data_iterator.set_state(foreign)
  return restored['state']


def _foreign_data_state(manager: ocp.CheckpointManager, step: int) -> dict | None:
  """The iterator position saved by a run with another process count, else None.

  grain writes data/process_<i>-of-<n>.json per process. Our pipeline's position is the
  number of global batches read, the same in every file (data/pipeline.py), so a run on a
  different number of processes can take it from any of them.
  """
  directory = os.path.join(str(manager.directory), str(step), 'data')
  own = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
  if not os.path.isdir(directory) or os.path.exists(os.path.join(directory, own)):
    return None
  saved = sorted(f for f in os.listdir(directory) if re.fullmatch(r'process_\d+-of-\d+\.json', f))
  if not saved:
    return None
  states = []
  for name in saved:
    with open(os.path.join(directory, name)) as f:
      states.append(json.load(f))
  if any(state != states[0] for state in states):
    raise UserError(f'The data position in {directory} differs between the processes that '
                    f'saved it, so it cannot be resumed on {jax.process_count()} process(es); '
                    f'resume with the process count it was saved with ({len(saved)}).')
  return states[0]


def state_path(manager: ocp.CheckpointManager, step: int) -> str:
  """Directory of the `state` item of the checkpoint at `step`."""
  return os.path.join(str(manager.directory), str(step), 'state')


def restore_weights(path: str, abstract_params, abstract_model_state):
  """Restores params and model state alone (no optimizer) from a `state` item at `path`.

  Used by evaluation, prediction, export and `init_from`: the checkpoint may be a training
  checkpoint (optimizer state is skipped, not read) or a converted one holding weights
  only. A run trained with optimizer.ema_decay > 0 saved a moving average of its params
  (`ema_params`); those are the weights read here, as the run's own evaluations used them.
  Targets are ShapeDtypeStructs with shardings; each array lands where they say.
  """
  weights = 'ema_params' if saved_shapes(path, 'ema_params') else 'params'
  target = {weights: abstract_params}
  if jax.tree.leaves(abstract_model_state):
    target['model_state'] = abstract_model_state
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.PyTreeCheckpointer() as checkpointer, damaged_is_user_error(path):
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  return restored[weights], restored.get('model_state', abstract_model_state)


def find_checkpoint(path: str) -> tuple[str, int]:
  """(`state` item directory, step) of the newest checkpoint under `path`.

  `path` may be a workdir (train.py's or perceiver-convert's), its checkpoints/
  directory, or one checkpoints/<step> directory.
  """
  path = os.path.abspath(os.path.expanduser(path))
  for candidate in (os.path.join(path, 'checkpoints'), path):
    if os.path.isdir(os.path.join(candidate, 'state')):
      step = os.path.basename(candidate)
      return os.path.join(candidate, 'state'), int(step) if step.isdigit() else 0
    steps = [int(d) for d in (os.listdir(candidate) if os.path.isdir(candidate) else ())
             if d.isdigit() and os.path.isdir(os.path.join(candidate, d, 'state'))]
    if steps:
      return os.path.join(candidate, str(max(steps)), 'state'), max(steps)
  raise UserError(f'No checkpoint found at {path}; point init_from at a workdir written by '
                  f'train.py or perceiver-convert, or at one of its checkpoints/<step> '
                  f'directories.')


def saved_shapes(path: str, item: str) -> dict[str, tuple[int, ...]]:
  """array_shapes of `item` ('params', 'model_state') in the `state` item at `path`."""
  with ocp.StandardCheckpointer() as checkpointer, damaged_is_user_error(path):
    metadata = checkpointer.metadata(path).item_metadata
    if metadata is None:  # Orbax only logs a warning when it cannot read it
      raise ValueError('its array metadata cannot be read')
  return array_shapes(metadata[item]) if item in metadata else {}


# ------------------------------------------------------------------------------------------
# Damaged checkpoints: a kill mid-write, a full disk or a bad copy must cost one checkpoint
# interval, not the run. Orbax renames a save into place only once it is complete, so these
# are rare, but a truncated file or a missing item still happens (manual copies, failing disks).
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def damaged_is_user_error(path: str):
  """Turns a read failure of the checkpoint at `path` into a CorruptCheckpointError."""
  problem = damage(os.path.dirname(path), items=(os.path.basename(path),))
  if problem:
    raise _damaged(path, problem)
  try:
    with orbax_logs.quiet_failed_restores():
      yield
  except UserError:
    raise
  except Exception as e:  # tensorstore/orbax raise many types for unreadable files
    raise _damaged(path, _first_line(e)) from e


def _damaged(path: str, problem: str) -> CorruptCheckpointError:
  error = CorruptCheckpointError(
      f'The checkpoint at {path} is damaged or incomplete ({problem}); use another step '
      f'(eval.py --step, see its checkpoints/ directory) or retrain it.')
  error.problem = problem
  return error


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  line = text[0] if text else type(error).__name__
  return line if len(line) <= 200 else line[:197] + '...'


def damage(step_dir: str, items=('state', 'data')) -> str | None:
  """What is visibly wrong with the checkpoint directory `step_dir`, or None.

  Cheap checks of the files Orbax needs before it reads any array: the items exist and
  their metadata parses. A truncated array file only shows when it is read (`restore`).
  """
  for item in items:
    item_dir = os.path.join(step_dir, item)
    if not os.path.isdir(item_dir):
      return f'its {item}/ directory is missing'
    for name in os.listdir(item_dir):
      if name == '_METADATA' or name.endswith('.json'):
        try:
          with open(os.path.join(item_dir, name)) as f:
            json.load(f)
        except (OSError, ValueError):
          return f'{item}/{name} is not readable JSON'
    if item == 'state' and not os.path.exists(os.path.join(item_dir, '_METADATA')):
      return 'state/_METADATA is missing'
  return None


def _unreadable_arrays(item_dir: str) -> str | None:
  """Why the arrays of a `state` item cannot be read into host memory, or None if they can."""
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      metadata = checkpointer.metadata(item_dir).item_metadata
      as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
      checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  except Exception as e:  # pylint: disable=broad-except
    return _first_line(e)
  return None


def _quarantine(manager: ocp.CheckpointManager, workdir: str, step: int) -> str:
  """Moves a damaged checkpoint out of Orbax's sight (never deletes it); returns where."""
  source = os.path.join(str(manager.directory), str(step))
  target = os.path.join(os.path.abspath(workdir), 'checkpoints.corrupt',
                        f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(source, target)
  _sync_processes(f'quarantine_{step}')
  manager.reload()
  return target


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _all_processes_ok(ok: bool) -> bool:
  """True iff `ok` on every process (a read can fail on one process only)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.int32(ok)).all())


@orbax_logs.quiet_failed_restores()  # the warning below is all a damaged one prints
def restore_newest(manager: ocp.CheckpointManager, workdir: str, abstract_state,
                   data_iterator=None) -> tuple[int, object]:
  """(step, state) from the newest checkpoint that reads back whole; damaged ones go aside.

  Each damaged newer checkpoint is logged as a warning naming its directory and the
  problem, and moved to WORKDIR/checkpoints.corrupt/<step>-<time> (kept for inspection;
  Orbax no longer sees it). A checkpoint of another model is not damage: that stays a
  UserError. With no readable checkpoint left, a UserError says so.
  """
  items = ('state', 'data') if data_iterator is not None else ('state',)
  moved = []
  for step in sorted(manager.all_steps(), reverse=True):
    step_dir = os.path.join(str(manager.directory), str(step))
    problem = damage(step_dir, items)
    state = None
    if not problem:
      try:
        state = restore(manager, step, abstract_state, data_iterator)
      except CorruptCheckpointError as e:
        problem = e.problem
      except UserError:
        raise
      except Exception as e:  # tensorstore/orbax raise many types for unreadable files
        # Only the files' fault counts as damage: a failure that also happens when the
        # arrays read fine on the host (out of memory, a device problem) is re-raised, so
        # a good checkpoint is never set aside for it.
        problem = _unreadable_arrays(os.path.join(step_dir, 'state'))
        if problem is None:
          raise
        problem = problem or _first_line(e)
    if _all_processes_ok(not problem):
      return step, state
    problem = problem or 'unreadable on another process'
    target = _quarantine(manager, workdir, step)
    moved.append(target)
    logging.warning('Checkpoint %s is damaged (%s); moved it to %s and trying the previous '
                    'one.', step_dir, problem, target)
  raise CorruptCheckpointError(
      f'No readable checkpoint is left in {checkpoint_dir(workdir)} (damaged ones were moved to '
      f'{", ".join(moved)}); restore a good copy into checkpoints/, or use a new --workdir to '
      f'start over.')


def resolve_step(manager: ocp.CheckpointManager, workdir: str, step: int | None) -> int:
  """The requested step, or the latest; a clear error when there is none."""
  steps = manager.all_steps()
  if not steps:
    raise UserError(f'No checkpoint found in {checkpoint_dir(workdir)}; train first '
                    f'(train.py --workdir={workdir}) or point --workdir at a trained run.')
  if step is None:
    return max(steps)
  if step not in steps:
    raise UserError(f'No checkpoint for step {step} in {checkpoint_dir(workdir)}; '
                    f'available steps: {sorted(steps)}.')
  return step


def log_restored(step: int, workdir: str) -> None:
  if jax.process_index() == 0:
    logging.info('Restored checkpoint at step %d from %s.', step, checkpoint_dir(workdir))
