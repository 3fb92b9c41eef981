"""perceiver-predict: files and texts in, a JSON summary (and flow files) out.

  image classifiers   IMAGE... -> each file's top-k classes with names and probabilities
  mlm                 --text='... [MASK][MASK] ...' (or --text=... --mask=SUBSTRING, which
                      masks every byte of the substring's last occurrence) -> the filled text
  flow                FRAME1 FRAME2 -> OUTPUT.flo (Middlebury) and OUTPUT.png (colour wheel)

Nothing already on disk is overwritten: existing outputs are refused in one sentence.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import flags
from PIL import Image, UnidentifiedImageError

from perceiver_jax import command_line
from perceiver_jax import flow_colors
from perceiver_jax import predict as predict_lib
from perceiver_jax.data import flow_io
from perceiver_jax.errors import UserError
from perceiver_jax.tasks.mlm import mask_substring

IMAGE_TASKS = ('classification', 'image_classification')


def read_image(path: str, channels: int = 3) -> np.ndarray:
  """An image file as uint8 [H, W, channels] (channels 1: greyscale, 3: RGB)."""
  if not os.path.isfile(path):
    raise UserError(f'{path} does not exist; pass image files.')
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('L' if channels == 1 else 'RGB')).reshape(
          image.height, image.width, channels)
  except (UnidentifiedImageError, OSError) as e:
    raise UserError(f'{path} is not a readable image ({e}); pass PNG or JPEG files.') from None


def _classify(predictor, files: list[str], k: int) -> dict:
  if not files:
    raise UserError('Give the image files to classify: perceiver-predict --workdir=DIR '
                    'IMAGE...')
  shape = predictor.input_shape
  channels = shape[-1] if isinstance(shape, tuple) and shape[-1] in (1, 3) else 3
  images = [read_image(f, channels) for f in files]
  if predictor.task.name == 'classification':  # fixed-size inputs, as the dataset stores them
    images = [x.astype(np.float32) for x in images]
  probabilities = predictor.predict(images)
  ranked = predict_lib.top_k(probabilities, predictor.class_names(), k)
  return {'predictions': [{'file': f, 'top_k': [[name, p] for name, p in best]}
                          for f, best in zip(files, ranked)]}


def _fill(predictor, files: list[str], text: str | None, mask: str | None) -> dict:
  if files or text is None:
    raise UserError("This language model fills masked bytes: pass --text='...' with "
                    "'[MASK]' for each byte to fill, or --text and --mask=SUBSTRING.")
  if mask:
    text = mask_substring(text, mask)
  return {'text': text, 'filled': predictor.predict(text)}


def _flow(predictor, files: list[str], output: str) -> dict:
  if len(files) != 2:
    raise UserError(f'The flow model takes two frames; got {len(files)} files: '
                    'perceiver-predict --workdir=DIR FRAME1 FRAME2.')
  paths = {'flo': f'{output}.flo', 'png': f'{output}.png'}
  for path in paths.values():
    if os.path.exists(path):
      raise UserError(f'{path} already exists; pass another --output so nothing is '
                      'overwritten.')
  frames = np.stack([read_image(f) for f in files])
  flow = predictor.predict(frames[None])[0]
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  flow_io.write_flo(paths['flo'], flow)
  Image.fromarray(flow_colors.flow_to_rgb(flow)).save(paths['png'])
  length = np.hypot(flow[..., 0], flow[..., 1])
  return {**paths, 'shape': list(flow.shape), 'mean_length': float(length.mean()),
          'max_length': float(length.max())}


def predict_files(workdir: str, files: list[str], *, step: int | None = None,
                  text: str | None = None, mask: str | None = None, top_k: int = 5,
                  output: str = 'flow') -> dict:
  """Runs the workdir's model on files (or a text) as its task reads them; returns the
  JSON-ready summary the command prints."""
  predictor = predict_lib.load(workdir, step)
  name = predictor.task.name
  if name in IMAGE_TASKS:
    result = _classify(predictor, files, top_k)
  elif name == 'mlm':
    result = _fill(predictor, files, text, mask)
  elif name == 'flow':
    result = _flow(predictor, files, output)
  else:
    raise UserError(f'perceiver-predict has no command-line path for the {name!r} task (it '
                    f'reads image files, texts and frame pairs); call '
                    f'perceiver_jax.predict.load({workdir!r}).predict(...) from Python.')
  return {'workdir': predictor.workdir, 'step': predictor.step, 'task': name, **result}

# ------------------------------------------------------------------------------------------
# The command line.
# ------------------------------------------------------------------------------------------

def _main(argv) -> None:
  FLAGS = command_line.FLAGS
  if not FLAGS.workdir:
    raise UserError('--workdir is required: a training or convert workdir, e.g. '
                    'perceiver-predict --workdir=workdirs/digits IMAGE...')
  print(json.dumps(predict_files(
      FLAGS.workdir, list(argv[1:]), step=FLAGS.step, text=FLAGS.text, mask=FLAGS.mask,
      top_k=FLAGS.top_k, output=FLAGS.output)))


def main() -> None:
  """python -m perceiver_jax.predict_files (also predict.py and perceiver-predict)."""
  flags.DEFINE_integer('step', None, 'Checkpoint step to predict with (default: the latest).')
  flags.DEFINE_string('text', None, "Language models: the text, '[MASK]' for each byte to fill.")
  flags.DEFINE_string('mask', None, 'Language models: mask every byte of the last occurrence '
                      'of this part of --text.')
  flags.DEFINE_integer('top_k', 5, 'Classifiers: classes printed per image.')
  flags.DEFINE_string('output', 'flow', 'Flow models: write OUTPUT.flo and OUTPUT.png.')
  command_line.run(
      _main,
      'Predicts with a trained or converted workdir (its config.json; no --config).\n\n'
      'usage: {prog} --workdir=DIR IMAGE... | --text=TEXT [--mask=S] | FRAME1 FRAME2')


if __name__ == '__main__':
  main()
