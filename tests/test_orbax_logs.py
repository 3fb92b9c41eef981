"""orbax_logs drops exactly Orbax's routine warnings and, while a restore may fail, the
closed-event-loop tracebacks of tensorstore reads still in flight; anything else shows."""

import asyncio
import logging
import sys
import threading
import types

from absl import logging as absl_logging

from perceiver_jax import orbax_logs


def _unraisable(error: Exception):
  return types.SimpleNamespace(exc_type=type(error), exc_value=error,
                               exc_traceback=error.__traceback__, err_msg=None, object=None)


def _call_into_closed_loop():
  """What a tensorstore read finishing after Orbax closed its loop does: its callback
  thread's call_soon_threadsafe raises, and tensorstore hands the error to
  sys.unraisablehook (which prints the traceback)."""
  loop = asyncio.new_event_loop()
  loop.close()

  def late_callback():
    try:
      loop.call_soon_threadsafe(lambda: None)
    except RuntimeError as e:
      sys.unraisablehook(_unraisable(e))
  thread = threading.Thread(target=late_callback)
  thread.start()
  thread.join()


def test_closed_loop_tracebacks_are_dropped_only_while_restoring(monkeypatch):
  seen = []
  monkeypatch.setattr('sys.unraisablehook', seen.append)
  with orbax_logs.quiet_failed_restores():
    _call_into_closed_loop()
    assert seen == []
    other = _unraisable(ValueError('real'))
    sys.unraisablehook(other)  # any other unraisable error still reaches the hook
    assert seen == [other]
  _call_into_closed_loop()  # outside the scope: shown again
  assert len(seen) == 2 and str(seen[1].exc_value) == 'Event loop is closed'


def test_routine_warnings_are_dropped_and_real_ones_shown(caplog):
  absl_logging.get_absl_logger()  # the logger Orbax writes to: 'absl'
  absl_logger = logging.getLogger('absl')
  routine = 'Metadata file does not exist: %s'
  failed = 'Failed to get item metadata from directory %s. Either it was not present.'
  real = 'Disk almost full writing %s'
  try:
    orbax_logs.silence_routine_warnings()
    with caplog.at_level(logging.WARNING, logger='absl'):
      for message in (routine, failed, real):
        absl_logger.warning(message, '/w/checkpoints/4/state')
      with orbax_logs.quiet_failed_restores():
        absl_logger.warning(failed, '/w/checkpoints/4/state')
        absl_logger.warning(real, '/w')
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ['Failed to get item metadata from directory /w/checkpoints/4/state. '
                        'Either it was not present.',
                        'Disk almost full writing /w/checkpoints/4/state',
                        'Disk almost full writing /w']
  finally:
    absl_logger.removeFilter(orbax_logs._ROUTINE_FILTER)
