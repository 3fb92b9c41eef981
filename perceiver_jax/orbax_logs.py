"""Keeps Orbax's and tensorstore's routine output off the user's screen; real warnings stay.

Orbax warns on every restore about things that are normal here, and a restore that fails
on a damaged file leaves tensorstore's pending reads calling back into an asyncio loop
Orbax already closed: hundreds of `RuntimeError: Event loop is closed` tracebacks, while
the one line that matters is ours ("... is damaged; moved it to ...").
"""

from __future__ import annotations

import contextlib
import logging
import sys

# Orbax logs through absl's logger. Format strings (record.msg) of warnings that every
# normal run gets, matched by their start:
ROUTINE = (
    'Metadata file does not exist: ',  # our checkpoint items carry no per-item metadata file
    'CheckpointManagerOptions.read_only=True, setting ',  # eval opens checkpoints read-only
    'Given directory is read only=',
)
# ... and of those a failed restore attempt adds (the attempt's outcome is logged by us).
FAILED_RESTORE = (
    'Failed to get item metadata from directory ',
)


class _DropMessages(logging.Filter):

  def __init__(self, prefixes: tuple[str, ...]):
    super().__init__()
    self.prefixes = prefixes

  def filter(self, record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith(self.prefixes))


_ROUTINE_FILTER = _DropMessages(ROUTINE)


def silence_routine_warnings() -> None:
  """Drops ROUTINE warnings for the rest of the process (idempotent)."""
  logging.getLogger('absl').addFilter(_ROUTINE_FILTER)


def _is_closed_loop_callback(unraisable) -> bool:
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == 'Event loop is closed')


@contextlib.contextmanager
def quiet_failed_restores():
  """While restores may fail on damaged files: no closed-event-loop tracebacks from reads
  still in flight, and no FAILED_RESTORE warnings. Other unraisable errors still print."""
  absl_logger = logging.getLogger('absl')
  failed = _DropMessages(FAILED_RESTORE)
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_closed_loop_callback(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook
  absl_logger.addFilter(failed)
  try:
    yield
  finally:
    absl_logger.removeFilter(failed)
    if sys.unraisablehook is hook:
      sys.unraisablehook = previous
