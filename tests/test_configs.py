"""Every experiment config and variant loads, validates and builds (abstractly: no FLOPs)."""

import subprocess
import sys

import pytest
from flax import nnx

from configs import digits, mnist1d
from perceiver_jax import state as state_lib
from perceiver_jax.run import parse_variant
from perceiver_jax.validate import validate_config
from tests.helpers import ROOT, abstract_run

CASES = [
    (digits, None, (8, 8, 1)),
    (digits, 'tokens=patches,steps=10', (8, 8, 1)),
    (mnist1d, None, (40, 1)),
    (mnist1d, 'model=raw', (40, 1)),
    (mnist1d, 'model=patches', (40, 1)),
    (mnist1d, 'model=raw,data=shuffled', (40, 1)),
    (mnist1d, 'model=pure', (40, 1)),
    (mnist1d, 'model=pure,data=shuffled', (40, 1)),
    (mnist1d, 'data=shuffled,steps=10', (40, 1)),
]


@pytest.mark.parametrize('module,arg,input_shape', CASES)
def test_config_validates_and_builds(module, arg, input_shape):
  config = module.get_config(arg)
  validate_config(config)
  model = nnx.eval_shape(lambda: state_lib.build(config, input_shape))
  run = abstract_run(config, input_shape)
  assert run.model.num_params > 0
  assert model is not None and set(run.param_names) == set(run.abstract_params)


def test_variants_select_data_and_augmentation():
  assert mnist1d.get_config('data=shuffled').data.name == 'mnist1d/shuffled'
  assert mnist1d.get_config('data=shuffled').data.augment == ''
  assert mnist1d.get_config().data.augment == 'random_shift'
  assert mnist1d.get_config('model=raw').model.preprocessor.position_encoding.name == 'trainable'
  pure = mnist1d.get_config('model=pure,data=shuffled')
  assert pure.model.preprocessor.position_encoding.name == 'fourier'
  assert pure.data.augment == 'scale_noise'  # permutation-safe, so on for shuffled data too
  assert mnist1d.get_config('steps=7').train.num_steps == 7
  with pytest.raises(ValueError, match='Unknown config variant key'):
    mnist1d.get_config('modle=raw')
  with pytest.raises(ValueError, match='Unknown mnist1d model variant'):
    mnist1d.get_config('model=cnn')


def test_digits_variants():
  pixels = digits.get_config().model.preprocessor
  assert (pixels.patch_size, pixels.patch_stride, pixels.patch_padding) == (
      (3, 3), (1, 1), (1, 1))  # every pixel a token: its 3x3 neighbourhood
  assert digits.get_config().train.num_steps == 400
  patches = digits.get_config('tokens=patches')  # the earlier default, whole
  assert patches.model.preprocessor.patch_size == (2, 2)
  assert (patches.train.num_steps, patches.optimizer.learning_rate) == (800, 1e-3)
  assert digits.get_config('steps=7').train.num_steps == 7
  with pytest.raises(ValueError, match='Unknown digits tokens variant'):
    digits.get_config('tokens=conv')


def test_parse_arg_types_values_by_default():
  parsed = parse_variant('a=3,b=true,c=x', a=1, b=False, c='y')
  assert (parsed.a, parsed.b, parsed.c) == (3, True, 'x')


def test_optional_model_fields_are_overridable_from_the_command_line():
  # None-valued fields must keep a type, or ml_collections refuses --config.x=64.
  code = ('from absl import flags; from ml_collections import config_flags; import sys;'
          'c = config_flags.DEFINE_config_file("config");'
          'flags.FLAGS(sys.argv);'
          'print(c.value.model.encoder.qk_channels, c.value.model.preprocessor.position_encoding.max_resolution)')
  out = subprocess.run([sys.executable, '-c', code, 'prog', '--config=configs/mnist1d.py',
                        '--config.model.encoder.qk_channels=64',
                        '--config.model.preprocessor.position_encoding.max_resolution=(20,)'],
                       capture_output=True, text=True, check=True, cwd=ROOT).stdout
  assert out.split() == ['64', '(20,)']


# The papers' benchmarks (docs/benchmarks.md): each validates at full size and has a
# :runlocal variant, which its own test file trains (tests/test_<benchmark>.py).
BENCHMARKS = ('audioset_perceiver', 'flow_autoflow', 'flow_skimage', 'imagenet_perceiver',
              'imagenet_perceiver_io', 'kinetics_autoencoding', 'mlm_c4', 'mlm_stdlib',
              'modelnet40_perceiver', 'perceiver_ar_stdlib', 'text_classification')


def test_every_config_file_is_a_known_experiment():
  import os  # pylint: disable=g-import-not-at-top
  names = {n[:-3] for n in os.listdir(os.path.join(ROOT, 'configs'))
           if n.endswith('.py') and not n.startswith('_')}
  assert names == set(BENCHMARKS) | {'digits', 'mnist1d'}


@pytest.mark.parametrize('name', BENCHMARKS)
def test_benchmark_config_validates_at_full_size_and_runlocal(name):
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f'configs.{name}')
  full, local = module.get_config(), module.get_config('runlocal')
  validate_config(full)
  validate_config(local)
  assert local.train.num_steps <= 10 and local.train.batch_size <= 16
  assert full.train.num_steps > local.train.num_steps
