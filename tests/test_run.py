"""A run is set up once: train.py builds the abstract model once (plus the real one inside the
jitted init), eval.py once and without an optimizer, and the Run's abstract TrainState is
what the init function makes."""

import jax
import pytest

from perceiver_jax import evaluator, optim, trainer
from perceiver_jax import sharding as shd
from perceiver_jax import state as state_lib
from perceiver_jax.errors import DatasetError, UserError
from perceiver_jax.run import Run
from tests.helpers import prepared_data_dir, tiny_mnist1d_config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory)


def _count_builds(monkeypatch) -> list:
  """Counts every model construction (abstract or real) made through state.build."""
  calls = []
  build_model = state_lib.build_model

  def counting(*args, **kwargs):
    calls.append(1)
    return build_model(*args, **kwargs)
  monkeypatch.setattr(state_lib, 'build_model', counting)
  return calls


def _no_optimizer(monkeypatch) -> None:
  def refuse(*args, **kwargs):
    raise AssertionError('evaluation built an optimizer')
  # make_schedule too: code that bound make_optimizer at import still reaches it.
  monkeypatch.setattr(optim, 'make_optimizer', refuse)
  monkeypatch.setattr(optim, 'make_schedule', refuse)


def test_train_builds_the_model_once_and_eval_once_without_an_optimizer(data_dir, tmp_path,
                                                                        monkeypatch):
  workdir = str(tmp_path / 'run')
  config = tiny_mnist1d_config(**{'data.data_dir': data_dir, 'train.num_steps': 2,
                                  'checkpoint.every_steps': 2, 'eval.telemetry_examples': 4})
  builds = _count_builds(monkeypatch)
  trainer.train_and_evaluate(config, workdir)
  # Once abstractly (shapes, names, shardings, summary), once inside the jitted init.
  assert len(builds) == 2

  # A resumed run restores into the abstract state: no initialisation, one build.
  builds.clear()
  config.train.num_steps = 3
  config.allow_changes = 'train.num_steps'  # a longer cosine schedule: asked for
  trainer.train_and_evaluate(config, workdir)
  assert len(builds) == 1

  builds.clear()
  _no_optimizer(monkeypatch)
  result = evaluator.evaluate(config, workdir)
  assert result['step'] == 3 and 0.0 <= result['accuracy'] <= 1.0
  assert len(builds) == 1


def test_abstract_train_state_is_what_init_makes(data_dir):
  config = tiny_mnist1d_config(**{'data.data_dir': data_dir})
  run = Run.create(config)
  assert run.model.input_shape == (40, 1) and run.data_spec.num_classes == 10
  want = jax.eval_shape(state_lib.make_init(config, (40, 1), run.tx), jax.numpy.uint32(0))
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(run.abstract_train_state) == shapes(want)
  state = run.init_state()
  assert jax.tree.map(lambda x: x.sharding, state) == run.state_shardings
  assert run.model.num_params == sum(x.size for x in jax.tree.leaves(state.params))


def test_an_eval_run_has_weights_shardings_but_no_optimizer(data_dir, monkeypatch):
  _no_optimizer(monkeypatch)
  config = tiny_mnist1d_config(**{'data.data_dir': data_dir, 'mesh.data': 2, 'mesh.fsdp': 4})
  run = Run.create(config, training=False)
  assert run.tx is None and run.state_shardings is None
  params, _ = run.abstract_weights()
  assert jax.tree.leaves(params)[0].sharding.mesh == run.mesh
  with pytest.raises(ValueError, match='needs a training Run'):
    run.init_state()
  batch = next(iter(run.eval_batches()))
  assert batch['inputs'].shape[0] == shd.eval_batch_size(config.eval.batch_size, run.mesh)
  assert batch['inputs'].sharding == shd.batch_sharding(run.mesh)


def test_a_model_that_cannot_be_built_is_one_sentence(data_dir):
  config = tiny_mnist1d_config(**{'data.data_dir': data_dir,
                                  'model.encoder.num_cross_attend_heads': 2})
  with pytest.raises(UserError) as e:
    Run.create(config)
  # The constructor's sentence, with the config path and the inputs it was built for.
  assert str(e.value) == ('config.model.encoder: qk_channels (25) must be divisible by '
                          'num_heads (2) (the preprocessed inputs of shape (40, 1) have 25 '
                          'channels).')


def test_fewer_model_classes_than_the_dataset_has_is_one_sentence(data_dir):
  """Labels the model has no logit for would train against all-zero targets, silently."""
  config = tiny_mnist1d_config(**{'data.data_dir': data_dir, 'model.num_classes': 5})
  with pytest.raises(DatasetError) as e:
    Run.create(config)
  assert str(e.value) == ("Dataset 'mnist1d' has 10 classes but config.model.num_classes=5, so "
                          'labels 5..9 could never be predicted; set '
                          '--config.model.num_classes=10.')
  config.model.num_classes = 12  # more logits than classes trains correctly: allowed
  assert Run.create(config).data_spec.num_classes == 10
