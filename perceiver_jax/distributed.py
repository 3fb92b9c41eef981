"""Multi-process start-up: `jax.distributed.initialize` when a run spans several processes.

Every process runs the same train.py / eval.py / convert.py; they find each other through a
coordinator (process 0's HOST:PORT). Where the settings come from, first match wins, per field:

  1. flags            --coordinator_address, --num_processes, --process_id
  2. environment      JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
  3. cluster          JAX's own detection fills whatever is still unset: Open MPI (mpirun),
                      SLURM (srun), Cloud TPU on GKE (TPU_WORKER_HOSTNAMES), Cloud TPU VMs
                      (metadata server; needs --distributed=on, see below)

--distributed=auto (default) initialises only when that resolves to more than one process;
a single-process run never calls initialize. --distributed=on always initialises and lets JAX
detect what is unset (Cloud TPU pod slices, whose worker list lives in the VM metadata, not
the environment). --distributed=off never initialises.

`setup` must run before any JAX computation (it fixes the backend's process layout).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

from perceiver_jax.errors import UserError

MODES = ('auto', 'on', 'off')


@dataclasses.dataclass(frozen=True)
class Settings:
  """What `jax.distributed.initialize` gets; None fields are left to JAX's detection."""
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  source: str  # where the process count came from, for the start-up log and errors


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name)
  if value in (None, ''):
    return None
  try:
    return int(value)
  except ValueError:
    raise UserError(f'Environment variable {name}={value!r} is not an integer; set it to a '
                    'whole number or unset it.') from None


def detect_cluster(environ: Mapping[str, str]) -> tuple[str, int] | None:
  """(cluster name, process count) from the launcher's environment variables, or None.

  Mirrors the environments JAX's `jax.distributed.initialize()` detects from variables
  alone, in JAX's order. Cloud TPU VMs are found through their metadata server instead,
  which is why they need --distributed=on.
  """
  if 'OMPI_MCA_orte_hnp_uri' in environ and environ.get('OMPI_COMM_WORLD_SIZE'):
    return 'Open MPI', _env_int(environ, 'OMPI_COMM_WORLD_SIZE')
  slurm = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
           'SLURM_LOCALID')
  if all(name in environ for name in slurm):  # inside an srun step, as JAX requires
    return 'SLURM', _env_int(environ, 'SLURM_NTASKS')
  hosts = environ.get('TPU_PROCESS_ADDRESSES') or environ.get('TPU_WORKER_HOSTNAMES')
  if hosts and environ.get('TPU_WORKER_ID'):
    slices = _env_int(environ, 'MEGASCALE_NUM_SLICES') or 1
    return 'Cloud TPU (GKE)', len(hosts.split(',')) * slices
  return None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, mode: str = 'auto',
            environ: Mapping[str, str] | None = None) -> Settings | None:
  """The settings to initialise with, or None for a single-process run.

  Raises a UserError for inconsistent settings (before anything connects or computes).
  """
  environ = os.environ if environ is None else environ
  if mode not in MODES:
    raise UserError(f'--distributed={mode} is not one of {", ".join(MODES)}.')
  address = coordinator_address or environ.get('JAX_COORDINATOR_ADDRESS') or None
  count = num_processes if num_processes is not None else _env_int(environ, 'JAX_NUM_PROCESSES')
  pid = process_id if process_id is not None else _env_int(environ, 'JAX_PROCESS_ID')
  source = ('--num_processes' if num_processes is not None
            else 'JAX_NUM_PROCESSES' if count is not None else None)
  cluster = detect_cluster(environ) if count is None else None
  if cluster is not None:
    source, count = cluster[0], cluster[1]

  if count is not None and count < 1:
    raise UserError(f'The process count is {count} (from {source}); it must be at least 1.')
  if address is not None and (':' not in address or not address.rsplit(':', 1)[1].isdigit()):
    raise UserError(f'Coordinator address {address!r} is not HOST:PORT; pass '
                    '--coordinator_address=HOST:PORT, the address of process 0 and a free port.')
  if mode == 'off':
    if count is not None and count > 1:
      raise UserError(f'--distributed=off but {source} asks for {count} processes; drop '
                      '--distributed=off or launch a single process.')
    return None
  if count == 1 or (mode == 'auto' and count is None):
    given = [n for n, v in (('--coordinator_address/JAX_COORDINATOR_ADDRESS', address),
                            ('--process_id/JAX_PROCESS_ID', pid)) if v is not None]
    if count is None and given:
      raise UserError(f'{given[0]} is set but the process count is not; pass '
                      '--num_processes=N (or JAX_NUM_PROCESSES) on every process.')
    if pid not in (None, 0):
      raise UserError(f'Process id {pid} needs more than one process; pass --num_processes '
                      'with the total number of processes.')
    return None

  if count is not None and pid is not None and not 0 <= pid < count:
    raise UserError(f'Process id {pid} is outside 0..{count - 1} for {count} processes; give '
                    'each process a distinct --process_id from 0 to --num_processes - 1.')
  if cluster is None and mode == 'auto':
    # Explicit settings without a cluster to fill the gaps: all three are needed.
    if address is None:
      raise UserError(f'{count} processes (from {source}) need a coordinator: pass '
                      '--coordinator_address=HOST:PORT (process 0\'s host and a free port) '
                      'on every process.')
    if pid is None:
      raise UserError(f'{count} processes (from {source}) need a process id: pass '
                      '--process_id=0..N-1 (or JAX_PROCESS_ID), distinct on every process.')
  return Settings(address, count, pid, source or 'cluster detection')


def initialize(settings: Settings | None, *, timeout_s: int = 300) -> None:
  """Connects this process to the others (no-op for None); logs the layout from process 0."""
  import jax  # after flag parsing, like the other heavy imports

  if settings is None:
    return
  # Cross-process collectives on CPU go through gloo (fake-device tests, CPU clusters);
  # an explicit JAX_CPU_COLLECTIVES_IMPLEMENTATION (e.g. mpi) is left alone.
  if not os.environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                               num_processes=settings.num_processes,
                               process_id=settings.process_id,
                               initialization_timeout=timeout_s)
  except (ValueError, TypeError) as e:
    # JAX's detection found no cluster to fill the unset fields.
    raise UserError(f'Could not start {settings.num_processes or "several"} processes '
                    f'({e}); pass --coordinator_address, --num_processes and --process_id, '
                    'or launch under SLURM, Open MPI or on a Cloud TPU slice.') from None
  if jax.process_index() == 0:
    logging.info('Process %d of %d (%s); %d local and %d global %s devices.',
                 jax.process_index(), jax.process_count(), settings.source,
                 jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
  else:
    # One voice: the other processes log warnings and errors only.
    logging.getLogger().setLevel(logging.WARNING)


def setup(coordinator_address=None, num_processes=None, process_id=None, mode='auto') -> bool:
  """Resolves and initialises; True when this run spans several processes."""
  settings = resolve(coordinator_address, num_processes, process_id, mode)
  initialize(settings)
  return settings is not None
