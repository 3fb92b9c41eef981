"""Command-line flag parsing whose every failure is one sentence (a `UserError`).

absl and ml_collections report a bad flag as a "FATAL Flags parsing error" or a traceback
(unknown config field, a config file that does not load). `parse` runs the same parser and,
when it fails, works out which flag is wrong and says how to fix it:

  --config.train.batchsize=1   -> names the field and the closest valid ones (difflib)
  --config.data.mask_prob=0.2  -> a field that moved: names its new place (MOVED_TABLES)
  --config.train.batch_size=ab -> names the field's type and current value
  --config=configs/nope.py     -> lists the config files next to it (or the packaged ones)
  --config=configs/x.py:foo=1  -> the config's own message about its variant keys

`--help` lists the program's own flags (those defined in perceiver_jax), one line each,
and exits 0; `--helpfull` keeps absl's list of every flag.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from typing import Callable

from absl import flags

from perceiver_jax.errors import UserError
from perceiver_jax.model.build import MOVED_MODEL_FLAGS
from perceiver_jax.moved_flags import MOVED_FLAGS

CONFIG_FLAG = 'config'
# The experiment configs shipped inside the package (the repository's configs/ links here).
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
PACKAGED_CONFIGS = os.path.join(PACKAGE_DIR, 'configs')
# Every table of moved config fields (old path -> new path, below `config.`) an override
# is checked against, first match wins.
# old dotted path -> its new path, or a sentence saying where it lives now.
MOVED_TABLES: tuple[dict[str, str], ...] = (MOVED_FLAGS, MOVED_MODEL_FLAGS)


def _one_line(text: str) -> str:
  return ' '.join(str(text).split())


def flag_value(argv: list[str], name: str) -> str | None:
  """The value of --name in argv (last one wins, as in absl), or None."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg == '--':
      break
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _overrides(argv: list[str]) -> list[tuple[str, str]]:
  """[(field path, the argument as typed)] for every --config.a.b[=v] argument."""
  out = []
  for arg in argv[1:]:
    if arg == '--':
      break
    match = re.match(rf'--(?:no)?{CONFIG_FLAG}\.([\w.]+)(=.*)?$', arg)
    if match:
      out.append((match.group(1), arg))
  return out


def packaged_config(path: str) -> str | None:
  """The packaged file a relative configs/... path names when the current directory has no
  such file (perceiver-train run outside the repository), else None."""
  parts = os.path.normpath(path).split(os.sep)
  if os.path.isabs(path) or os.path.exists(path) or parts[0] != 'configs':
    return None
  found = os.path.join(PACKAGED_CONFIGS, *parts[1:])
  return found if os.path.isfile(found) else None


def resolve_config_paths(argv: list[str]) -> list[str]:
  """argv with a --config=configs/X.py[:variant] that is missing from the current directory
  pointed at the packaged configs/X.py."""
  out = list(argv)
  for i, arg in enumerate(out[1:], 1):
    if arg == '--':
      break
    if arg.startswith(f'--{CONFIG_FLAG}='):
      at, prefix, spec = i, f'--{CONFIG_FLAG}=', arg.split('=', 1)[1]
    elif arg == f'--{CONFIG_FLAG}' and i + 1 < len(out):
      at, prefix, spec = i + 1, '', out[i + 1]
    else:
      continue
    path, colon, variant = spec.partition(':')
    found = packaged_config(path)
    if found:
      out[at] = f'{prefix}{found}{colon}{variant}'
  return out


def _experiment_files(folder: str) -> list[str]:
  try:
    return sorted(n for n in os.listdir(folder)
                  if n.endswith('.py') and not n.startswith('_'))
  except OSError:
    return []


def _config_files_near(path: str) -> str:
  """The experiment files beside a missing config file, or the packaged ones (which
  configs/NAME.py finds from any directory) where that folder does not exist."""
  folder = os.path.dirname(os.path.normpath(path)) or '.'
  shown = folder
  if not os.path.isdir(folder):
    parts = folder.split(os.sep)
    inner = os.path.join(PACKAGED_CONFIGS, *parts[1:]) if parts[0] == 'configs' else ''
    folder, shown = (inner, folder) if os.path.isdir(inner) else (PACKAGED_CONFIGS, 'configs')
  names = _experiment_files(folder)
  return ', '.join(os.path.join(shown, n) for n in names) or 'configs/digits.py'


def _load_config(spec: str):
  """Loads --config the way ml_collections does: get_config(arg) if 'file.py:arg'."""
  path, colon, arg = spec.partition(':')
  if not path:
    raise UserError('--config is empty; pass an experiment file, e.g. '
                    '--config=configs/digits.py.')
  path = packaged_config(path) or path
  if not os.path.isfile(path):
    what = 'is a directory' if os.path.isdir(path) else 'does not exist'
    raise UserError(f'Config file {path} {what}; pass one of: {_config_files_near(path)} '
                    '(configs/NAME.py finds the packaged configs from any directory).')
  try:
    module_spec = importlib.util.spec_from_file_location('_checked_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if colon else module.get_config()
  except UserError:
    raise
  except Exception as e:  # the user's config file or variant: report, don't trace
    raise UserError(f'--{CONFIG_FLAG}={spec} could not be loaded: {type(e).__name__}: '
                    f'{_one_line(e)}') from None


def _is_section(value) -> bool:
  return hasattr(value, 'keys') and hasattr(value, 'get_type')  # a nested ConfigDict


def _field_paths(config, prefix: str = '') -> list[str]:
  out = []
  for key in config.keys():
    path = f'{prefix}{key}'
    out.append(path)
    value = config[key]
    if _is_section(value):
      out.extend(_field_paths(value, path + '.'))
  return out


def _lookup(config, path: str):
  """(parent ConfigDict, leaf key) of a dotted path, or None if some part is missing."""
  node = config
  *parents, leaf = path.split('.')
  for part in parents:
    if not hasattr(node, 'keys') or part not in node.keys():
      return None
    node = node[part]
  if not hasattr(node, 'keys') or leaf not in node.keys():
    return None
  return node, leaf


def _moved(path: str, arg: str, config) -> str | None:
  """The sentence for an override of a field that moved, or None."""
  for table in MOVED_TABLES:
    new = table.get(path)
    if new is None:
      continue
    found = _lookup(config, path)
    if found is not None and not _is_section(found[0][found[1]]):
      return None  # an older config file that still has the field: it overrides fine
    if not re.fullmatch(r'[\w.]+', new):  # a field only some part kinds have
      return f'config.{path} is not a field of this config: it is {new}.'
    new_arg = arg.replace(f'{CONFIG_FLAG}.{path}', f'{CONFIG_FLAG}.{new}', 1)
    return f'config.{path} moved to config.{new}; use {new_arg}.'
  return None


def _unknown_field(path: str, arg: str, config) -> str:
  task = config.get('task')
  if path.startswith('task.') and _is_section(task) and 'name' in task:
    settings = ', '.join(k for k in task.keys() if k != 'name') or 'none'
    return (f'{arg.split("=", 1)[0]} names no setting of task {task.name!r}; its settings '
            f'are {settings} (perceiver_jax/tasks).')
  paths = _field_paths(config)
  leaf = path.split('.')[-1]
  close = difflib.get_close_matches(path, paths, n=3, cutoff=0.6)
  close += [p for p in paths if p.split('.')[-1] == leaf and p not in close]
  if close:
    hint = 'the closest are ' + ', '.join(f'--{CONFIG_FLAG}.{p}' for p in close[:4])
  else:
    hint = 'valid top-level fields are ' + ', '.join(config.keys())
  return (f'{arg.split("=", 1)[0]} names no config field ({path!r} does not exist); {hint} '
          '(all fields and their defaults: default_config in perceiver_jax/run.py).')


def _a(kind: str) -> str:
  return f'an {kind}' if kind[:1] in 'aeiou' else f'a {kind}'


def _bad_value(flag: str, value: str, reason: str, config) -> str:
  path = flag[len(CONFIG_FLAG) + 1:]
  found = _lookup(config, path) if config is not None else None
  reason = _one_line(reason).strip('()')
  if found is None:
    return f'--{flag}={value} is not a valid value ({reason}); see --helpfull for its type.'
  parent, leaf = found
  kind = getattr(parent.get_type(leaf), '__name__', 'value')
  return (f'--{flag}={value} is not a valid {kind} ({reason}); config.{path} takes '
          f'{_a(kind)}, now {parent[leaf]!r}.')


def explain(argv: list[str], error: Exception,
            flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """One sentence naming the flag behind `error` (raised by parsing `argv`) and the fix."""
  try:  # --flagfile=... holds flags too
    argv = flag_values.read_flags_from_files(argv, force_gnu=False)
  except Exception:  # a missing flag file: the error itself says so
    pass
  spec = flag_value(argv, CONFIG_FLAG)
  config = None
  if spec is not None:
    config = _load_config(spec)  # raises its own sentence for a missing or broken file
    for path, arg in _overrides(argv):
      moved = _moved(path, arg, config)
      if moved:
        return moved
      if _lookup(config, path) is None:
        return _unknown_field(path, arg, config)
  message = _one_line(error)
  match = re.match(r'flag --([\w.]+)=(.*?): (.*)$', message)
  if match and match.group(1).startswith(CONFIG_FLAG + '.'):
    return _bad_value(*match.groups(), config)
  if match:
    return f'--{match.group(1)}={match.group(2)} is invalid: {match.group(3)} (see --helpshort).'
  match = re.match(rf'Found (--\S+?)(=\S*)? in argv before a value for --{CONFIG_FLAG}', message)
  if match:
    return (f'{match.group(1)} comes before (or without) --{CONFIG_FLAG}; pass '
            f'--{CONFIG_FLAG}=FILE first, then the fields it overrides.')
  match = re.match(r"Unknown command line flag '([\w.-]+)'", message)
  if match:
    name = match.group(1)
    known = [n for n in flag_values if '.' not in n]
    close = difflib.get_close_matches(name, known, n=2)
    hint = (f'did you mean --{close[0]}' if close else 'see --helpshort for the flags')
    return f'--{name} is not a flag of this program; {hint}.'
  if isinstance(error, flags.Error):
    return f'{message.rstrip(".")} (see --helpshort).'
  return f'The command-line flags could not be parsed: {type(error).__name__}: {message}'


def parse(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """`flag_values(argv)`, every failure raised as a one-sentence `UserError`; a relative
  --config=configs/X.py resolves to the packaged file from any directory."""
  try:
    args = flag_values(resolve_config_paths(argv))
    config = flag_values[CONFIG_FLAG].value if CONFIG_FLAG in flag_values else None
    if config is not None:
      config.keys()  # a file that failed to load raises here (ml_collections defers it)
    return args
  except UserError:
    raise
  except Exception as e:  # absl, ml_collections and config files raise many types
    raise UserError(explain(argv, e, flag_values)) from None


HELP_ARGS = ('--help', '-help', '-h', '-?', '--helpshort', '-helpshort')
FULL_HELP_ARGS = ('--helpfull', '-helpfull', '--helpxml', '-helpxml')


def _wants(argv: list[str], names: tuple[str, ...]) -> bool:
  args = argv[1:argv.index('--')] if '--' in argv else argv[1:]
  return any(arg in names for arg in args)


def _flag_line(flag) -> str:
  default = flag.default
  shown = '' if default is None or default == '' else f' (default: {default})'
  return f'  --{flag.name}: {_one_line(flag.help)}{shown}'


def program_name(path: str) -> str:
  """How the program was started: 'train.py', 'perceiver-train', or for a module of the
  package run with -m, 'python -m perceiver_jax.trainer'."""
  full = os.path.abspath(path)
  if full.startswith(PACKAGE_DIR + os.sep) and full.endswith('.py'):
    module = os.path.relpath(full[:-3], os.path.dirname(PACKAGE_DIR)).replace(os.sep, '.')
    return f'python -m {module}'
  return os.path.basename(path)


def own_help(prog: str, usage: str | None = None, shown: tuple[str, ...] | None = None,
             flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """The --help text: usage, then every flag defined in perceiver_jax (or only `shown`),
  one line each. absl's own --help lists only flags of the __main__ module: none here."""
  lines = [(usage or 'usage: {prog} [flags]').format(prog=prog), '', 'flags:']
  for module, module_flags in flag_values.flags_by_module_dict().items():
    # A main run with python -m registers its flags under its file's path, not its name.
    if not (module.startswith('perceiver_jax')
            or os.path.abspath(module).startswith(PACKAGE_DIR + os.sep)):
      continue
    for flag in module_flags:
      if shown is None or flag.name in shown:
        lines.append(_flag_line(flag))
        if flag.name == CONFIG_FLAG:
          lines.append(f'  --{CONFIG_FLAG}.FIELD=VALUE: overrides one field of the config, '
                       f'e.g. --{CONFIG_FLAG}.train.num_steps=100 (fields and defaults: '
                       'default_config in perceiver_jax/run.py).')
  lines.append('  --helpfull: every flag, with those of absl and the libraries.')
  return '\n'.join(lines)


def parse_or_exit(argv: list[str], usage: str | None = None,
                  shown: tuple[str, ...] | None = None,
                  default_config: Callable[[list[str]], str | None] | None = None) -> list[str]:
  """absl `app.run(..., flags_parser=parse_or_exit)`: prints 'error: ...' and exits 2.

  --help prints `own_help` (usage: a template with {prog}; shown: the flags to list, default
  all of perceiver_jax's) and exits 0, as does absl's --helpfull. Without --config,
  `default_config(argv)` may name the config file to load (a --config value), so that
  --config.x=y overrides apply to it.
  """
  if _wants(argv, HELP_ARGS):
    print(own_help(program_name(argv[0]), usage, shown))
    sys.exit(0)
  try:
    if default_config is not None:
      expanded = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
      spec = None if flag_value(expanded, CONFIG_FLAG) else default_config(expanded)
      argv = [argv[0], f'--{CONFIG_FLAG}={spec}', *argv[1:]] if spec else argv
    return parse(argv)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except SystemExit as e:
    if e.code == 1 and _wants(argv, FULL_HELP_ARGS):  # absl exits 1 after printing its help
      sys.exit(0)
    raise
