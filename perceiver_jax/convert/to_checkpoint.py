"""Released weights -> an Orbax checkpoint that eval.py and train.py (init_from) read.

The model of `config` is built abstractly (no initialisation is computed), the file's
arrays are mapped to our parameter paths by the family's converter
(`config.convert.family` -> `perceiver_jax.convert.hf_<family>`) and written as
WORKDIR/checkpoints/0/state = {params, model_state}: the weights part of a training
checkpoint, so `eval.py --workdir=WORKDIR` evaluates it and
`train.py --config.init_from=WORKDIR` fine-tunes from it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from flax import nnx

from perceiver_jax import checkpoint as ckpt
from perceiver_jax import command_line
from perceiver_jax import validate, workdir_config
from perceiver_jax.convert.readers import load_checkpoint_file
from perceiver_jax.convert import released
from perceiver_jax.convert.common import assign_params
from perceiver_jax.convert.released import model_input_shape
from perceiver_jax.errors import UserError
from perceiver_jax.model.build import build_model
from perceiver_jax.model.summary import count_params, encoder_structure, format_summary

FORMATS = ('auto', 'hf', 'haiku')


def family_converter(config):
  """The `hf_<family>` converter module named by config.convert.family."""
  family = config.get('convert', {}).get('family')
  if not family:
    raise UserError('config.convert.family is not set; use a config from configs/pretrained/ '
                    '(language, vision, multimodal).')
  try:
    return importlib.import_module(f'perceiver_jax.convert.hf_{family}')
  except ModuleNotFoundError:
    raise UserError(f'config.convert.family={family!r} has no converter; valid families are '
                    'language, vision and multimodal.') from None


def detect_format(path: str, arrays: dict) -> str:
  """'hf' for transformers state dicts (keys 'perceiver.*'), 'haiku' for DeepMind pickles."""
  if any(k.startswith('perceiver.') for k in arrays):
    return 'hf'
  if path.endswith(('.pkl', '.pickle', '.pystate')) or any('/~/' in k or k.startswith('perceiver_encoder') for k in arrays):
    return 'haiku'
  raise UserError(f'{path} holds neither a Hugging Face Perceiver state dict (keys '
                  f'"perceiver.*") nor DeepMind Haiku parameters; pass --format=hf or haiku '
                  f'if you know which it is.')


def convert_weights(config, path: str, fmt: str = 'auto') -> nnx.Module:
  """The model of `config` holding the weights of the file at `path`."""
  if fmt not in FORMATS:
    raise UserError(f'Unknown format {fmt!r}; use one of {", ".join(FORMATS)}.')
  if not os.path.exists(path):
    raise UserError(f'{path} does not exist; pass the downloaded checkpoint file.')
  converter = family_converter(config)
  input_shape = model_input_shape(config)
  try:
    arrays = load_checkpoint_file(path)
  except ValueError as e:
    raise UserError(str(e)) from None
  fmt = detect_format(path, arrays) if fmt == 'auto' else fmt
  # Abstract build: shapes only, so a 200M-parameter model costs no initialisation.
  model = nnx.eval_shape(lambda: build_model(config.model, input_shape=input_shape,
                                             rngs=nnx.Rngs(0)))
  convert = converter.convert_hf_state_dict if fmt == 'hf' else converter.convert_haiku_params
  try:
    assign_params(model, convert(arrays, model))
  except KeyError as e:
    raise UserError(f'{path} lacks {e} that config {config.convert.family!r} models need; '
                    f'check that the file and the config are the same released model.') from None
  except ValueError as e:
    raise UserError(f'{path} does not fit this config: {e}') from None
  return model


def write_checkpoint(model: nnx.Module, workdir: str, config=None) -> str:
  """Saves the model's weights as step 0 of WORKDIR/checkpoints; returns its directory."""
  manager = ckpt.make_manager(workdir, ml_collections.ConfigDict(dict(keep=1, async_save=False)))
  if manager.all_steps():
    raise UserError(f'{ckpt.checkpoint_dir(workdir)} already holds checkpoints; convert into '
                    f'a new --workdir so nothing is overwritten.')
  _, params, rest = nnx.split(model, nnx.Param, ...)
  weights = {'params': nnx.to_pure_dict(params), 'model_state': nnx.to_pure_dict(rest)}
  weights = jax.tree.map(np.asarray, weights)
  manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(weights)))
  manager.wait_until_finished()
  manager.close()
  if config is not None and jax.process_index() == 0:  # one writer in a multi-process run
    workdir_config.write(workdir, config)
  return os.path.join(ckpt.checkpoint_dir(workdir), '0')


CLASS_NAMES = 'class_names.json'


def hf_class_names(weights_path: str) -> list[str] | None:
  """The class names of a Hugging Face model directory's config.json (`id2label`, in id
  order) beside the weights file, or None (no such file, or no labels in it)."""
  config_file = os.path.join(os.path.dirname(os.path.abspath(weights_path)), 'config.json')
  try:
    with open(config_file) as f:
      id2label = json.load(f).get('id2label') or {}
    names = [id2label[str(i)] for i in range(len(id2label))]
  except (OSError, ValueError, KeyError, AttributeError):
    return None
  return [str(n) for n in names] or None


def convert_to_checkpoint(config, path: str, workdir: str, fmt: str = 'auto') -> dict:
  """Converts the file at `path` for `config` into WORKDIR; returns a short summary.
  A Hugging Face config.json beside the weights gives the classes' names
  (WORKDIR/class_names.json, read by perceiver-predict)."""
  # A workdir that cannot be written fails before the file is read.
  validate.check_workdir(workdir, training=True)
  model = convert_weights(config, path, fmt)
  directory = write_checkpoint(model, workdir, config)
  names = hf_class_names(path)
  if names and len(names) == config.model.num_classes and jax.process_index() == 0:
    with open(os.path.join(workdir, CLASS_NAMES), 'w') as f:
      json.dump(names, f, indent=0)
  summary = {'num_params': count_params(model)}
  encoder = encoder_structure(model)
  if encoder:
    summary['encoder'] = encoder
  logging.info('Converted %s into %s; model: %s.', path, directory,
               format_summary(summary).replace('\n', '; '))
  if encoder:
    # Shared weights do not show the block count: name the released model the file fits.
    matches = released.matching(model, config, model_input_shape(config))
    summary['released_configs'] = [name for name, _ in matches]
    logging.info(released.describe(config, matches))
  return {'checkpoint': directory, **summary}

# ------------------------------------------------------------------------------------------
# The command line.
# ------------------------------------------------------------------------------------------

def _main(argv) -> None:
  del argv
  FLAGS = command_line.FLAGS
  command_line.start()
  if not FLAGS.input:
    raise UserError('--input is required: the released checkpoint file to convert.')
  print(json.dumps(convert_to_checkpoint(FLAGS.config, FLAGS.input, FLAGS.workdir,
                                         FLAGS.format)))


def main() -> None:
  """python -m perceiver_jax.convert.to_checkpoint (also convert.py, perceiver-convert)."""
  flags.DEFINE_string('input', None, 'Released weights: HF .safetensors/.bin or DeepMind .pkl.')
  flags.DEFINE_enum('format', 'auto', ['auto', 'hf', 'haiku'],
                    'Checkpoint naming: Hugging Face, DeepMind Haiku, or detect from the keys.')
  command_line.run(
      _main,
      'Converts released Perceiver weights into an Orbax checkpoint in WORKDIR.\n\n'
      'usage: {prog} --config=FILE --input=WEIGHTS --workdir=DIR [--format=auto|hf|haiku]')


if __name__ == '__main__':
  main()
