"""Where a step's device time goes: the kernels of a jax.profiler trace, summed by name.

  python benchmarks/profile_summary.py TRACE_DIR [--top=25]

Reads the Perfetto trace that `jax.profiler.trace(dir, create_perfetto_trace=True)` writes
(plugins/profile/<run>/*.trace.json.gz), keeps the events of device (GPU/TPU) threads,
and prints the kernels with the most total time, then the time per kind of kernel (matrix
products, fused attention, XLA fusions, copies, ...) as a share of all device time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

# Kinds of kernel, by a pattern of their names; first match wins.
KINDS = (
    ('attention (fused)', r'cudnn|flash|fmha|sdpa|mha|attention'),
    ('matmul', r'gemm|xmma|cutlass|nvjet|ampere_|sm\d+_|cublas|triton_gemm|dot|wgmma|matmul'),
    ('convolution', r'conv'),
    ('copy / transpose', r'copy|transpose|memcpy|memset'),
    ('reduction fusion', r'reduce'),
    ('elementwise fusion', r'fusion|loop_|triton'),
)


def kind(name: str) -> str:
  low = name.lower()
  for label, pattern in KINDS:
    if re.search(pattern, low):
      return label
  return 'other'


def find_trace(path: str) -> str:
  if os.path.isfile(path):
    return path
  found = sorted(glob.glob(os.path.join(path, '**', '*.trace.json.gz'), recursive=True))
  found = found or sorted(glob.glob(os.path.join(path, '**', 'perfetto_trace.json.gz'),
                                    recursive=True))
  if not found:
    raise FileNotFoundError(f'No *.trace.json.gz under {path}; was the trace written with '
                            'jax.profiler.trace(dir, create_perfetto_trace=True)?')
  return found[-1]


def device_threads(trace: dict) -> dict[str, list[dict]]:
  """Complete events ('X') of device processes, by thread name: a GPU trace has one
  thread per stream (kernels), plus 'XLA Ops' (HLO ops) and 'XLA Modules' lines."""
  events = trace.get('traceEvents', [])
  processes, threads = {}, {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == 'process_name':
      processes[e.get('pid')] = str(e.get('args', {}).get('name', ''))
    if e.get('ph') == 'M' and e.get('name') == 'thread_name':
      threads[(e.get('pid'), e.get('tid'))] = str(e.get('args', {}).get('name', ''))
  device_pids = {pid for pid, n in processes.items()
                 if re.search(r'GPU|TPU|device', n, re.I) and not re.search(r'host|CPU', n, re.I)}
  out = collections.defaultdict(list)
  for e in events:
    if e.get('ph') == 'X' and e.get('pid') in device_pids and 'dur' in e:
      out[threads.get((e['pid'], e.get('tid')), 'unnamed')].append(e)
  return out


def table(events: list[dict], top: int, what: str) -> list[str]:
  by_name, calls = collections.Counter(), collections.Counter()
  for e in events:
    by_name[e['name']] += float(e['dur'])
    calls[e['name']] += 1
  total = sum(by_name.values())
  lines = [f'{what}: {total / 1e3:.2f} ms in {len(events)} events',
           f'| {what} | kind | calls | total ms | share |', '|---|---|---:|---:|---:|']
  for name, us in by_name.most_common(top):
    lines.append(f'| {name[:90]} | {kind(name)} | {calls[name]} | {us / 1e3:.2f} | '
                 f'{us / total:.1%} |')
  by_kind = collections.Counter()
  for name, us in by_name.items():
    by_kind[kind(name)] += us
  lines += ['', f'| kind ({what}) | total ms | share |', '|---|---:|---:|']
  for label, us in by_kind.most_common():
    lines.append(f'| {label} | {us / 1e3:.2f} | {us / total:.1%} |')
  return lines + ['']


def summarize(path: str, top: int = 25) -> str:
  with gzip.open(find_trace(path), 'rt') as f:
    trace = json.load(f)
  threads = device_threads(trace)
  if not threads:
    return 'No device events in the trace (CPU run, or the profiler saw no device).'
  kernels = [e for name, evs in threads.items() if re.search(r'stream', name, re.I)
             for e in evs]
  ops = [e for name, evs in threads.items() if re.search(r'XLA Ops', name, re.I) for e in evs]
  if not kernels and not ops:  # an unfamiliar layout: everything but whole-module lines
    kernels = [e for name, evs in threads.items() if not re.search(r'module|step', name, re.I)
               for e in evs]
  lines = [f'device threads: {", ".join(f"{n} ({len(e)})" for n, e in threads.items())}', '']
  if kernels:
    lines += table(kernels, top, 'kernels')
  if ops:
    lines += table(ops, top, 'XLA ops')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('trace_dir')
  parser.add_argument('--top', type=int, default=25)
  args = parser.parse_args(argv)
  print(summarize(args.trace_dir, args.top))


if __name__ == '__main__':
  main()
