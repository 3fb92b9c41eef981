"""perceiver-report WORKDIR: PNG curves and a markdown summary of a training run.

Reads only files the run wrote (metrics.jsonl, config.json, run_info.json, eval_<step>.json),
so it needs no model, checkpoint or accelerator, and works while a run is in progress.
Writes WORKDIR/report/README.md and one WORKDIR/report/<metric>.png per logged scalar.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import statistics

from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

from perceiver_jax import command_line
from perceiver_jax.errors import UserError
from perceiver_jax.metrics_log import RUN_INFO, TENSORBOARD_DIR

# Plotted first, in this order; any other logged scalar follows alphabetically.
HEADLINE = ('loss', 'accuracy', 'learning_rate', 'grad_norm', 'examples_per_sec')
_NOT_METRICS = ('step', 'time', 'split')
_NOT_PLOTTED = ('num_examples',)  # a constant count, shown in the tables only
# Latent telemetry (perceiver_jax/telemetry.py): one plot and one table row per attention,
# with these of its metrics (all in [0, 1]; docs/telemetry.md says how to read them).
TELEMETRY_PREFIX = 'telemetry/'
TELEMETRY_SHOWN = ('entropy_norm_mean', 'inputs_attended', 'inputs_for_90pct_mass',
                   'latent_overlap')


def load_run(workdir: str) -> dict:
  """Everything the report reads, as dict(records={split: [record sorted by step]},
  config, run_info, evals=[eval_<step>.json contents sorted by step])."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.isfile(path):
    raise UserError(f'No metrics.jsonl in {workdir!r}: give perceiver-report the --workdir '
                    'of a train.py run.')
  records, other_lines = _read_records(path)
  if not records and other_lines:
    raise UserError(f'{path} is damaged or not a metrics log: none of its {len(other_lines)} '
                    f'lines is a JSON record with an integer "step" (line 1: '
                    f'{other_lines[0][:40]!r}); restore it from a copy or point '
                    'perceiver-report at another workdir.')
  if not records:
    raise UserError(f'{path} holds no metrics yet: wait for the first logged step '
                    '(train.log_every_steps) and run perceiver-report again.')
  # A resumed run logs the steps after its checkpoint again: the newest record wins.
  latest = {}
  for record in records:
    latest[(record.get('split', 'train'), record['step'])] = record
  by_split = {}
  for (split, _), record in sorted(latest.items(), key=lambda kv: kv[0][1]):
    by_split.setdefault(split, []).append(record)
  evals = []
  # eval_<step>.json only: eval_<step>.<id>.json were made under other settings.
  for name in glob.glob(os.path.join(workdir, 'eval_*.json')):
    if not re.fullmatch(r'eval_\d+\.json', os.path.basename(name)):
      continue
    loaded = _read_json(name)
    if isinstance(loaded, dict) and 'step' in loaded:
      evals.append(loaded)
  return dict(records=by_split, config=_read_json(os.path.join(workdir, 'config.json')) or {},
              run_info=_read_json(os.path.join(workdir, RUN_INFO)) or {},
              evals=sorted(evals, key=lambda e: e['step']))


def _read_records(path: str) -> tuple[list[dict], list[str]]:
  """(the records with an integer step, the other non-blank lines). Undecodable bytes
  make lines that are not records, not an error."""
  out, others = [], []
  with open(path, errors='replace') as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        record = None  # e.g. the last line of a run killed mid-write
      if isinstance(record, dict) and isinstance(record.get('step'), int):
        out.append(record)
      elif line.strip():
        others.append(line.strip())
  return out, others


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def telemetry_groups(records: list[dict]) -> list[str]:
  """The attentions with telemetry in `records` ('cross_attend', 'decoder', ...), sorted."""
  return sorted({k[len(TELEMETRY_PREFIX):].rsplit('/', 1)[0] for r in records for k in r
                 if k.startswith(TELEMETRY_PREFIX) and '/' in k[len(TELEMETRY_PREFIX):]})


def metric_names(records: dict) -> list[str]:
  """Numeric metrics over all splits (telemetry aside): HEADLINE ones first, then the rest."""
  names = {k for recs in records.values() for r in recs for k, v in r.items()
           if k not in _NOT_METRICS and _is_number(v) and not k.startswith(TELEMETRY_PREFIX)}
  return [k for k in HEADLINE if k in names] + sorted(names - set(HEADLINE))


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_metrics(records: dict, out_dir: str) -> dict[str, str]:
  """One PNG per metric, every split that logs it on the same axes (x: step).

  Returns {metric: png file name in out_dir}.
  """
  styles = {'train': dict(linewidth=1.2), 'eval': dict(marker='o', linewidth=1.5)}
  files = {}
  for name in metric_names(records):
    if name in _NOT_PLOTTED:
      continue
    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout='tight')
    ax = fig.add_subplot()
    for split, recs in records.items():
      points = [(r['step'], r[name]) for r in recs if _is_number(r.get(name))]
      if points:
        xs, ys = zip(*points)
        style = styles.get(split, dict(marker='s'))
        if len(points) == 1:
          style = {**style, 'marker': style.get('marker', 'o')}
        ax.plot(xs, ys, label=split, **style)
    ax.set_xlabel('step')
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend()
    filename = re.sub(r'[^A-Za-z0-9_.-]+', '_', name) + '.png'
    fig.savefig(os.path.join(out_dir, filename))
    files[name] = filename
  evals = records.get('eval', [])
  for group in telemetry_groups(evals):
    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout='tight')
    ax = fig.add_subplot()
    for metric in TELEMETRY_SHOWN:
      key = f'{TELEMETRY_PREFIX}{group}/{metric}'
      points = [(r['step'], r[key]) for r in evals if _is_number(r.get(key))]
      if points:
        ax.plot(*zip(*points), marker='o', label=metric)
    ax.set_xlabel('step')
    ax.set_ylim(0, 1.05)
    ax.set_title(f'latent telemetry: {group}')
    ax.grid(alpha=0.3)
    ax.legend()
    filename = f'telemetry_{group}.png'
    fig.savefig(os.path.join(out_dir, filename))
    files[f'{TELEMETRY_PREFIX}{group}'] = filename
  return files


def direction(name: str) -> int:
  """+1 if a higher value of metric `name` is better, -1 if lower, 0 if neither is known."""
  name = name.lower()
  if any(w in name for w in ('loss', 'error', 'epe', 'perplexity')):
    return -1
  if 'accuracy' in name or re.match(r'top_?\d', name) or name in ('f1', 'precision', 'recall'):
    return 1
  return 0


def best(records: list[dict], name: str) -> tuple[float, int] | None:
  """(value, step) of the best `name` over `records`; the earliest step wins ties."""
  sign = direction(name)
  points = [(r[name], r['step']) for r in records if _is_number(r.get(name))]
  if not sign or not points:
    return None
  return min(points, key=lambda p: (-sign * p[0], p[1]))


def wall_time(records: dict, run_info: dict) -> tuple[float, int]:
  """(seconds, number of process starts): per start, from its start to its last record."""
  times = sorted(r['time'] for recs in records.values() for r in recs if 'time' in r)
  starts = sorted(s['started'] for s in run_info.get('segments', []))
  if not times:
    return 0.0, len(starts)
  if not starts:
    return times[-1] - times[0], 0  # no run_info.json: first to last log
  total = 0.0
  for i, start in enumerate(starts):
    end = starts[i + 1] if i + 1 < len(starts) else float('inf')
    inside = [t for t in times if start <= t < end]
    total += (inside[-1] - start) if inside else 0.0
  return total, len(starts)


def throughput(records: dict, run_info: dict) -> float | None:
  """Median train examples/s, leaving out each start's first log (it includes compiling)."""
  train = [r for r in records.get('train', []) if _is_number(r.get('examples_per_sec'))]
  starts = sorted(s['started'] for s in run_info.get('segments', [])) or [float('-inf')]
  firsts = set()
  for start in starts:
    after = [r for r in train if r.get('time', 0) >= start]
    if after:
      firsts.add(id(after[0]))
  steady = [r['examples_per_sec'] for r in train if id(r) not in firsts] or [
      r['examples_per_sec'] for r in train]
  return statistics.median(steady) if steady else None


def _human(n: float) -> str:
  for unit in ('', 'K', 'M', 'G', 'T'):
    if abs(n) < 1000 or unit == 'T':
      return f'{n:.0f}' if not unit else f'{n:.2f}{unit}'
    n /= 1000.0
  return str(n)


def _fmt(value) -> str:
  if isinstance(value, float):
    return f'{value:.4g}' if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f'{value:.4f}'
  return str(value)


def _model_line(model: dict) -> str:
  enc, pre, dec = model.get('encoder', {}), model.get('preprocessor', {}), model.get('decoder', {})
  parts = [f"preprocessor `{pre.get('name', '?')}`"]
  if enc:
    parts.append(f"{enc.get('num_latents')} latents x {enc.get('num_latent_channels')} channels, "
                 f"{enc.get('num_blocks')} blocks x {enc.get('num_self_attends_per_block')} "
                 f"self-attends ({enc.get('num_self_attend_heads')} heads)")
  parts.append(f"decoder `{dec.get('name', '?')}`")
  parts.append(f"dtype {model.get('dtype', 'float32')}")
  return '; '.join(parts)


def summary_markdown(workdir: str, run: dict, plots: dict[str, str], out_dir: str) -> str:
  """The text of README.md: run facts, final and best metrics, links to the plots."""
  records, config, info = run['records'], run['config'], run['run_info']
  data, train, opt = config.get('data', {}), config.get('train', {}), config.get('optimizer', {})
  train_recs, eval_recs = records.get('train', []), records.get('eval', [])
  last_step = max(r['step'] for recs in records.values() for r in recs)
  seconds, starts = wall_time(records, info)
  segments = info.get('segments', [])

  rows = [('Dataset', f"`{data.get('name', '?')}` (train `{data.get('train_split', '?')}`, "
                      f"eval `{data.get('eval_split', '?')}`)")]
  if config.get('model'):
    rows.append(('Model', _model_line(config['model'])))
  if 'num_params' in info:
    rows.append(('Parameters', f"{info['num_params']:,} ({_human(info['num_params'])})"))
  if info.get('flops_per_example'):
    rows.append(('Forward FLOPs / example', _human(info['flops_per_example'])))
  if segments:
    seg = segments[-1]
    rows.append(('Devices', f"{seg['device_count']} x {seg['device_kind']} "
                            f"({seg['process_count']} process(es)), mesh {seg['mesh']}"))
  if opt:
    rows.append(('Optimizer', f"{opt.get('name')} lr {opt.get('learning_rate')} "
                              f"({opt.get('schedule')}, warmup {opt.get('warmup_steps')}), "
                              f"global batch {train.get('batch_size')}"))
  rows.append(('Steps trained', f"{last_step} of {train.get('num_steps', '?')}"))
  rows.append(('Wall time', f"{datetime.timedelta(seconds=round(seconds))}"
                            + (f' over {starts} starts' if starts > 1 else '')
                            + ('' if starts else ' (first to last log)')))
  if train_recs and _is_number(train_recs[-1].get('loss')):
    last = train_recs[-1]
    rows.append(('Final train loss', f"{_fmt(last['loss'])} (step {last['step']})"))
  speed = throughput(records, info)
  if speed is not None:
    rows.append(('Throughput', f'{speed:,.0f} examples/s (median of train logs)'))

  config_link = os.path.relpath(os.path.join(workdir, 'config.json'), out_dir)
  lines = [f'# Run report: {os.path.basename(os.path.abspath(workdir))}', '',
           f'Workdir `{os.path.abspath(workdir)}`, report written '
           f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
           f'Config: [config.json]({config_link}). '
           f'Live curves: '
           f'`tensorboard --logdir {os.path.join(workdir, TENSORBOARD_DIR)}`.', '',
           '| | |', '|---|---|', *[f'| {k} | {v} |' for k, v in rows], '']

  if eval_recs:
    final = eval_recs[-1]
    lines += [f"## Evaluation during training (split `{data.get('eval_split', '?')}`)", '',
              f"| metric | final (step {final['step']}) | best (step) |", '|---|---|---|']
    for name in metric_names({'eval': eval_recs}):
      top = best(eval_recs, name)
      shown = f'{_fmt(top[0])} (step {top[1]})' if top else '-'
      lines.append(f"| {name} | {_fmt(final.get(name, '-'))} | {shown} |")
    lines.append('')
  groups = telemetry_groups(eval_recs)
  if groups:
    final = eval_recs[-1]
    lines += [f"## Latent telemetry (step {final['step']})", '',
              'Per attention, over its inputs; docs/telemetry.md in the repository explains '
              'each column.', '',
              '| attention | ' + ' | '.join(TELEMETRY_SHOWN) + ' |',
              '|---' * (len(TELEMETRY_SHOWN) + 1) + '|']
    for group in groups:
      lines.append(f'| {group} | ' + ' | '.join(
          _fmt(final.get(f'{TELEMETRY_PREFIX}{group}/{m}', '-')) for m in TELEMETRY_SHOWN) + ' |')
    lines.append('')
    maps = sorted(glob.glob(os.path.join(workdir, 'telemetry', 'step_*.png')),
                  key=lambda p: int(re.sub(r'\D', '', os.path.basename(p)) or 0))
    if maps:
      lines += [f'![cross-attention maps]({os.path.relpath(maps[-1], out_dir)})', '']
  if run['evals']:
    names = sorted({k for e in run['evals'] for k, v in e.items()
                    if k not in _NOT_METRICS and _is_number(v)
                    and not k.startswith(TELEMETRY_PREFIX)})
    lines += ['## Checkpoint evaluations (eval.py)', '',
              '| step | split | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 2) + '|']
    for e in run['evals']:
      lines.append(f"| {e['step']} | {e.get('split', '?')} | "
                   + ' | '.join(_fmt(e.get(n, '-')) for n in names) + ' |')
    lines.append('')
  if plots:
    lines += ['## Curves', '']
    lines += [f'![{name}]({filename})' for name, filename in plots.items()]
    lines.append('')
  return '\n'.join(lines)


def write_report(workdir: str, out_dir: str | None = None) -> dict:
  """Writes the plots and README.md to out_dir (default WORKDIR/report).

  Returns dict(readme=path, plots={metric: path}).
  """
  run = load_run(workdir)  # raises UserError before anything is written
  out_dir = out_dir or os.path.join(workdir, 'report')
  os.makedirs(out_dir, exist_ok=True)
  plots = plot_metrics(run['records'], out_dir)
  readme = os.path.join(out_dir, 'README.md')
  with open(readme, 'w') as f:
    f.write(summary_markdown(workdir, run, plots, out_dir))
  return dict(readme=readme, plots={k: os.path.join(out_dir, v) for k, v in plots.items()})

# ------------------------------------------------------------------------------------------
# The command line.
# ------------------------------------------------------------------------------------------

def _main(argv) -> None:
  # perceiver-report WORKDIR, or --workdir=WORKDIR like the other mains.
  workdirs = ([command_line.FLAGS.workdir] if command_line.FLAGS.workdir else []) + argv[1:]
  if len(workdirs) != 1:
    raise UserError('perceiver-report takes one workdir: perceiver-report WORKDIR.')
  print(json.dumps(write_report(workdirs[0])))


def main() -> None:
  """python -m perceiver_jax.report WORKDIR (also report.py and perceiver-report)."""
  command_line.run(
      _main,
      'Plots and summarises a run: writes WORKDIR/report/ (a PNG per metric, README.md).\n\n'
      'usage: {prog} WORKDIR', shown=('workdir',))


if __name__ == '__main__':
  main()
