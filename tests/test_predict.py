"""perceiver_jax.predict: load(workdir).predict(raw inputs) for every task's predict path.

Digits: predict on the raw test split must give the accuracy the evaluator (eval.py's
library function) measures on the same checkpoint, and the model's own probabilities. The other tasks use
tiny models of their runlocal configs with random weights, written as converted workdirs
(config.convert.input_shape set, so no dataset is read); their predictions must equal the
model called directly on inputs prepared by hand.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import digits, flow_skimage, kinetics_autoencoding, mlm_stdlib, modelnet40_perceiver
from perceiver_jax import evaluator, tasks
from perceiver_jax.convert import to_checkpoint
from perceiver_jax.data import pipeline
from perceiver_jax.data.flow_io import read_flo
from perceiver_jax.flow_colors import color_wheel, flow_to_rgb
from perceiver_jax.errors import UserError
from perceiver_jax.predict import load
from perceiver_jax.predict_files import predict_files
from perceiver_jax.tasks.flow import scale_frames
from perceiver_jax.run import abstract_model
from perceiver_jax.tokenizer import MASK_ID, PAD_ID
from tests.helpers import prepared_data_dir, run_main, set_dotted, with_random_weights


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory, 'digits')


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory, data_dir):
  """(workdir, evaluator's metrics, model): digits' model with random weights, written with
  config.json but no convert.input_shape, so the predictor takes the input shape from the
  dataset as training does. (Trained weights would cost a minute of compilation here; the
  random ones already give varied classes, which is what the accuracy check needs.)"""
  config = digits.get_config()
  set_dotted(config, {'data.data_dir': data_dir, 'eval.telemetry_examples': 0})
  model = with_random_weights(abstract_model(config, (8, 8, 1)), seed=3)
  workdir = str(tmp_path_factory.mktemp('digits'))
  to_checkpoint.write_checkpoint(model, workdir, config)
  return workdir, evaluator.evaluate(config, workdir), model


def converted_workdir(tmp_path_factory, config, input_shape, name: str, seed: int = 0):
  """(workdir, model): `config`'s model with random weights, written as perceiver-convert
  writes it (config.json with convert.input_shape: the predictor reads no dataset)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.convert = dict(family='vision', input_shape=input_shape)
  model = with_random_weights(abstract_model(config, input_shape), seed=seed)
  workdir = str(tmp_path_factory.mktemp(name))
  to_checkpoint.write_checkpoint(model, workdir, config)
  return workdir, model


def direct(model, model_inputs: dict):
  """The model called directly (no Predictor code)."""
  return nnx.jit(lambda m, kw: m(**kw, deterministic=True))(model, model_inputs)


# ------------------------------------------------------------------------------------------
# Classification (digits): the evaluator's accuracy from raw test examples.
# ------------------------------------------------------------------------------------------

def test_digits_predict_on_the_test_split_gives_the_evaluators_accuracy(digits_run, data_dir):
  workdir, metrics, model = digits_run
  source = pipeline.prepare('digits', data_dir).as_data_source('test')
  raw = np.stack([np.asarray(source[i]['inputs']) for i in range(len(source))])
  labels = np.asarray([int(source[i]['label']) for i in range(len(source))])
  predictor = load(workdir)
  probabilities = predictor.predict(raw)  # raw 0..16 values: normalised by the task
  assert probabilities.shape == (len(raw), 10)
  np.testing.assert_allclose(probabilities, jax.nn.softmax(direct(model, {
      'inputs': jnp.asarray((raw - 8.0) / 8.0, jnp.float32)})), rtol=1e-4, atol=1e-4)
  predicted = probabilities.argmax(-1)
  assert len(set(predicted.tolist())) >= 2  # input-dependent: the accuracy says something
  assert metrics['num_examples'] == len(raw)
  assert float((predicted == labels).mean()) == pytest.approx(metrics['accuracy'], abs=1e-12)
  assert predictor.class_names() == [str(i) for i in range(10)]


def test_predictions_do_not_depend_on_the_batch_they_come_in(digits_run, data_dir):
  source = pipeline.prepare('digits', data_dir).as_data_source('test')
  raw = np.stack([np.asarray(source[i]['inputs']) for i in range(5)])
  predictor = load(digits_run[0])
  together = predictor.predict(raw)
  alone = predictor.predict(raw[3:4])
  np.testing.assert_allclose(alone[0], together[3], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('bad, match', [
    (np.zeros((2, 8, 8)), r'shape \(8, 8\).*\(8, 8, 1\)'),
    (np.zeros((8, 8, 1)), r'shape \(8, 1\)'),  # no batch axis: each row taken as one input
    (42, 'not int'),
])
def test_wrong_inputs_are_one_sentence(digits_run, bad, match):
  with pytest.raises(UserError, match=match):
    load(digits_run[0]).predict(bad)


def test_bad_workdirs_are_one_sentence(tmp_path, digits_run):
  with pytest.raises(UserError, match='does not exist'):
    load(str(tmp_path / 'nowhere'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(UserError, match='config.json does not exist'):
    load(str(empty))
  (empty / 'config.json').write_text(open(os.path.join(digits_run[0], 'config.json')).read())
  with pytest.raises(UserError, match='No checkpoint found'):
    load(str(empty))
  with pytest.raises(UserError, match='No checkpoint for step 7'):
    load(digits_run[0], step=7)


# ------------------------------------------------------------------------------------------
# Converted-style workdirs of the other tasks (random weights, no dataset).
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def mlm_workdir(tmp_path_factory):
  config = mlm_stdlib.get_config('runlocal')
  return converted_workdir(tmp_path_factory, config, (128,), 'mlm')


def test_mlm_fills_the_masked_bytes_with_the_models_choice(mlm_workdir):
  workdir, model = mlm_workdir
  text = 'This is an incomplete sentence where some words are missing.'
  masked = text[:-len(' missing.')] + '[MASK]' * len(' missing.')
  predictor = load(workdir)
  filled = predictor.predict(masked)
  ids = np.full((1, 128), PAD_ID, np.int32)
  encoded = np.frombuffer(text.encode(), np.uint8).astype(np.int32) + 6
  encoded[-9:] = MASK_ID
  ids[0, :len(encoded)] = encoded
  logits = direct(model, {'inputs': jnp.asarray(ids), 'input_mask': jnp.asarray(ids != PAD_ID)})
  best = np.asarray(logits).argmax(-1)[0, len(encoded) - 9:len(encoded)]
  # Only the 9 masked bytes change; they are the model's most likely bytes there.
  want = text[:-9].encode() + bytes(int(b) - 6 for b in best if b >= 6)
  assert filled == want.decode('utf-8', errors='replace')
  assert filled.startswith(text[:-9])
  assert predictor.predict([masked, masked]) == [filled, filled]


def test_mlm_text_longer_than_the_model_reads_is_one_sentence(mlm_workdir):
  with pytest.raises(UserError, match='129 bytes is longer than the 128 bytes'):
    load(mlm_workdir[0]).predict('x' * 129)


@pytest.fixture(scope='module')
def flow_workdir(tmp_path_factory):
  config = flow_skimage.get_config('runlocal')
  return converted_workdir(tmp_path_factory, config, (2, 16, 16, 3), 'flow')


def test_flow_from_two_frames_matches_the_model(flow_workdir):
  workdir, model = flow_workdir
  frames = np.random.default_rng(0).integers(0, 256, (3, 2, 16, 16, 3), dtype=np.uint8)
  flow = load(workdir).predict(frames)
  assert flow.shape == (3, 16, 16, 2)
  # The task's own float32 scaling: the cost volume's sharp softmax (temperature 1e-4)
  # turns a last-bit difference in the inputs into one of ~1e-4 px in the flow.
  want = direct(model, {'inputs': jnp.asarray(scale_frames(frames))})
  np.testing.assert_allclose(flow, np.asarray(want), rtol=1e-5, atol=1e-5)
  with pytest.raises(UserError, match=r'shape \(2, 8, 16, 3\)'):
    load(workdir).predict(frames[:, :, :8])


def test_point_cloud_classification_matches_the_model(tmp_path_factory):
  config = modelnet40_perceiver.get_config('runlocal,synthetic')
  workdir, model = converted_workdir(tmp_path_factory, config, (64, 3), 'points')
  clouds = np.random.default_rng(1).uniform(-1, 1, (2, 64, 3)).astype(np.float32)
  probabilities = load(workdir).predict(clouds)
  mean, std = config.data.normalize
  logits = direct(model, {'inputs': jnp.asarray((clouds - mean) / std)})
  np.testing.assert_allclose(probabilities, jax.nn.softmax(logits), rtol=1e-5, atol=1e-6)
  # A Hugging Face config.json beside converted weights names the classes.
  classes = config.model.num_classes
  hf_dir = tmp_path_factory.mktemp('hf')
  (hf_dir / 'config.json').write_text(json.dumps(
      {'id2label': {str(i): f'shape {i}' for i in reversed(range(classes))}}))
  names = to_checkpoint.hf_class_names(str(hf_dir / 'model.safetensors'))
  assert names == [f'shape {i}' for i in range(classes)]
  assert to_checkpoint.hf_class_names(str(tmp_path_factory.mktemp('none') / 'x.bin')) is None
  with open(os.path.join(workdir, 'class_names.json'), 'w') as f:
    json.dump(names, f)
  assert load(workdir).class_names() == names


def test_multimodal_autoencoder_returns_reconstructions(tmp_path_factory):
  config = kinetics_autoencoding.get_config('runlocal')
  task = tasks.get_task(config)
  shape = {'image': (4, 16, 16, 3), 'audio': (256, 1), 'label': (task.label_classes,)}
  workdir, model = converted_workdir(tmp_path_factory, config, shape, 'kinetics')
  rng = np.random.default_rng(2)
  video = rng.integers(0, 256, (1, 4, 16, 16, 3), dtype=np.uint8)
  audio = rng.uniform(-1, 1, (1, 256)).astype(np.float32)
  out = load(workdir).predict({'video': video, 'audio': audio})
  assert out['video'].shape == (1, 4, 16, 16, 3) and out['audio'].shape == (1, 256)
  want = direct(model, task.model_inputs({'video': jnp.asarray(video),
                                          'audio': jnp.asarray(audio)}))
  np.testing.assert_allclose(out['video'].reshape(1, -1, 3), want['image'], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(out['audio'], want['audio'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['label'], jax.nn.softmax(want['label']), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# The command line (predict.py) and the flow colour wheel.
# ------------------------------------------------------------------------------------------

def _last_json(proc):
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_writes_flo_and_png_that_match_predict(flow_workdir, tmp_path):
  workdir, _ = flow_workdir
  frames = np.random.default_rng(4).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  files = []
  for i, frame in enumerate(frames):
    files.append(str(tmp_path / f'frame{i}.png'))
    Image.fromarray(frame).save(files[-1])
  output = str(tmp_path / 'out' / 'flow')
  summary = _last_json(run_main('predict.py', [f'--workdir={workdir}', *files,
                                               f'--output={output}'], devices=2))
  want = load(workdir).predict(frames[None])[0]
  written = read_flo(summary['flo'])
  np.testing.assert_allclose(written, want, rtol=1e-5, atol=1e-5)
  with Image.open(summary['png']) as png:
    np.testing.assert_array_equal(np.asarray(png), flow_to_rgb(written))
  again = run_main('predict.py', [f'--workdir={workdir}', *files, f'--output={output}'],
                   devices=2, check=False)
  assert again.returncode == 2 and 'already exists' in again.stderr


def test_cli_fills_the_reference_sentence(mlm_workdir):
  workdir, _ = mlm_workdir
  text = 'This is an incomplete sentence where some words are missing.'
  summary = _last_json(run_main('predict.py', [f'--workdir={workdir}', f'--text={text}',
                                               '--mask= missing.'], devices=2))
  masked = text[:-9] + '[MASK]' * 9
  assert summary['text'] == masked
  assert summary['filled'] == load(workdir).predict(masked)


def test_cli_top_k_of_image_files_with_class_names(digits_run, tmp_path):
  workdir = digits_run[0]
  images = np.random.default_rng(5).integers(0, 17, (2, 8, 8), dtype=np.uint8)
  files = []
  for i, image in enumerate(images):
    files.append(str(tmp_path / f'digit{i}.png'))
    Image.fromarray(image).save(files[-1])
  summary = _last_json(run_main('predict.py', [f'--workdir={workdir}', '--top_k=3', *files],
                                devices=2))
  probabilities = load(workdir).predict(images[..., None].astype(np.float32))
  for row, p in zip(summary['predictions'], probabilities):
    names = [int(name) for name, _ in row['top_k']]
    assert len(names) == 3 and names[0] == int(p.argmax())
    # Another device count rounds differently, so near-ties may swap: values by name.
    np.testing.assert_allclose([q for _, q in row['top_k']], p[names], rtol=1e-4, atol=1e-5)
    assert np.sort(p)[-3] <= min(q for _, q in row['top_k']) + 1e-5


def test_cli_paths_refuse_what_they_cannot_read(tmp_path_factory, tmp_path, digits_run):
  config = kinetics_autoencoding.get_config('runlocal')
  task = tasks.get_task(config)
  shape = {'image': (4, 16, 16, 3), 'audio': (256, 1), 'label': (task.label_classes,)}
  workdir, _ = converted_workdir(tmp_path_factory, config, shape, 'kinetics_cli')
  with pytest.raises(UserError, match="no command-line path for the 'multimodal_autoencoding'"):
    predict_files(workdir, ['a.png'])
  with pytest.raises(UserError, match='does not exist; pass image files'):
    predict_files(digits_run[0], [str(tmp_path / 'missing.png')])
  (tmp_path / 'big.png').write_bytes(b'')
  Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / 'big.png')
  with pytest.raises(UserError, match=r'shape \(9, 8, 1\)'):
    predict_files(digits_run[0], [str(tmp_path / 'big.png')])


def test_flow_colour_wheel():
  flow = np.zeros((1, 5, 2), np.float32)
  flow[0, 1] = (1, 0)    # right: red
  flow[0, 2] = (0, 1)    # down (image rows grow downwards)
  flow[0, 3] = (-1, 0)   # left: the opposite side of the wheel
  flow[0, 4] = (0.5, 0)  # half as long: half saturated
  rgb = flow_to_rgb(flow)
  assert rgb[0, 0].tolist() == [255, 255, 255]  # no motion: white
  assert rgb[0, 1].tolist() == [255, 0, 0]
  assert rgb[0, 3].tolist() != rgb[0, 1].tolist() and rgb[0, 3, 2] > 200  # cyan-ish
  assert rgb[0, 4].tolist() == [255, 128, 128]
  assert len(color_wheel()) == 55
