"""8 fake CPU devices for sharding tests; must run before jax is imported anywhere."""

import os
import shutil
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# One compilation cache for the train.py/eval.py processes of the whole session
# (tests/helpers.run_main). Made in pytest's first process, so every xdist worker inherits
# the same directory, and removed by that process at the end.
_CACHE = 'PERCEIVER_JAX_TEST_COMPILE_CACHE'
_OWN_CACHE = _CACHE not in os.environ
if _OWN_CACHE:
  os.environ[_CACHE] = tempfile.mkdtemp(prefix='perceiver_jax_compile_cache_')


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_CACHE:
    shutil.rmtree(os.environ[_CACHE], ignore_errors=True)
