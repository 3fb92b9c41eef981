"""The few lines a train or eval run ends with: its final metrics and where its results are.

  step 20, eval on test: accuracy=0.4820 loss=1.5310
    checkpoint  workdirs/m/checkpoints/20
    eval json   workdirs/m/eval_20.json
    report      none yet: perceiver-report workdirs/m writes workdirs/m/report/README.md
"""

from __future__ import annotations

import os

from perceiver_jax.checkpoint import checkpoint_dir, newest_finished_step
from perceiver_jax.metrics_log import format_metrics

# Keys of a result that are not metrics (train_and_evaluate's and evaluate's return values).
NOT_METRICS = ('step', 'split', 'stopped_early', 'preempted', 'eval_file', 'config_changes')


def summarize(workdir: str, result: dict) -> str:
  """The summary of a run that returned `result` (metrics of the final eval, or
  stopped_early); eval JSON and report are named where they exist, else the command that
  writes them."""
  newest = newest_finished_step(workdir)
  step = result.get('step', newest)
  if result.get('stopped_early'):
    lines = [f'stopped at step {step}; rerun the same command to resume.']
  else:
    # Telemetry scalars (telemetry/<attention>/<stat>) are many: metrics.jsonl has them.
    metrics = {k: v for k, v in result.items() if k not in NOT_METRICS and '/' not in k}
    split = f' on {result["split"]}' if 'split' in result else ''
    lines = [f'step {step}, eval{split}: {format_metrics(metrics)}']
  evaluated = os.path.join(checkpoint_dir(workdir), str(step))
  if os.path.isdir(evaluated):  # eval.py --step=N: that one, else the newest
    lines.append(f'  checkpoint  {evaluated}')
  elif newest is not None:
    lines.append(f'  checkpoint  {os.path.join(checkpoint_dir(workdir), str(newest))}')
  eval_json = os.path.join(workdir, result.get('eval_file') or f'eval_{step}.json')
  if os.path.isfile(eval_json):
    lines.append(f'  eval json   {eval_json}')
  elif not result.get('stopped_early'):
    lines.append(f'  eval json   none yet: perceiver-eval --workdir={workdir} writes {eval_json}')
  readme = os.path.join(workdir, 'report', 'README.md')
  if os.path.isfile(readme):
    lines.append(f'  report      {readme} (perceiver-report {workdir} brings it up to date)')
  else:
    lines.append(f'  report      none yet: perceiver-report {workdir} writes {readme}')
  return '\n'.join(lines)
