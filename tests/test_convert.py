"""Tests of checkpoint reading (PyTorch zip without torch, safetensors, npz, Haiku pickles)
and of assign_params' checks. The .bin / .safetensors fixtures were written by real
torch with tools/make_checkpoint_format_fixtures.py."""

import os
import pickle
import sys
import types
import zipfile

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from perceiver_jax import convert
from perceiver_jax.convert import readers

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')


# ------------------------------------------------------------------------- reading


def test_torch_zip_read_without_torch():
  sd = convert.load_checkpoint_file(os.path.join(FIXTURES, 'torch_state_dict.bin'))
  np.testing.assert_array_equal(sd['layer.weight'], np.arange(6, dtype=np.float32).reshape(2, 3))
  assert sd['layer.weight'].dtype == np.float32
  np.testing.assert_array_equal(sd['layer.bias'], [0.5, -0.5])
  # A transposed (non-contiguous) tensor keeps its logical layout.
  np.testing.assert_array_equal(sd['transposed'], np.arange(12).reshape(3, 4).T)
  # A view with a storage offset reads the right elements.
  np.testing.assert_array_equal(sd['offset_view'], [2, 3, 4])
  assert sd['offset_view'].dtype == np.int64
  assert sd['half'].dtype == np.float16 and sd['half'].tolist() == [1.5, -2.0]
  assert sd['bf16'].dtype == ml_dtypes.bfloat16
  assert sd['bf16'].astype(np.float32).tolist() == [1.5, -2.0]
  assert sd['flags'].tolist() == [True, False]
  assert sd['scalar'].shape == () and float(sd['scalar']) == 3.25
  np.testing.assert_array_equal(sd['tied_a'], sd['tied_b'])
  assert sd['tied_a'].dtype == np.float64
  assert set(sd) == {'layer.weight', 'layer.bias', 'transposed', 'offset_view', 'half', 'bf16',
                     'flags', 'scalar', 'tied_a', 'tied_b'}


def test_torch_loader_does_not_import_torch():
  code = ('import sys; from perceiver_jax.convert import load_checkpoint_file as f; '
          f'f({os.path.join(FIXTURES, "torch_state_dict.bin")!r}); '
          'assert "torch" not in sys.modules, "torch was imported"')
  import subprocess
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_torch_zip_refuses_arbitrary_objects(tmp_path):
  path = tmp_path / 'evil.bin'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps({'w': os.getcwd}))
  with pytest.raises(ValueError, match='not part of a plain state dict'):
    convert.load_checkpoint_file(str(path))


def test_legacy_torch_file_is_refused_clearly(tmp_path):
  path = tmp_path / 'old.bin'
  path.write_bytes(pickle.dumps({'a': 1}))
  with pytest.raises(ValueError, match='not a zip-format PyTorch checkpoint'):
    convert.load_checkpoint_file(str(path))


def test_safetensors_with_bf16():
  sd = convert.load_checkpoint_file(os.path.join(FIXTURES, 'bf16.safetensors'))
  assert sd['bf16'].dtype == ml_dtypes.bfloat16
  assert sd['bf16'].astype(np.float32).tolist() == [1.5, -2.0]
  np.testing.assert_array_equal(sd['f32'], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_safetensors_float32_round_trip(tmp_path):
  from safetensors.numpy import save_file
  arrays = {'a': np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32),
            'b': np.arange(4, dtype=np.int32)}
  save_file(arrays, str(tmp_path / 'x.safetensors'))
  sd = convert.load_checkpoint_file(str(tmp_path / 'x.safetensors'))
  for k, v in arrays.items():
    np.testing.assert_array_equal(sd[k], v)
  assert readers._read_safetensors_raw(str(tmp_path / 'x.safetensors'))['a'].tolist() == \
      arrays['a'].tolist()


def test_npz_and_unknown_extension(tmp_path):
  np.savez(tmp_path / 'x.npz', a=np.ones(3), **{'b/c': np.zeros(2)})
  sd = convert.load_checkpoint_file(str(tmp_path / 'x.npz'))
  assert set(sd) == {'a', 'b/c'} and sd['a'].tolist() == [1, 1, 1]
  (tmp_path / 'x.h5').write_bytes(b'')
  with pytest.raises(ValueError, match="Unknown checkpoint format '.h5'"):
    convert.load_checkpoint_file(str(tmp_path / 'x.h5'))
  with pytest.raises(ValueError, match='does not exist'):
    convert.load_checkpoint_file(str(tmp_path / 'missing.npz'))


@pytest.fixture
def fake_haiku(monkeypatch):
  """A stand-in `haiku._src.data_structures` so we can pickle FlatMapping-like objects the
  way Haiku does: (FlatMapping, (dict,))."""
  names = ['haiku', 'haiku._src', 'haiku._src.data_structures']
  mods = {n: types.ModuleType(n) for n in names}
  ds = mods['haiku._src.data_structures']

  def FlatMapping(d):  # noqa: N802 - the name Haiku pickles under
    return dict(d)
  FlatMapping.__module__, FlatMapping.__qualname__ = ds.__name__, 'FlatMapping'

  class FlatMap(dict):
    def __reduce__(self):
      return FlatMapping, (dict(self),)
  FlatMap.__module__, FlatMap.__qualname__ = ds.__name__, 'FlatMap'
  ds.FlatMapping, ds.FlatMap = FlatMapping, FlatMap
  for n, m in mods.items():
    monkeypatch.setitem(sys.modules, n, m)
  return FlatMap


def test_haiku_pickle_flattening(tmp_path, fake_haiku):
  rng = np.random.default_rng(0)
  w = rng.standard_normal((4, 3)).astype(np.float32)
  params = fake_haiku({
      'embed': fake_haiku({'embeddings': w}),
      'perceiver_encoder/~/cross_attention/layer_norm': fake_haiku(
          {'scale': np.ones(3, np.float32), 'offset': np.zeros(3, np.float32)}),
  })
  path = tmp_path / 'params.pkl'
  path.write_bytes(pickle.dumps(params))
  sd = convert.load_checkpoint_file(str(path))
  assert set(sd) == {'embed/embeddings',
                     'perceiver_encoder/~/cross_attention/layer_norm/scale',
                     'perceiver_encoder/~/cross_attention/layer_norm/offset'}
  np.testing.assert_array_equal(sd['embed/embeddings'], w)


def test_haiku_params_and_state_are_merged(tmp_path):
  ckpt = {'params': {'conv/~/batchnorm': {'scale': np.ones(2), 'offset': np.zeros(2)}},
          'state': {'conv/~/batchnorm/~/mean_ema': {'average': np.full(2, 3.0),
                                                    'counter': np.array(7)},
                    'step': {'hidden': None}}}
  path = tmp_path / 'ckpt.pickle'
  path.write_bytes(pickle.dumps(ckpt))
  sd = convert.load_checkpoint_file(str(path))
  assert set(sd) == {'conv/~/batchnorm/scale', 'conv/~/batchnorm/offset',
                     'conv/~/batchnorm/~/mean_ema/average', 'conv/~/batchnorm/~/mean_ema/counter'}
  assert sd['conv/~/batchnorm/~/mean_ema/average'].tolist() == [3.0, 3.0]


def test_haiku_pickle_refuses_arbitrary_objects(tmp_path):
  path = tmp_path / 'evil.pkl'
  path.write_bytes(pickle.dumps({'m': {'w': os.getcwd}}))
  with pytest.raises(ValueError, match='only mappings of numpy arrays are read'):
    convert.load_checkpoint_file(str(path))


# ----------------------------------------------------------------------- assigning


class Head(nnx.Module):
  def __init__(self, table):
    self.table = table  # the same Param object as Tied.embed


class Tied(nnx.Module):
  """Two modules sharing one Param (like the MLM embedding), a list and a BatchNorm."""

  def __init__(self):
    rngs = nnx.Rngs(0)
    self.embed = nnx.Param(jnp.zeros((5, 3)))
    self.blocks = nnx.List([nnx.Linear(3, 2, rngs=rngs), nnx.Linear(2, 2, rngs=rngs)])
    self.norm = nnx.BatchNorm(2, rngs=rngs)
    self.head = Head(self.embed)
    self.bias = nnx.Param(jnp.zeros((5,), jnp.bfloat16))


def _values(model):
  variables, _ = convert.variable_paths(model)
  rng = np.random.default_rng(1)
  return {k: rng.standard_normal(v.get_value().shape).astype(np.float32)
          for k, v in variables.items()}


def test_variable_paths_match_nnx_state_and_find_aliases():
  model = Tied()
  variables, aliases = convert.variable_paths(model)
  flat = nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))
  assert set(variables) == {'/'.join(map(str, p)) for p, _ in flat}
  assert 'blocks/1/kernel' in variables and 'norm/mean' in variables
  # The shared Param has one canonical path (nnx's, 'embed' sorts first) and one alias.
  assert 'embed' in variables and 'head/table' not in variables
  assert aliases == {'head/table': 'embed'}


def test_assign_params_writes_every_value_and_casts():
  model = Tied()
  values = _values(model)
  convert.assign_params(model, values)
  np.testing.assert_array_equal(model.blocks[1].kernel[...], values['blocks/1/kernel'])
  np.testing.assert_array_equal(model.norm.var[...], values['norm/var'])
  assert model.bias[...].dtype == jnp.bfloat16  # cast to the variable's dtype
  np.testing.assert_allclose(np.asarray(model.bias[...], np.float32), values['bias'],
                             atol=1e-2)


def test_assign_params_accepts_a_tied_weight_under_either_path():
  model = Tied()
  values = _values(model)
  values['head/table'] = values.pop('embed')
  convert.assign_params(model, values)
  np.testing.assert_array_equal(model.embed[...], values['head/table'])
  np.testing.assert_array_equal(model.head.table[...], values['head/table'])
  values['embed'] = values['head/table']
  with pytest.raises(ValueError, match='is given twice'):
    convert.assign_params(model, values)


def test_assign_params_shape_mismatch_names_parameter_and_both_shapes():
  model = Tied()
  values = _values(model)
  values['blocks/0/kernel'] = np.zeros((4, 2), np.float32)
  before = np.asarray(model.blocks[1].kernel[...]).copy()
  with pytest.raises(ValueError, match=r"'blocks/0/kernel' has shape \(3, 2\) in the model "
                                       r"but \(4, 2\) in the checkpoint"):
    convert.assign_params(model, values)
  # Nothing was written: the checks run before any assignment.
  np.testing.assert_array_equal(model.blocks[1].kernel[...], before)


def test_assign_params_lists_unknown_and_missing_in_one_sentence():
  model = Tied()
  values = _values(model)
  del values['blocks/0/bias'], values['norm/mean']
  values['decoder/extra'] = np.zeros(1)
  with pytest.raises(ValueError) as e:
    convert.assign_params(model, values)
  msg = str(e.value)
  assert 'the checkpoint has 1 parameters the model does not: decoder/extra (1,)' in msg
  # With the shapes the model wants.
  assert ('the model has 2 parameters the checkpoint does not give: blocks/0/bias (2,), '
          'norm/mean (2,)') in msg


# ------------------------------------------------------------------------- helpers


def test_torch_layout_helpers():
  w = np.arange(6).reshape(2, 3)  # torch Linear [out, in]
  assert convert.torch_linear(w).shape == (3, 2)
  np.testing.assert_array_equal(convert.torch_linear(w), w.T)
  conv = np.random.default_rng(0).standard_normal((8, 3, 7, 5))  # [out, in, kh, kw]
  k = convert.torch_conv(conv)
  assert k.shape == (7, 5, 3, 8)
  assert k[2, 4, 1, 6] == conv[6, 1, 2, 4]


def test_state_dict_reader_reports_unused_and_missing_keys():
  reader = convert.StateDictReader({'a.weight': np.ones(2), 'b.weight': np.ones(2)},
                                   source='HF checkpoint')
  reader.take('a.weight')
  with pytest.raises(ValueError, match="has 1 entries this model does not use: b.weight"):
    reader.check_all_used()
  with pytest.raises(ValueError, match="The HF checkpoint has no entry 'c.weight'"):
    reader.take('c.weight')
  # What the module holds instead, with shapes, names a renamed or reshaped entry.
  reader = convert.StateDictReader({'enc.q.weight_v2': np.ones((3, 2)), 'enc.q.bias': np.ones(3)})
  with pytest.raises(ValueError, match=r"no entry 'enc.q.weight' \(beside it: enc.q.bias \(3,\), "
                                       r"enc.q.weight_v2 \(3, 2\)\); it was made for another"):
    reader.take('enc.q.weight')
