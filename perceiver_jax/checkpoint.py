"""Orbax checkpoints: the train state plus the data iterator's position, restorable on any mesh.

Layout: WORKDIR/checkpoints/<step>/{state, data}. `state` holds step, params, model
state, optimizer state and the RNG; `data` is grain's iterator state (one entry per process).
Evaluation restores `state` alone, with target shardings from whatever mesh it runs on.
"""

from __future__ import annotations

import logging
import os

import grain
import jax
import orbax.checkpoint as ocp

from perceiver_jax.errors import UserError


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def make_manager(workdir: str, ckpt_config=None, *,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over WORKDIR/checkpoints with the config's keep-N and async policy."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  else:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(ckpt_config.keep),
        enable_async_checkpointing=bool(ckpt_config.async_save),
        create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator=None, *,
         force: bool = False) -> bool:
  """Saves state (and the iterator position); asynchronous when the manager is."""
  items = {'state': ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  def name(path):
    return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)
  return {name(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_params) -> None:
  """Raises a UserError naming the first parameter whose saved shape differs from the model's."""
  path = os.path.join(str(manager.directory), str(step), 'state')
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(path).item_metadata['params']
  want, have = _shapes(abstract_params), _shapes(saved)
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


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iterator=None):
  """Restores into `abstract_state` (ShapeDtypeStructs with the target shardings).

  Parameters are checked against the checkpoint first, so a checkpoint of another model
  is one clear error. The data iterator, if given, is moved to its saved position in place.
  """
  check_compatible(manager, step, abstract_state.params)
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored['state']


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
