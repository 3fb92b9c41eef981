"""Writes tiny train.py checkpoints of every model kind, for tests/test_checkpoint_compat.py.

They were written by the code of one commit (recorded in index.json) and are committed, so
a later change that renames a parameter or model variable fails the test instead of
orphaning every checkpoint users have. Rerun only to add a model kind; never to "fix" the
test after a change broke restoring (that is the break the fixtures exist to catch):
  .venv/bin/python tools/make_checkpoint_compat_fixtures.py
Writes tests/fixtures/checkpoints/<name>/{checkpoints/, config.json, weights.npz} and
tests/fixtures/checkpoints/index.json.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.helpers import set_dotted  # pylint: disable=g-import-not-at-top (after sys.path)

OUT = os.path.join(ROOT, 'tests', 'fixtures', 'checkpoints')

# Small encoders keep each fixture to a few hundred KiB; the module tree (and so every
# parameter path) is the config's own.
SMALL = {'model.encoder.num_latents': 4, 'model.encoder.num_latent_channels': 16,
         'model.encoder.num_self_attends_per_block': 1, 'model.encoder.num_self_attend_heads': 1}
RUN = {'train.num_steps': 1, 'train.log_every_steps': 1, 'checkpoint.every_steps': 1,
       'checkpoint.keep': 1, 'eval.telemetry_examples': 0}

# name: (configs module, variant arg, overrides). Each covers model parts the others lack.
FIXTURES = {
    'digits': ('digits', None, {'train.batch_size': 8, 'eval.batch_size': 360}),
    'mnist1d': ('mnist1d', None, {'train.batch_size': 8}),
    'imagenet_io_conv': ('imagenet_perceiver_io', 'runlocal,pos=conv', {}),  # BatchNorm
    'imagenet_perceiver': ('imagenet_perceiver', 'runlocal', {}),
    'mlm_stdlib': ('mlm_stdlib', 'runlocal', {}),
    'flow_skimage': ('flow_skimage', 'runlocal', {}),
    'kinetics': ('kinetics_autoencoding', 'runlocal', {}),
    'audioset': ('audioset_perceiver', 'runlocal', {}),
    'modelnet40': ('modelnet40_perceiver', 'runlocal,synthetic', {}),
}


def build_config(module: str, arg, overrides: dict, data_dir: str):
  config = importlib.import_module(f'configs.{module}').get_config(arg)
  config.data.data_dir = data_dir
  return set_dotted(config, {**SMALL, **RUN, **overrides})


def main():
  from flax import traverse_util
  import numpy as np
  import orbax.checkpoint as ocp
  from perceiver_jax import checkpoint as ckpt
  from perceiver_jax.trainer import train_and_evaluate
  from perceiver_jax.run import Run

  commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
  shutil.rmtree(OUT, ignore_errors=True)
  os.makedirs(OUT)
  data_dir = tempfile.mkdtemp(prefix='tfds_')
  index = {'commit': commit, 'small': SMALL, 'run': RUN, 'fixtures': {}}
  for name, (module, arg, overrides) in FIXTURES.items():
    workdir = os.path.join(tempfile.mkdtemp(), name)
    config = build_config(module, arg, overrides, data_dir)
    metrics = train_and_evaluate(config, workdir)
    manager = ckpt.make_manager(workdir, read_only=True)
    step = manager.latest_step()
    manager.close()
    # The saved weights as written, read without a target (no model code involved).
    with ocp.PyTreeCheckpointer() as checkpointer:
      saved = checkpointer.restore(os.path.join(ckpt.checkpoint_dir(workdir), str(step),
                                                'state'))
    weights = {k: saved[k] for k in ('params', 'model_state') if saved.get(k)}
    flat = {'/'.join(map(str, k)): np.asarray(v)
            for k, v in traverse_util.flatten_dict(weights).items()}
    target = os.path.join(OUT, name)
    shutil.copytree(os.path.join(workdir, 'checkpoints'), os.path.join(target, 'checkpoints'))
    shutil.copy(os.path.join(workdir, 'config.json'), target)
    np.savez(os.path.join(target, 'weights.npz'), **flat)
    input_shape = Run.create(config).data_spec.input_shape
    index['fixtures'][name] = {
        'config': module, 'arg': arg, 'overrides': overrides, 'step': step,
        'input_shape': input_shape,
        'eval': {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}}
    print(name, step, len(flat), 'arrays', metrics)
  with open(os.path.join(OUT, 'index.json'), 'w') as f:
    json.dump(index, f, indent=2)


if __name__ == '__main__':
  main()
