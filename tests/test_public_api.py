"""The public surface: `import perceiver_jax` is cheap, every exported name resolves, and
every model module builds and runs on its own (no build_model, no sharding context), inside
a user's own nnx.Module too, with gradients through it; docs/api.md's code runs."""

import inspect
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import perceiver_jax as pj
from tests.helpers import ROOT

FOURIER = dict(name='fourier', num_bands=2)  # 1-D: 1 * (2 * 2 + 1) = 5 channels
TRAINABLE = dict(name='trainable')
B = 2  # batch


def ones(*shape):
  return jnp.ones((B,) + shape)


def z(num_latents=4, channels=8):
  return jax.random.normal(jax.random.key(1), (B, num_latents, channels))


def _multimodal_queries(r):
  return {'a': pj.DecoderQueries((3,), TRAINABLE, num_query_channels=4, rngs=r),
          'b': pj.DecoderQueries((1,), TRAINABLE, num_query_channels=2, rngs=r)}


def _decode(decoder):
  return decoder(decoder.decoder_query(ones(1)), z())


def _tiny_perceiver(r):
  prep = pj.GenericPreprocessor((5, 3), position_encoding=FOURIER, rngs=r)
  encoder = pj.PerceiverEncoder(prep.num_channels, num_latents=4, num_latent_channels=8,
                                num_blocks=2, num_self_attends_per_block=1,
                                num_self_attend_heads=2, rngs=r)
  return pj.Perceiver(prep, encoder, pj.ClassificationDecoder(8, 5, rngs=r))


# class name -> (build(rngs) -> module, call(module) -> output, expected output shape(s)).
CASES = {
    'Perceiver': (_tiny_perceiver, lambda m: m(ones(5, 3)), (B, 5)),
    'PerceiverAR': (
        lambda r: pj.PerceiverAR(vocab_size=16, max_context=8, num_latents=4, num_channels=8,
                                 num_heads=2, num_self_attends=1, rngs=r),
        lambda m: m(jnp.ones((B, 8), jnp.int32)), (B, 4, 16)),
    'PerceiverEncoder': (
        lambda r: pj.PerceiverEncoder(3, num_latents=4, num_latent_channels=8, num_blocks=2,
                                      num_self_attends_per_block=1, num_self_attend_heads=2,
                                      rngs=r),
        lambda m: m(ones(5, 3)), (B, 4, 8)),
    'Attention': (lambda r: pj.Attention(8, 6, num_heads=2, rngs=r),
                  lambda m: m(ones(3, 8), ones(5, 6)), (B, 3, 8)),
    'CrossAttention': (lambda r: pj.CrossAttention(8, 6, num_heads=2, rngs=r),
                       lambda m: m(ones(3, 8), ones(5, 6)), (B, 3, 8)),
    'SelfAttention': (lambda r: pj.SelfAttention(8, num_heads=2, rngs=r),
                      lambda m: m(ones(3, 8)), (B, 3, 8)),
    'MLP': (lambda r: pj.MLP(8, rngs=r), lambda m: m(ones(3, 8)), (B, 3, 8)),
    'GenericPreprocessor': (
        lambda r: pj.GenericPreprocessor((5, 3), position_encoding=FOURIER, rngs=r),
        lambda m: m(ones(5, 3)).inputs, (B, 5, 3 + 5)),
    'PatchesPreprocessor': (
        lambda r: pj.PatchesPreprocessor((8, 3), (2,), num_channels=4,
                                         position_encoding=FOURIER, rngs=r),
        lambda m: m(ones(8, 3)).inputs, (B, 4, 4 + 5)),
    'ImagePreprocessor': (  # one 4x conv stem: 8x8 -> 2x2; 2-D Fourier: 2 * 5 channels
        lambda r: pj.ImagePreprocessor((8, 8, 3), num_channels=4,
                                       position_encoding=FOURIER, rngs=r),
        lambda m: m(ones(8, 8, 3)).inputs, (B, 4, 4 + 10)),
    'Conv2DDownsample': (lambda r: pj.Conv2DDownsample(3, num_channels=4, rngs=r),
                         lambda m: m(ones(8, 8, 3)), (B, 2, 2, 4)),
    'AudioPreprocessor': (
        lambda r: pj.AudioPreprocessor((16, 1), samples_per_patch=4,
                                       position_encoding=FOURIER, rngs=r),
        lambda m: m(ones(16, 1)).inputs, (B, 4, 4 + 5)),
    'Conv1DPreprocessor': (lambda r: pj.Conv1DPreprocessor((8, 2), num_channels=4, rngs=r),
                           lambda m: m(ones(8, 2)).inputs, (B, 4, 4)),
    'OneHotPreprocessor': (lambda r: pj.OneHotPreprocessor((5,)),
                           lambda m: m(ones(5)).inputs, (B, 1, 5)),
    'PointCloudPreprocessor': (  # xyz + 1 feature; 3-D Fourier: 3 * 5 channels
        lambda r: pj.PointCloudPreprocessor((6, 4), num_bands=2),
        lambda m: m(ones(6, 4)).inputs, (B, 6, 1 + 15)),
    'TextPreprocessor': (
        lambda r: pj.TextPreprocessor((6,), vocab_size=11, num_channels=8, max_seq_len=6,
                                      rngs=r),
        lambda m: m(jnp.ones((B, 6), jnp.int32)).inputs, (B, 6, 8)),
    'EmbeddingDecoder': (
        lambda r: pj.EmbeddingDecoder(pj.TextPreprocessor(
            (6,), vocab_size=11, num_channels=8, max_seq_len=6, rngs=r).embeddings),
        lambda m: m(ones(6, 8)), (B, 6, 11)),
    'MultimodalPreprocessor': (  # channels: max(2, 3) + 2 padding; tokens: 4 + 1
        lambda r: pj.MultimodalPreprocessor(
            {'a': pj.GenericPreprocessor((4, 2), rngs=r), 'b': pj.OneHotPreprocessor((3,))},
            rngs=r),
        lambda m: m({'a': ones(4, 2), 'b': ones(3)}).inputs, (B, 5, 5)),
    'DecoderQueries': (
        lambda r: pj.DecoderQueries((3,), TRAINABLE, num_query_channels=4, rngs=r),
        lambda m: m.decoder_query(ones(1)), (B, 3, 4)),
    'MultimodalDecoder': (
        lambda r: pj.MultimodalDecoder(_multimodal_queries(r), 8, 5, rngs=r),
        _decode, (B, 3 + 1, 5)),
    'VideoAutoencodingDecoder': (
        lambda r: pj.VideoAutoencodingDecoder(8, 3, output_index_dims=(2, 2, 2),
                                              position_encoding=FOURIER, rngs=r),
        _decode, (B, 2, 2, 2, 3)),
    'BasicDecoder': (
        lambda r: pj.BasicDecoder(8, 5, position_encoding=TRAINABLE, output_index_dims=(3,),
                                  num_query_channels=6, rngs=r),
        _decode, (B, 3, 5)),
    'ClassificationDecoder': (lambda r: pj.ClassificationDecoder(8, 5, rngs=r),
                              _decode, (B, 5)),
    'ProjectionDecoder': (lambda r: pj.ProjectionDecoder(8, 5, rngs=r),
                          lambda m: m(None, z()), (B, 5)),
    'FlowDecoder': (lambda r: pj.FlowDecoder(8, 6, (2, 3), rngs=r),
                    lambda m: m(ones(6, 6), z()), (B, 2, 3, 2)),
    'IdentityPostprocessor': (lambda r: pj.IdentityPostprocessor(),
                              lambda m: m(ones(3, 4)), (B, 3, 4)),
    'ClassificationPostprocessor': (
        lambda r: pj.ClassificationPostprocessor(5, num_input_channels=4, rngs=r),
        lambda m: m(ones(3, 4)), (B, 5)),
    'ProjectionPostprocessor': (lambda r: pj.ProjectionPostprocessor(4, 3, rngs=r),
                                lambda m: m(ones(3, 4)), (B, 3, 3)),
    'AudioPostprocessor': (lambda r: pj.AudioPostprocessor(4, 2, rngs=r),
                           lambda m: m(ones(3, 4)), (B, 3 * 2)),
    'FlowPostprocessor': (lambda r: pj.FlowPostprocessor(2.0),
                          lambda m: m(ones(2, 3, 2)), (B, 2, 3, 2)),
    'MultimodalPostprocessor': (
        lambda r: pj.MultimodalPostprocessor({'a': pj.ProjectionPostprocessor(4, 3, rngs=r)}),
        lambda m: m(ones(5, 4), modality_sizes={'a': 3, 'b': 2}),
        {'a': (B, 3, 3), 'b': (B, 2, 4)}),
    'FourierPositionEncoding': (lambda r: pj.FourierPositionEncoding((5,), 2),
                                lambda m: m(B), (B, 5, 5)),
    'TrainablePositionEncoding': (lambda r: pj.TrainablePositionEncoding(5, 4, rngs=r),
                                  lambda m: m(B), (B, 5, 4)),
    'PositionEncodingProjector': (
        lambda r: pj.PositionEncodingProjector(
            3, pj.TrainablePositionEncoding(5, 4, rngs=r), rngs=r),
        lambda m: m(B), (B, 5, 3)),
}


def test_import_is_cheap():
  # The mains and tools import the package first; nothing heavy may come with it.
  code = ('import sys, perceiver_jax; '
          'print(sorted(m for m in ("jax", "flax", "optax", "orbax", "tensorflow") '
          'if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == '[]'


def test_every_exported_name_resolves():
  assert sorted(set(pj.__all__)) == pj.__all__
  for name in pj.__all__:
    assert getattr(pj, name) is not None, name
    assert name in dir(pj)
  with pytest.raises(AttributeError, match='no attribute'):
    getattr(pj, 'NoSuchThing')


def test_every_exported_module_class_is_covered_here():
  modules = {n for n in pj.__all__
             if inspect.isclass(getattr(pj, n)) and issubclass(getattr(pj, n), nnx.Module)}
  assert modules == set(CASES)


@pytest.mark.parametrize('name', sorted(CASES))
def test_module_builds_and_runs_on_its_own(name):
  build, call, expected = CASES[name]
  # Flax's default (eager sharding on) is what a user gets; the modules must not need a
  # mesh or nnx.use_eager_sharding(False) to be built.
  with nnx.use_eager_sharding(True):
    module = build(nnx.Rngs(0))
    assert isinstance(module, getattr(pj, name))
    out = call(module)
  shapes = jax.tree.map(lambda x: tuple(x.shape), out)
  assert shapes == expected
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(out))
  # The parameters still carry logical axis names for the Run's sharding rules.
  for _, param in nnx.iter_graph(module):
    if isinstance(param, nnx.Param):
      names = param.get_metadata().get('out_sharding')
      assert names is not None and len(names) == param.ndim


class MyClassifier(nnx.Module):
  """A user's model: our preprocessor and encoder, then a head of their own."""

  def __init__(self, rngs: nnx.Rngs):
    self.prep = pj.GenericPreprocessor((5, 3), position_encoding=FOURIER, rngs=rngs)
    self.encoder = pj.PerceiverEncoder(self.prep.num_channels, num_latents=4,
                                       num_latent_channels=8, num_blocks=2,
                                       num_self_attends_per_block=1,
                                       num_self_attend_heads=2, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(self.encoder(self.prep(x).inputs).mean(axis=1))


def test_parts_inside_your_own_module_train_with_jax_grad():
  model = MyClassifier(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (4, 5, 3))
  labels = jnp.array([0, 1, 2, 0])
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params):
    logits = nnx.merge(graphdef, params, rest)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  # Gradients reach the encoder's latents and its first cross-attend, not only the head.
  for path in (('encoder', 'z_pos_enc', 'pos_embs'),
               ('encoder', 'cross_attend', 'attention', 'query', 'kernel')):
    g = nnx.to_pure_dict(grads)
    for key in path:
      g = g[key]
    assert np.isfinite(g).all() and np.abs(g).sum() > 0, path
  stepped = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
  assert loss_fn(stepped) < loss


def test_docs_api_code_blocks_run(tmp_path, monkeypatch):
  # docs/api.md's ```python blocks, in order, as one script: the docs cannot drift.
  with open(os.path.join(ROOT, 'docs', 'api.md')) as f:
    blocks = re.findall(r'^```python\n(.*?)^```', f.read(), re.S | re.M)
  assert len(blocks) >= 3
  monkeypatch.chdir(tmp_path)
  exec(compile('\n'.join(blocks), 'docs/api.md', 'exec'), {'__name__': 'docs_api'})
