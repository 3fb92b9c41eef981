"""Predictions from a trained or converted workdir: `load(workdir).predict(inputs)`.

`load` reads the config the workdir was made with (WORKDIR/config.json), builds its model
once (run.Run) on whatever devices are present and restores the checkpoint's weights into
it. `Predictor.predict` takes raw inputs and prepares each example with the task's own
transforms (perceiver_jax/tasks: `predict_example`, the same normalisation, tokenizer or
frame scaling that evaluation applies), runs the jitted model in batches and returns what
the task predicts:

  classification, image_classification, text_classification  class probabilities
                       [batch, num_classes] (digits arrays, point clouds, RGB images, texts)
  multilabel           per-class probabilities [batch, num_classes] (sigmoid)
  mlm                  the texts with every '[MASK]' byte filled in (a list of str)
  flow                 flow float32 [batch, H, W, 2] (dx, dy) in pixels, frame 1 -> 2
  multimodal_autoencoding  {'video' [batch, T, H, W, 3], 'audio' [batch, S], 'label'
                       probabilities [batch, C]}

Inputs: an array with a leading batch axis, a list of examples (arrays, texts, frame
pairs, {'video', 'audio'} dicts), a dict of batched arrays, or one text (which returns
one result).

The per-example input shape comes from config.convert.input_shape when the workdir was
converted from released weights (no dataset needed), else from the dataset's metadata
(embedded datasets are prepared offline once), or from `input_shape=` given here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from flax import nnx

from perceiver_jax import checkpoint as ckpt
from perceiver_jax import sharding as shd
from perceiver_jax import tasks
from perceiver_jax.model.partitioning import with_logical_sharding
from perceiver_jax import validate
from perceiver_jax import workdir_config
from perceiver_jax.data import own_data, pipeline
from perceiver_jax.errors import UserError
from perceiver_jax.run import Run
from perceiver_jax.state import ModelSpec

# TFDS ships ImageNet's 1000 class names (WordNet ids, e.g. 'n01440764') in this order.
IMAGENET_LABELS = 'datasets/imagenet2012/labels.txt'
# Written by perceiver-convert from a Hugging Face config.json's id2label.
CLASS_NAMES = 'class_names.json'


def predict_fn(spec: ModelSpec, task: tasks.Task):
  """predict(params, model_state, batch) -> task.predictions of the model on `batch`
  (deterministic, unjitted: make_predict_step jits it, perceiver_jax/export.py exports it)."""
  def predict(params, model_state, batch):
    outputs, _ = spec.apply(params, model_state, batch, task, train=False)
    return task.predictions(outputs)
  return predict


def make_predict_step(run: Run):
  """Returns predict_step(params, model_state, batch) -> the task's predictions
  (replicated), jitted with the run's shardings, activations constrained as in evaluation."""
  step = with_logical_sharding(predict_fn(run.model, run.task), run.mesh,
                               shd.rules_dict(run.config.sharding.rules))
  return jax.jit(step, in_shardings=(run.params_shardings, run.model_state_shardings,
                                     shd.batch_sharding(run.mesh)),
                 out_shardings=shd.replicated(run.mesh))


def input_shape_of(config, task) -> Any:
  """The model's per-example input shape: config.convert.input_shape, else the dataset's."""
  shape = config.get('convert', {}).get('input_shape')
  if shape is not None:
    if isinstance(shape, (dict, ml_collections.ConfigDict)):
      return {k: tuple(int(n) for n in v) for k, v in dict(shape).items()}
    return tuple(int(n) for n in shape)
  return pipeline.dataset_info(config.data, task=task).input_shape


def predict_mesh(config):
  """config.mesh when it fits the devices present, else all of them data-parallel (the
  weights replicated): a model trained on a pod slice still predicts on one CPU."""
  try:
    return shd.mesh_from_config(config)
  except UserError:
    return shd.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})


def _examples(inputs) -> tuple[list, bool]:
  """(raw examples, whether `inputs` was one example)."""
  if isinstance(inputs, (str, bytes)):
    return [inputs], True
  if isinstance(inputs, dict):
    sizes = {len(v) for v in inputs.values()}
    if len(sizes) != 1:
      raise UserError(f'The arrays of a dict of inputs have different batch sizes {sorted(sizes)}; '
                      'give every entry the same leading batch axis.')
    return [{k: v[i] for k, v in inputs.items()} for i in range(sizes.pop())], False
  if isinstance(inputs, (list, tuple)):
    return list(inputs), False
  if isinstance(inputs, (np.ndarray, jax.Array)):
    return list(np.asarray(inputs)), False
  raise UserError(f'predict takes an array with a batch axis, a list of examples, a dict of '
                  f'batched arrays or a text, not {type(inputs).__name__}.')


@dataclasses.dataclass
class Predictor:
  """A workdir's model with its restored weights; see the module docstring."""
  workdir: str
  step: int
  run: Run
  params: Any
  model_state: Any

  @property
  def config(self):
    return self.run.config

  @property
  def task(self) -> tasks.Task:
    return self.run.task

  @property
  def input_shape(self):
    return self.run.model.input_shape

  def __post_init__(self):
    self._predict_step = make_predict_step(self.run)

  def model(self):
    """The nnx model with the restored weights (for code of your own, e.g. sampling)."""
    return nnx.merge(self.run.model.graphdef, self.params, self.model_state)

  def examples(self, inputs) -> tuple[dict[str, np.ndarray], bool]:
    """Raw inputs -> (the batch of model examples {'inputs': [batch, ...], ...} as numpy,
    whether `inputs` was one example): what predict feeds the model."""
    raws, single = _examples(inputs)
    if not raws:
      raise UserError('predict got no inputs; pass at least one example.')
    examples = [self.task.predict_example(self.config.data, raw, self.input_shape)
                for raw in raws]
    return jax.tree.map(lambda *xs: np.stack(xs), *examples), single

  def predictions(self, batch: dict[str, np.ndarray]):
    """The task's predictions (numpy, [batch, ...]) for a batch of model examples, run in
    chunks of up to config.eval.batch_size (rounded to the devices)."""
    n = len(jax.tree.leaves(batch)[0])
    multiple = shd.eval_batch_size(1, self.run.mesh)
    chunk = min(self.run.eval_batch_size, -(-n // multiple) * multiple)
    outputs = []
    for start in range(0, n, chunk):
      part = jax.tree.map(lambda x: x[start:start + chunk], batch)
      missing = chunk - (min(n, start + chunk) - start)
      # Repeats of the last example fill the chunk (one compiled shape); dropped below.
      part = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[-1:], missing, 0)]), part)
      result = self._predict_step(self.params, self.model_state, self.run.to_global(part))
      outputs.append(jax.device_get(result))
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outputs)

  def predict(self, inputs):
    """Raw inputs -> the task's outputs (module docstring)."""
    batch, single = self.examples(inputs)
    result = self.task.present(self.predictions(batch), batch)
    if not single:
      return result
    return result[0] if isinstance(result, list) else jax.tree.map(lambda x: x[0], result)

  def class_names(self) -> list[str]:
    """Names of the model's classes: WORKDIR/class_names.json (a converted Hugging Face
    model's id2label), ImageNet's (TFDS's label file: WordNet ids) for a 1000-class ImageNet
    model, the dataset's class-label names when it is prepared, else '0', '1'..."""
    num = int(self.config.model.num_classes)
    saved = os.path.join(self.workdir, CLASS_NAMES)
    if os.path.isfile(saved):
      with open(saved) as f:
        names = json.load(f)
      if isinstance(names, list) and len(names) == num:
        return [str(n) for n in names]
    data = self.config.data
    if data.name.split('/')[0].split(':')[0] == 'imagenet2012' and num == 1000:
      with open(tfds.core.tfds_path(IMAGENET_LABELS)) as f:
        return [line.strip() for line in f if line.strip()]
    names = None
    if self.config.get('convert', {}).get('input_shape') is None:  # its dataset is prepared
      try:
        builder = pipeline.prepare(data.name, data.data_dir, own=own_data.resolve(data))
        keys = builder.info.supervised_keys
        label = builder.info.features[keys[1] if isinstance(keys, tuple) else 'label']
        names = list(getattr(label, 'names', None) or []) or None
      except (UserError, KeyError, TypeError):
        names = None
    if names is None or len(names) < num:
      names = [str(i) for i in range(num)]
    return names[:num]


def top_k(probabilities: np.ndarray, names: list[str], k: int = 5) -> list[list[tuple[str, float]]]:
  """[batch, classes] probabilities -> per example the k most likely (name, probability)."""
  order = np.argsort(-probabilities, axis=-1, kind='stable')[:, :k]
  return [[(names[i], float(p[i])) for i in row] for p, row in zip(probabilities, order)]


def load(workdir: str, step: int | None = None, *, input_shape=None) -> Predictor:
  """The Predictor of a train.py or perceiver-convert workdir at checkpoint `step` (default:
  the latest), on the devices present. `input_shape`: the per-example input shape, when
  neither config.convert.input_shape nor the dataset is at hand."""
  path = os.path.abspath(os.path.expanduser(str(workdir)))
  if not os.path.isdir(path):
    raise UserError(f'{workdir} does not exist; pass the workdir of a training or convert run.')
  # The config that trained that step: a resume may have changed it since (config.<S>.json).
  config = (workdir_config.get_config(path) if step is None
            else workdir_config.read_for_step(path, int(step)))
  validate.validate_config(config, training=False)
  task = tasks.get_task(config)
  shape = input_shape if input_shape is not None else input_shape_of(config, task)
  run = Run.from_input_shape(config, shape, predict_mesh(config), training=False, task=task)
  manager = ckpt.make_manager(path, read_only=True)
  try:
    step = ckpt.resolve_step(manager, path, step)
    params, model_state = run.abstract_weights()
    ckpt.check_compatible(manager, step, params)
    params, model_state = ckpt.restore_weights(ckpt.state_path(manager, step), params,
                                               model_state)
  finally:
    manager.close()
  return Predictor(workdir=path, step=step, run=run, params=params, model_state=model_state)
