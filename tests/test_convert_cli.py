"""convert.py: released weights -> Orbax checkpoint -> the same outputs after restoring it."""

import logging
import os
import pickle
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from configs.pretrained import language_perceiver, vision_perceiver_conv
from perceiver_jax import checkpoint as ckpt
from perceiver_jax import sharding as shd
from perceiver_jax.convert import released, to_checkpoint
from perceiver_jax.errors import UserError
from perceiver_jax.model.build import build_model
from tests.helpers import assert_matches_reference, run_main
from tests.test_parity_language import INPUTS, META, OUTPUTS, STATE_DICT, model_config_like_hf


def _tiny_language_config():
  config = language_perceiver.get_config()
  config.model = model_config_like_hf(META['hf_config'])
  config.convert.input_shape = INPUTS['input_ids'].shape[1:]
  return config


def _model_flags(config) -> list[str]:
  """--config.model.* flags that turn the released config into `config`'s tiny one."""
  flags = []

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, 'items'):
        walk(value, f'{prefix}.{key}')
      elif value is not None:
        flags.append(f'--config{prefix}.{key}={value}')
  walk(config.model, '.model')
  shape = ','.join(str(n) for n in config.convert.input_shape)
  return flags + [f'--config.convert.input_shape=({shape},)']


@pytest.fixture(scope='module')
def safetensors_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('hf') / 'model.safetensors')
  save_file({k: np.ascontiguousarray(v) for k, v in STATE_DICT.items()}, path)
  return path


def test_converted_checkpoint_restores_to_the_reference_outputs(safetensors_file, tmp_path):
  config = _tiny_language_config()
  workdir = str(tmp_path / 'converted')
  proc = run_main('convert.py', ['--config=configs/pretrained/language_perceiver.py',
                                 f'--input={safetensors_file}', f'--workdir={workdir}',
                                 *_model_flags(config)])
  assert '"num_params"' in proc.stdout
  # Restore the weights on a 4-way FSDP mesh, as eval.py would, and run the model.
  mesh = shd.make_mesh({'data': 2, 'fsdp': 4, 'tensor': 1})
  abstract = nnx.eval_shape(lambda: build_model(config.model, input_shape=(16,),
                                                rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  names = shd.logical_names(abstract)
  params = nnx.to_pure_dict(params)
  shardings = shd.tree_shardings(params, names, mesh, shd.rules_dict(config.sharding.rules))
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        params, shardings)
  item, step = ckpt.find_checkpoint(workdir)
  assert step == 0
  restored, _ = ckpt.restore_weights(item, target, nnx.to_pure_dict(rest))
  model = nnx.merge(graphdef, restored, rest)
  logits = model(jnp.asarray(INPUTS['input_ids']),
                 input_mask=jnp.asarray(INPUTS['attention_mask'].astype(bool)))
  assert_matches_reference(logits, OUTPUTS['logits'], 'logits after restoring')


def test_library_conversion_detects_the_format_and_refuses_to_overwrite(safetensors_file,
                                                                       tmp_path):
  config = _tiny_language_config()
  summary = to_checkpoint.convert_to_checkpoint(config, safetensors_file, str(tmp_path))
  assert summary['num_params'] == sum(v.size for v in STATE_DICT.values())
  with pytest.raises(UserError, match='already holds checkpoints'):
    to_checkpoint.convert_to_checkpoint(config, safetensors_file, str(tmp_path))


def test_weights_of_another_size_are_one_clear_sentence(safetensors_file, tmp_path):
  config = _tiny_language_config()
  config.model.encoder.num_latents = 6
  proc = run_main('convert.py', ['--config=configs/pretrained/language_perceiver.py',
                                 f'--input={safetensors_file}', f'--workdir={tmp_path / "w"}',
                                 *_model_flags(config)], check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert "does not fit this config" in proc.stderr and "'encoder/z_pos_enc/pos_embs'" in proc.stderr
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints' / '0')


def test_a_file_that_is_not_a_perceiver_checkpoint_is_refused(tmp_path):
  path = str(tmp_path / 'other.safetensors')
  save_file({'encoder.layer.0.weight': np.zeros((2, 2), np.float32)}, path)
  with pytest.raises(UserError, match='neither a Hugging Face Perceiver state dict'):
    to_checkpoint.convert_weights(_tiny_language_config(), path)


def _haiku_pickle() -> bytes:
  return pickle.dumps({'perceiver_encoder/~/cross_attention': {'w': np.ones((64, 64),
                                                                              np.float32)}})


# (file name, its bytes or how to make them from the fixture's safetensors, the sentence).
DAMAGED_FILES = [
    ('x.pkl', b'', "'{}' is empty (0 bytes), not a Haiku/PyTorch checkpoint; download it again"),
    ('x.pkl', lambda st: _haiku_pickle()[:2000],
     "is truncated or not a Haiku/PyTorch checkpoint (UnpicklingError: pickle data was "
     "truncated)"),
    ('x.pkl', bytes(range(256)) * 4, 'is truncated or not a Haiku/PyTorch checkpoint ('),
    # Length fields no memory can hold.
    ('x.pkl', b'\x80\x04\x8e' + struct.pack('<Q', 2**62) + b'x', '(MemoryError: MemoryError)'),
    ('x.pkl', b'\x80\x04\x8e' + struct.pack('<Q', 2**64 - 1) + b'x', '(OverflowError: BINBYTES'),
    ('x.safetensors', b'', "is empty (0 bytes), not a safetensors checkpoint"),
    ('x.safetensors', bytes(range(256)) * 4, 'is truncated or not a safetensors checkpoint'),
    ('x.safetensors', lambda st: st[:len(st) // 2], 'is truncated or not a safetensors '),
    ('x.bin', bytes(range(256)), 'is not a zip-format PyTorch checkpoint'),
    ('x.npz', bytes(range(256)), 'is truncated or not a numpy .npz checkpoint'),
]


@pytest.mark.parametrize('name,content,fragment', DAMAGED_FILES,
                         ids=[f'{c[0]}-{i}' for i, c in enumerate(DAMAGED_FILES)])
def test_a_damaged_file_is_one_sentence(name, content, fragment, safetensors_file, tmp_path):
  path = tmp_path / name
  if callable(content):
    with open(safetensors_file, 'rb') as f:
      content = content(f.read())
  path.write_bytes(content)
  with pytest.raises(UserError) as e:
    to_checkpoint.convert_weights(_tiny_language_config(), str(path))
  message = str(e.value)
  assert fragment.format(path) in message, message
  assert '\n' not in message and len(message) < 400 and message.endswith('.'), message


def test_convert_py_on_an_empty_file_exits_2_and_writes_nothing(tmp_path):
  (tmp_path / 'x.pkl').write_bytes(b'')
  workdir = tmp_path / 'w'
  proc = run_main('convert.py', ['--config=configs/pretrained/language_perceiver.py',
                                 f'--input={tmp_path / "x.pkl"}', f'--workdir={workdir}'],
                  check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [f"error: '{tmp_path / 'x.pkl'}' is empty (0 bytes), not a Haiku/PyTorch "
                    'checkpoint; download it again.']
  assert not workdir.exists()


def test_conversion_reports_the_blocks_it_cannot_read_from_the_weights(safetensors_file,
                                                                       tmp_path, caplog):
  config = _tiny_language_config()
  with caplog.at_level(logging.INFO):
    summary = to_checkpoint.convert_to_checkpoint(config, safetensors_file, str(tmp_path))
  encoder = config.model.encoder
  assert summary['encoder'] == {
      'num_blocks': encoder.num_blocks, 'cross_attends': 1,
      'self_attends_per_block': encoder.num_self_attends_per_block,
      'latents': (encoder.num_latents, encoder.num_latent_channels)}
  assert summary['released_configs'] == []  # a tiny test model
  text = '\n'.join(r.getMessage() for r in caplog.records)
  assert (f"encoder: {encoder.num_blocks} block{'s' * (encoder.num_blocks != 1)} of "
          f'{encoder.num_self_attends_per_block} self-attends') in text
  assert "matches no released config in configs/pretrained/ of family 'language'" in text


@pytest.mark.parametrize('num_blocks', [8, 4])
def test_a_released_layout_is_named_with_its_num_blocks(num_blocks):
  # The released conv model's weights fit a config of any block count.
  config = vision_perceiver_conv.get_config()
  config.model.encoder.num_blocks = num_blocks
  shape = released.model_input_shape(config)
  model = nnx.eval_shape(lambda: build_model(config.model, input_shape=shape,
                                             rngs=nnx.Rngs(0)))
  matches = released.matching(model, config, shape)
  assert [name for name, _ in matches] == ['vision_perceiver_conv']
  sentence = released.describe(config, matches)
  assert sentence.startswith('The parameter layout matches configs/pretrained/'
                             'vision_perceiver_conv.py (num_blocks=8); this config has '
                             f'num_blocks={num_blocks}')
  assert ('--config.model.encoder.num_blocks to the released value' in sentence) == (
      num_blocks != 8)


@pytest.mark.parametrize('workdir,fragment', [
    ('a_file', 'exists and is not a directory'),
    ('a_file/run', 'is a file, not a directory; choose another --workdir'),
    ('w' * 300, '--workdir has a folder name of 300 bytes'),
])
def test_a_workdir_that_cannot_be_written_fails_before_reading(workdir, fragment, tmp_path,
                                                               monkeypatch):
  (tmp_path / 'a_file').write_text('keep me')
  monkeypatch.setattr(to_checkpoint, 'load_checkpoint_file', lambda path: pytest.fail('read'))
  with pytest.raises(UserError, match=fragment):
    to_checkpoint.convert_to_checkpoint(_tiny_language_config(), str(tmp_path / 'x.pkl'),
                                        str(tmp_path / workdir))
  assert sorted(os.listdir(tmp_path)) == ['a_file']
  assert (tmp_path / 'a_file').read_text() == 'keep me'
