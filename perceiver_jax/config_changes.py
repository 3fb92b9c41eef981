"""Which config changes a resume or an evaluation accepts, and which need saying so.

A workdir keeps the config each part of its run was trained with (workdir_config.py). A
resume, or an eval.py run, whose config differs from that one in a field that changes
the result is refused with one sentence naming the fields and both values, unless the
user lists them (or their sections) in `--config.allow_changes=data.normalize,optimizer`.
Fields that change only speed, memory, logging or where files live change freely.
"""

from __future__ import annotations

import json
import logging
import os

from perceiver_jax import tasks, workdir_config
from perceiver_jax.errors import UserError

ABSENT = '<absent>'
# The acknowledgement itself belongs to this invocation, not to the recipe.
_NEVER_COMPARED = ('allow_changes',)

# Where the data is read from and how fast: the same examples either way.
_READING = ('data.data_dir', 'data.manual_dir', 'data.source_dir', 'data.read_threads',
            'data.worker_count', 'data.prefetch', 'data.device_prefetch')
# How attention is computed and what is recomputed: the same function, other memory use.
_KERNELS = ('model.attention_impl', 'model.attention_chunk_size',
            'model.attention_auto_chunk_threshold', 'model.encoder.remat')

# A resume may change these freely: when to log, evaluate, save and stop, the mesh the
# state is restored onto, the evaluation batch, and fine-tuning sources (a resume ignores
# them). train.num_steps is free only under a constant schedule: elsewhere it reshapes the
# learning rate of every remaining step.
RESUME_FREE = (*_READING, *_KERNELS, 'train.max_steps_per_run', 'train.log_every_steps',
               'train.eval_every_steps', 'train.skip_nonfinite', 'train.max_consecutive_skips',
               'checkpoint', 'eval', 'mesh', 'sharding', 'init_from', 'init_exclude',
               'init_rename')

# An evaluation depends on the model, the task and the eval data only. Training-only data
# settings and dropout (off at eval) change nothing there.
EVAL_COMPARED = ('data', 'task', 'model')
# The split is recorded in the result, and a result on another split never replaces one
# (evaluator.result_name).
EVAL_FREE = (*_READING, *_KERNELS, 'data.eval_split', 'data.train_split', 'data.augment',
             'data.max_shift', 'data.scale_range', 'data.noise_std',
             'model.encoder.dropout_prob', 'model.encoder.dropout_attn_prob',
             'model.encoder.input_dropout_prob')


def as_json(config) -> dict:
  """A config (ConfigDict or the dict read from config.json) as plain JSON values, so
  tuples and lists compare equal."""
  if not isinstance(config, dict):
    config = json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config))


def _leaves(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, dict) and value:
      out.update(_leaves(value, path + '.'))
    else:
      out[path] = value
  return out


def _under(path: str, prefixes) -> bool:
  return any(path == p or path.startswith(p + '.') for p in prefixes)


def differences(old, new) -> dict:
  """{dotted field: (old value, new value)} for every leaf that differs (ABSENT where a
  field exists on one side only), in field order."""
  a, b = _leaves(as_json(old)), _leaves(as_json(new))
  out = {}
  for path in [*a, *(p for p in b if p not in a)]:
    if _under(path, _NEVER_COMPARED):
      continue
    before, after = a.get(path, ABSENT), b.get(path, ABSENT)
    if before != after:
      out[path] = (before, after)
  return out


def resume_relevant(changes: dict, old) -> dict:
  """The changes a resume must not make silently."""
  constant = as_json(old).get('optimizer', {}).get('schedule') == 'constant'
  out = {}
  for path, (before, after) in changes.items():
    if _under(path, RESUME_FREE):
      continue
    if path == 'train.num_steps' and constant and changes.get('optimizer.schedule') is None:
      continue
    out[path] = (before, after)
  return out


def eval_relevant(changes: dict, old) -> dict:
  """The changes that make an evaluation one of another setting; `old`'s task says which
  of its settings shape training alone."""
  task = tasks.TASKS.get(as_json(old).get('task', {}).get('name'))
  free = (*EVAL_FREE, *(f'task.{name}' for name in (task.training_only if task else ())))
  return {path: change for path, change in changes.items()
          if _under(path, EVAL_COMPARED) and not _under(path, free)}


def allowed(config) -> tuple[str, ...]:
  """The fields and sections listed in config.allow_changes ('a.b,c')."""
  value = config.get('allow_changes', '') or ''
  if not isinstance(value, str):
    raise UserError(f'config.allow_changes={value!r} is invalid; list the changed fields '
                    'comma-separated, e.g. --config.allow_changes=data.normalize,optimizer.')
  return tuple(p.strip() for p in value.split(',') if p.strip())


def unacknowledged(changes: dict, config) -> dict:
  """The changes not named (nor their section) in config.allow_changes."""
  allow = allowed(config)
  return {path: change for path, change in changes.items() if not _under(path, allow)}


def _short(value) -> str:
  text = repr(tuple(value) if isinstance(value, list) else value)
  return text if len(text) <= 40 else text[:37] + '...'


def describe(changes: dict, limit: int = 6) -> str:
  """'data.normalize: (0.0, 1.0) -> (0.5, 1.0), ...' for the first `limit` changes."""
  parts = [f'{path}: {_short(a)} -> {_short(b)}' for path, (a, b) in changes.items()]
  if len(parts) > limit:
    parts = parts[:limit] + [f'and {len(parts) - limit} more']
  return ', '.join(parts)


def flag_for(changes: dict) -> str:
  return '--config.allow_changes=' + ','.join(changes)


# ------------------------------------------------------------------------------------------
# Against a workdir's configs.
# ------------------------------------------------------------------------------------------

def _trained_with(workdir: str, step: int):
  """(file name, config) of the config that trained `step`, or (None, None) for a workdir
  written before configs were kept."""
  file = workdir_config.path_for_step(workdir, step)
  if file is None:
    return None, None
  try:
    return os.path.basename(file), workdir_config.read(workdir, file)
  except UserError:
    raise UserError(f'{file} is damaged, so this config cannot be compared with the one step '
                    f'{step} was trained with; restore the file from a copy, or move it out '
                    'of the workdir to go on without the comparison.') from None


def _comparable(name: str, old, config) -> bool:
  """False (with a warning) when the two configs have different fields: the workdir was
  written by another version of perceiver_jax, whose fields may mean other things."""
  absent = [p for p, (a, b) in differences(old, config).items() if ABSENT in (a, b)]
  if absent:
    logging.warning('%s was written by another version of perceiver_jax (%d fields differ, '
                    'e.g. %s); config changes are not checked against it.', name, len(absent),
                    absent[0])
  return not absent


def check_resume(workdir: str, config, step: int) -> None:
  """Refuses, in one sentence, a resume at `step` that changes the recipe silently."""
  name, old = _trained_with(workdir, step)
  if old is None or not _comparable(name, old, config):
    return
  refused = unacknowledged(resume_relevant(differences(old, config), old), config)
  if refused:
    raise UserError(
        f'Resuming {workdir} at step {step} with a config that differs from the one it was '
        f'trained with ({name}) in {describe(refused)}; pass {flag_for(refused)} to accept '
        f'the change, or start a new run in another --workdir (--config.init_from={workdir} '
        'starts from its weights).')


def _set_aside_unsaved(workdir: str, config) -> None:
  """A new run in a workdir whose earlier run saved no checkpoint keeps that run's
  config.json, if it differs, as config.unsaved-<k>.json (its metrics may be logged)."""
  file = workdir_config.path(workdir)
  if not os.path.isfile(file):
    return
  try:
    with open(file) as f:
      same = as_json(json.load(f)) == as_json(config)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    same = False
  if same:
    return
  k = 1
  while os.path.exists(os.path.join(workdir, f'config.unsaved-{k}.json')):
    k += 1
  kept = os.path.join(workdir, f'config.unsaved-{k}.json')
  os.replace(file, kept)
  logging.info('The earlier run in %s saved no checkpoint; its config is kept in %s.',
               workdir, os.path.basename(kept))


def record_start(workdir: str, config, step: int) -> None:
  """Keeps the config a run (re)starts with at `step`: config.json for a new run, and
  config.<step>.json for a resume that changes any field, with the changes logged."""
  if not step:
    _set_aside_unsaved(workdir, config)
    workdir_config.write(workdir, config)
    return
  name, old = _trained_with(workdir, step)
  if old is None:
    workdir_config.write(workdir, config, step)
    logging.info('Resumed at step %d; the config before it is unknown (no %s), this one is '
                 'kept in %s.', step, workdir_config.FILENAME,
                 os.path.basename(workdir_config.path(workdir, step)))
    return
  changes = differences(old, config)
  # A resume at this step before, which saved nothing after it, left its config here.
  if changes or os.path.exists(workdir_config.path(workdir, step)):
    workdir_config.write(workdir, config, step)
  if changes:
    logging.info('Resumed at step %d with %d config change(s) from %s: %s; kept in %s.', step,
                 len(changes), name, describe(changes, limit=len(changes)),
                 os.path.basename(workdir_config.path(workdir, step)))


def check_eval(workdir: str, config, step: int) -> dict:
  """The acknowledged eval-relevant changes from the config that trained `step` (none for
  a workdir without one); refuses unacknowledged ones in one sentence."""
  name, old = _trained_with(workdir, step)
  if old is None or not _comparable(name, old, config):
    return {}
  changes = eval_relevant(differences(old, config), old)
  refused = unacknowledged(changes, config)
  if refused:
    raise UserError(
        f'Evaluating step {step} of {workdir} with a config that differs from the one it was '
        f'trained with ({name}) in {describe(refused)}; pass {flag_for(refused)} to evaluate '
        f'under these settings (the result goes to a file of its own; eval_{step}.json is '
        'kept), or drop the overrides.')
  return changes
