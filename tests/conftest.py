"""8 fake CPU devices for sharding tests; must run before jax is imported anywhere."""

import os
import shutil
import tempfile

import pytest

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# The tests' programs are small and run a few steps: compiling them dominates the suite's
# time, and XLA's optimisations cost more compile time than they save. Measured on a
# runlocal train step (CPU seconds to compile): 9.7 by default, 5.2 with
# jax_disable_most_optimizations (LLVM at -O0, no expensive LLVM passes), 3.4 with the
# older fusion emitters as well; the tests share these settings with the train.py and
# eval.py processes they start (tests/helpers.XLA_TEST_FLAGS). Results move by float32
# rounding only; the modules whose comparisons are sensitive to that compile with the
# default optimisations (xla_default_optimisations below).
from tests.helpers import XLA_TEST_FLAGS  # pylint: disable=g-import-not-at-top

os.environ['XLA_FLAGS'] += ' ' + XLA_TEST_FLAGS
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

# One compilation cache for the whole session: tests compile the same small programs again
# and again (a config resumed, evaluated, fine-tuned; the tiny configs of many files), in
# the xdist workers and in the train.py/eval.py processes they start. Made in pytest's
# first process, so every worker inherits the same directory, and removed by it at the end.
_CACHE = 'PERCEIVER_JAX_TEST_COMPILE_CACHE'
_OWN_CACHE = _CACHE not in os.environ
if _OWN_CACHE:
  os.environ[_CACHE] = tempfile.mkdtemp(prefix='perceiver_jax_compile_cache_')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.environ[_CACHE])
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_CACHE:
    shutil.rmtree(os.environ[_CACHE], ignore_errors=True)


@pytest.fixture(scope='module')
def xla_default_optimisations():
  """XLA's default optimisations for one module's in-process compilations (a module asks
  with pytestmark = pytest.mark.usefixtures('xla_default_optimisations')); a process it
  starts gets them with JAX_DISABLE_MOST_OPTIMIZATIONS=0 in its environment."""
  import jax  # pylint: disable=g-import-not-at-top
  from tests.helpers import xla_default_optimisations as defaults  # pylint: disable=g-import-not-at-top
  jax.clear_caches()  # nothing compiled under the tests' setting is reused
  with defaults():
    yield
  jax.clear_caches()
