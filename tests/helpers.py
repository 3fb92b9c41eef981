"""Shared test utilities: tiny configs and running the real command-line mains."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# XLA flags of every test process (tests/conftest.py) and of the mains they start: the
# older CPU fusion emitters compile a train step in about 2/3 of the time.
XLA_TEST_FLAGS = '--xla_cpu_use_fusion_emitters=false'


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a process the tests start, with `devices` fake CPU devices."""
  return f'--xla_force_host_platform_device_count={devices} {XLA_TEST_FLAGS}'


@contextlib.contextmanager
def xla_default_optimisations():
  """Programs compiled inside get XLA's default optimisations instead of the tests'
  jax_disable_most_optimizations (tests/conftest.py), for results that move with float32
  rounding. A program this process compiled before is reused as it was (the setting is not
  part of JAX's cache keys): wrap a program's first call."""
  import jax  # pylint: disable=g-import-not-at-top
  previous = jax.config.values['jax_disable_most_optimizations']
  jax.config.update('jax_disable_most_optimizations', False)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', previous)

# A small Perceiver on MNIST-1D that compiles and steps in well under a second on CPU.
TINY = {
    'model.preprocessor.num_channels': 16,
    'model.preprocessor.position_encoding.num_bands': 4,
    'model.encoder.num_latents': 8,
    'model.encoder.num_latent_channels': 32,
    'model.encoder.num_blocks': 2,
    'model.encoder.num_self_attends_per_block': 1,
    'model.encoder.num_self_attend_heads': 2,
    'model.encoder.dropout_prob': 0.1,
    'train.batch_size': 16,
    'train.log_every_steps': 1,
    'train.eval_every_steps': 0,
    'eval.batch_size': 200,
    'optimizer.warmup_steps': 2,
    'eval.telemetry_examples': 0,  # tests/test_telemetry.py turns it on
}


def tiny_mnist1d_config(**overrides):
  """configs/mnist1d.py shrunk to TINY, with dotted-key overrides."""
  from configs import mnist1d
  config = mnist1d.get_config()
  return set_dotted(config, {**TINY, **overrides})


def abstract_run(config, input_shape, training: bool = False):
  """run.Run of `config` for `input_shape` on a one-device mesh: the abstract model's
  ModelSpec (num_params), logical names and abstract params, without any dataset."""
  import jax
  from perceiver_jax import sharding as shd
  from perceiver_jax.run import Run
  mesh = shd.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, devices=jax.devices()[:1])
  return Run.from_input_shape(config, input_shape, mesh, training=training)


def set_dotted(config, overrides: dict):
  """Sets config['a']['b'] = value for every 'a.b' key of overrides; returns config."""
  for key, value in overrides.items():
    *path, leaf = key.split('.')
    node = config
    for part in path:
      node = node[part]
    node[leaf] = value
  return config


def flags_for(overrides: dict) -> list[str]:
  out = []
  for key, value in overrides.items():
    out.append(f'--config.{key}={value}')
  return out


def run_main(script: str, args: list[str], *, devices: int = 8, check: bool = True,
             timeout: int = 600, cwd: str = ROOT) -> subprocess.CompletedProcess:
  """Runs train.py / eval.py (from `cwd`), or a module of the package ('perceiver_jax.trainer':
  python -m), in a fresh process with `devices` fake CPU devices."""
  env = dict(os.environ)
  # The mains' programs are small and run a few steps: XLA's backend optimisations cost
  # more compile time than they save (a train.py run of the conv model: 46 s -> 27 s).
  env['XLA_FLAGS'] = f'{xla_flags(devices)} --xla_backend_optimization_level=0'
  env['JAX_PLATFORMS'] = 'cpu'
  # The session's compilation cache and JAX_DISABLE_MOST_OPTIMIZATIONS (tests/conftest.py)
  # come with os.environ.
  program = (['-m', script] if script.startswith('perceiver_jax.')
             else [os.path.join(ROOT, script)])
  proc = subprocess.run([sys.executable, *program, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}')
  return proc


def prepared_data_dir(tmp_path_factory, name: str = 'mnist1d/plain') -> str:
  """A fresh TFDS data dir (for a module-scoped fixture) with embedded dataset `name` built."""
  from perceiver_jax.data import pipeline
  path = str(tmp_path_factory.mktemp('tfds'))
  pipeline.prepare(name, path)
  return path


# Parity with a reference (HF) model, relative to the reference's scale: float32 rounding
# leaves max |ours - ref| below 2e-6 of max |ref| in every parity fixture (outputs below
# 6e-7), while the exact GELU in place of the tanh form, even in the decoder alone, moves
# every output by more than 1.3e-5 of it. tests/test_parity_*.py prove the second claim
# with with_model_error().
PARITY_RTOL = 5e-6
MODEL_ERRORS = ('gelu', 'decoder_gelu', 'decoder_query_residual')


def assert_matches_reference(ours, ref, what: str, rtol: float = PARITY_RTOL) -> None:
  """max |ours - ref| <= rtol * max |ref|, or an AssertionError naming `what`."""
  import numpy as np
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, f'{what}: shape {ours.shape}, reference {ref.shape}'
  diff, scale = float(np.max(np.abs(ours - ref))), float(np.max(np.abs(ref)))
  assert diff <= rtol * scale, (f'{what}: max |ours - reference| = {diff:.3g} > {rtol:g} x '
                                f'max |reference| = {rtol * scale:.3g}')


def with_model_error(model, error: str):
  """A copy of `model` with one deliberate error (MODEL_ERRORS): 'gelu' puts the exact GELU
  in every MLP instead of the tanh form, 'decoder_gelu' in the decoder's only, and
  'decoder_query_residual' flips use_query_residual in the decoder's cross-attends."""
  from flax import nnx
  from perceiver_jax.model.attention import MLP, CrossAttention
  model = nnx.clone(model)
  root = model if error == 'gelu' else model.decoder
  changed = 0
  for _, module in nnx.iter_modules(root):
    if error in ('gelu', 'decoder_gelu') and isinstance(module, MLP):
      assert module.activation == 'gelu_tanh', module.activation
      module.activation, changed = 'gelu', changed + 1
    elif error == 'decoder_query_residual' and isinstance(module, CrossAttention):
      module.use_query_residual, changed = not module.use_query_residual, changed + 1
  assert changed, f'{error}: nothing to change in this model'
  return model


def outputs_with_model_errors(model, *args, **kwargs) -> dict:
  """{error: the output of with_model_error(model, error)(*args, **kwargs)} for every
  MODEL_ERRORS, compiled as one program (one compile on CPU instead of three)."""
  from flax import nnx
  broken = [with_model_error(model, error) for error in MODEL_ERRORS]
  outputs = nnx.jit(lambda ms, a, kw: [m(*a, **kw) for m in ms])(broken, args, kwargs)
  return dict(zip(MODEL_ERRORS, outputs))


def with_random_weights(abstract_model, seed: int = 0, scale: float = 0.5):
  """An abstractly built model (nnx.eval_shape) given scale * N(0, 1) values in every
  variable: no op-by-op random initialisation, which costs seconds on CPU."""
  import numpy as np
  from perceiver_jax.convert import common
  rng = np.random.default_rng(seed)
  variables, _ = common.variable_paths(abstract_model)
  common.assign_params(abstract_model, {
      path: scale * rng.standard_normal(v.get_value().shape) for path, v in variables.items()})
  return abstract_model


def assert_params_close(got, want, lr_sum: float) -> None:
  """Two runs' parameter trees equal to float32 rounding, leaf by leaf (rtol 1e-5,
  atol 1e-7): runs that differ only in reduction order (another mesh or process count).

  Attention key biases are the exception: softmax ignores them, so their gradient is
  rounding noise that Adam scales up to steps of about the learning rate; they only need
  to stay within `lr_sum`, the summed learning rate of the steps taken.
  """
  import jax
  import numpy as np
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    name = jax.tree_util.keystr(path)
    if "['key']['bias']" in name:
      np.testing.assert_allclose(a, b, rtol=0, atol=lr_sum, err_msg=name)
    else:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)


def train_steps(workdir: str) -> list[int]:
  """Steps of the train records in WORKDIR/metrics.jsonl so far, for polling a running
  train.py (no file yet, or a half-written last line, is ignored)."""
  import json
  steps = []
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if record.get('split') == 'train':
          steps.append(record['step'])
  except FileNotFoundError:
    pass
  return steps


def complete_steps(workdir: str) -> list[int]:
  """Steps of the checkpoints Orbax has finished writing (renamed into place), oldest first."""
  from perceiver_jax import checkpoint as ckpt
  directory = ckpt.checkpoint_dir(workdir)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit())


def truncate_array_files(directory: str) -> int:
  """Cuts every array data file (OCDBT's d/ directories) under `directory` in half;
  returns how many there were."""
  count = 0
  for root, _, names in os.walk(directory):
    for name in names if os.path.basename(root) == 'd' else ():
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
      count += 1
  return count


def runlocal(module, data_dir: str, arg: str = 'runlocal', **overrides):
  """module.get_config(arg) (a configs/*.py module) reading its data from data_dir, with
  dotted-key overrides: runlocal(flow_skimage, d, **{'task.flip': False})."""
  config = module.get_config(arg)
  config.data.data_dir = data_dir
  return set_dotted(config, overrides)


def fixed_batch(batch_size: int, num_steps: int, split: str = 'train') -> dict:
  """Overrides for a run that trains on the same batch_size examples (the first of `split`)
  every step, logs every step and saves once, at the end: a run whose loss must fall."""
  return {'data.train_split': f'{split}[:{batch_size}]', 'train.batch_size': batch_size,
          'train.num_steps': num_steps, 'train.log_every_steps': 1,
          'checkpoint.every_steps': num_steps}


def train_losses(workdir: str) -> list[float]:
  """The training losses logged in WORKDIR/metrics.jsonl, in step order."""
  from perceiver_jax.metrics_log import read
  return [r['loss'] for r in read(os.path.join(workdir, 'metrics.jsonl'))
          if r.get('split') == 'train']


def assert_loss_falls(workdir: str, k: int = 3, by: float = 0.1) -> list[float]:
  """Asserts that the run in workdir learned, not only finished: the mean of its last k
  logged training losses is at least `by` (a fraction) below the mean of its first k.
  Returns the losses."""
  losses = train_losses(workdir)
  assert len(losses) >= 2 * k, f'{len(losses)} logged losses; need {2 * k}: {losses}'
  first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
  assert last < (1.0 - by) * first, (
      f'The loss did not fall by {by:.0%} (first {k} mean {first:.4f}, last {k} mean '
      f'{last:.4f}): {losses}')
  return losses
