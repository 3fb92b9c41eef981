"""8 fake CPU devices for sharding tests; must run before jax is imported anywhere."""

import os
import shutil
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

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
