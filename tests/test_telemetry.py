"""Latent telemetry: the metrics on hand-made attention, the captured probabilities against
a manual softmax(q k^T / sqrt(d)), the maps image, and a tiny train + eval that log them."""

import glob
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from perceiver_jax import evaluator, state as state_lib, telemetry, trainer
from perceiver_jax import telemetry_plot
from perceiver_jax.data import pipeline
from perceiver_jax.errors import UserError
from perceiver_jax.metrics_log import read
from perceiver_jax.model import attention
from tests.helpers import tiny_mnist1d_config


def _metrics(probs, weights=None):
  return telemetry.attention_metrics(jnp.asarray(probs, jnp.float32), weights)


# ------------------------------------------------------------------------------------------
# The metrics.
# ------------------------------------------------------------------------------------------

def test_uniform_attention_is_entropy_one_and_full_coverage():
  n = 10
  m = _metrics(np.full((2, 2, 4, n), 1.0 / n))
  for what in ('mean', 'min', 'max'):
    assert m[f'entropy_norm_{what}'] == pytest.approx(1.0, abs=1e-6)
    assert m[f'entropy_{what}'] == pytest.approx(math.log(n), rel=1e-6)
  assert m['inputs_attended'] == pytest.approx(1.0)
  assert m['inputs_for_90pct_mass'] == pytest.approx(0.9)  # 9 of 10 equal shares
  assert m['latent_overlap'] == pytest.approx(1.0, abs=1e-6)  # all latents alike


def test_all_latents_on_one_input_is_entropy_zero_and_one_nth_coverage():
  n = 12
  probs = np.zeros((3, 2, 5, n))
  probs[..., 7] = 1.0
  m = _metrics(probs)
  assert m['entropy_mean'] == m['entropy_max'] == 0.0
  assert m['entropy_norm_max'] == 0.0
  assert m['inputs_attended'] == pytest.approx(1 / n)
  assert m['inputs_for_90pct_mass'] == pytest.approx(1 / n)
  assert m['latent_overlap'] == pytest.approx(1.0)


def test_latents_on_distinct_inputs_cover_everything_without_overlap():
  n = 8
  probs = np.broadcast_to(np.eye(n), (2, 1, n, n))  # latent l looks only at input l
  m = _metrics(probs)
  assert m['entropy_max'] == 0.0
  assert m['inputs_attended'] == pytest.approx(1.0)
  assert m['inputs_for_90pct_mass'] == pytest.approx(math.ceil(0.9 * n) / n)
  assert m['latent_overlap'] == pytest.approx(0.0, abs=1e-7)


def test_min_max_over_latents_and_masked_examples():
  n = 16
  probs = np.zeros((2, 1, 4, n))
  probs[0, :, :2] = 1.0 / n     # example 0: latents 0, 1 uniform, latents 2, 3 on input 0
  probs[0, :, 2:, 0] = 1.0
  probs[1, :, :, 3] = 1.0       # example 1: everything on input 3 (weight 0 below)
  m = _metrics(probs, weights=[1.0, 0.0])
  assert m['entropy_min'] == pytest.approx(0.0, abs=1e-7)
  assert m['entropy_max'] == pytest.approx(math.log(n), rel=1e-6)
  assert m['entropy_norm_mean'] == pytest.approx(0.5, rel=1e-6)
  # Input 0 holds 1/2 + 1/(2n) of the mass, the other 15 inputs 1/(2n) each (> 0.1/n).
  assert m['inputs_attended'] == pytest.approx(1.0)
  # 90%: input 0 and 12 others (1/2 + 13/(2n) = 0.906 >= 0.9; 12 in all give 0.875).
  assert m['inputs_for_90pct_mass'] == pytest.approx(13 / n)
  # Pairs: (0,1) -> 1, (2,3) -> 1, uniform vs one-hot -> sqrt(1/n) (4 such ordered pairs x2).
  want = (2 * 1 + 2 * 1 + 8 * math.sqrt(1 / n)) / 12
  assert m['latent_overlap'] == pytest.approx(want, rel=1e-6)
  both = _metrics(probs)  # weighting example 1 in moves the numbers
  assert both['inputs_attended'] < m['inputs_attended']


def test_metrics_match_brute_force_on_random_attention():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.full(9, 0.3), size=(3, 2, 5))  # [3, 2, 5, 9]
  stats = jax.device_get(telemetry.per_example_stats(jnp.asarray(probs, jnp.float32)))
  for b in range(3):
    pairs = [np.sum(np.sqrt(probs[b, h, i] * probs[b, h, j]))
             for h in range(2) for i in range(5) for j in range(5) if i != j]
    assert stats['latent_overlap'][b] == pytest.approx(np.mean(pairs), rel=1e-5)
    mass = np.sort(probs[b].mean(axis=(0, 1)))[::-1]
    needed = np.argmax(np.cumsum(mass) >= 0.9) + 1
    assert stats['inputs_for_90pct_mass'][b] == pytest.approx(needed / 9)
    entropy = -(probs[b] * np.log(probs[b])).sum(-1).mean(0)
    np.testing.assert_allclose(stats['entropy'][b], entropy, rtol=1e-5)


def test_negative_telemetry_examples_is_one_clear_sentence():
  config = tiny_mnist1d_config(**{'eval.telemetry_examples': -1})
  with pytest.raises(UserError, match='eval.telemetry_examples must be an integer >= 0'):
    telemetry.check_config(config)


# ------------------------------------------------------------------------------------------
# Capturing the probabilities from the model.
# ------------------------------------------------------------------------------------------

def _layer_norm(x, ln):
  x = np.asarray(x, np.float64)
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + ln.epsilon) * np.asarray(ln.scale[...]) + np.asarray(
      ln.bias[...])


def _manual_probs(cross_attend, z, tokens):
  att = cross_attend.attention
  linear = lambda x, d: x @ np.asarray(d.kernel[...], np.float64) + np.asarray(d.bias[...])
  q = linear(_layer_norm(z, cross_attend.query_norm), att.query)
  k = linear(_layer_norm(tokens, cross_attend.kv_norm), att.key)
  heads = att.num_heads
  q = q.reshape(q.shape[:2] + (heads, -1))
  k = k.reshape(k.shape[:2] + (heads, -1))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(q.shape[-1])
  logits -= logits.max(-1, keepdims=True)
  e = np.exp(logits)
  return e / e.sum(-1, keepdims=True)


def test_captured_probabilities_equal_a_manual_softmax():
  # Iterative encoder, two cross-attend heads, and a model that itself attends in chunks of
  # 4 keys: the capture is the plain softmax all the same.
  config = tiny_mnist1d_config(**{
      'model.encoder.num_cross_attend_heads': 2, 'model.encoder.qk_channels': 16,
      'model.encoder.cross_attend_every_block': True, 'model.attention_chunk_size': 4,
      'model.attention_auto_chunk_threshold': 0})
  model = state_lib.build(config, (40, 1), jax.random.key(1))
  graphdef, weights = nnx.split(model)

  @jax.jit
  def run(weights, x):
    model = nnx.merge(graphdef, weights)
    tokens = model.preprocessor(x).inputs
    captured = []
    z = model.encoder(tokens, attention_probs=captured)
    return (telemetry.cross_attention_probs(model, x), tokens, z, model.encoder(tokens),
            len(captured))

  x = jax.random.normal(jax.random.key(2), (3, 40, 1))
  probs, tokens, z_captured, z_plain, num_captured = run(weights, x)
  assert sorted(probs) == ['cross_attend', 'cross_attend_1', 'decoder']
  assert probs['cross_attend'].shape == (3, 2, 8, 20)  # conv stem: 40 samples -> 20 tokens
  assert probs['decoder'].shape == (3, 1, 1, 8)        # the class query over the 8 latents
  for p in probs.values():
    np.testing.assert_allclose(np.asarray(p).sum(-1), 1.0, rtol=1e-5)
  want = _manual_probs(model.encoder.cross_attend, model.encoder.latents(3), tokens)
  np.testing.assert_allclose(probs['cross_attend'], want, rtol=1e-5, atol=1e-7)
  # Capturing leaves the encoder's output as it was.
  np.testing.assert_array_equal(z_captured, z_plain)
  assert num_captured == 2


def test_train_and_eval_jaxprs_equal_those_of_a_model_without_the_hook(monkeypatch):
  """docs/telemetry.md: the model's forward pass (eval) and its gradient (train, dropout on)
  compute nothing for telemetry unless asked to: their jaxprs are those of a model whose
  hook computes nothing."""
  config = tiny_mnist1d_config(**{'model.encoder.cross_attend_every_block': True})
  model = state_lib.build(config, (40, 1), jax.random.key(0))
  graphdef, weights = nnx.split(model)
  x = jnp.zeros((2, 40, 1))

  def forward(weights, x, train):
    model = nnx.merge(graphdef, weights)
    rngs = nnx.Rngs(dropout=jax.random.key(0)) if train else None  # as ModelSpec.apply calls it
    return model(x, deterministic=not train, rngs=rngs)

  def jaxprs():
    eval_step = jax.make_jaxpr(lambda w, x: forward(w, x, False))(weights, x)
    train_step = jax.make_jaxpr(jax.grad(lambda w, x: forward(w, x, True).sum()))(weights, x)
    return str(eval_step), str(train_step)

  with_hook = jaxprs()
  # Without the hook: the probabilities are zeros, computed from nothing.
  monkeypatch.setattr(attention.Attention, 'attention_probs',
                      lambda self, q, kv, mask=None: jnp.zeros(
                          (q.shape[0], self.num_heads, q.shape[1], kv.shape[1])))
  assert jaxprs() == with_hook


# ------------------------------------------------------------------------------------------
# The image.
# ------------------------------------------------------------------------------------------

def test_tokens_map_onto_the_input_positions_they_cover():
  maps = np.arange(4.0).reshape(1, 4)
  np.testing.assert_array_equal(telemetry_plot.tokens_to_input_grid(maps, (2, 2), (4, 4))[0],
                                [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
  # A pool-2 conv stem: 3 tokens over 5 samples (the last token covers one sample).
  np.testing.assert_array_equal(
      telemetry_plot.tokens_to_input_grid(np.array([[5.0, 6.0, 7.0]]), (3,), (5,))[0],
      [5, 5, 6, 6, 7])
  assert telemetry_plot.tokens_to_input_grid(maps, (4,), (2, 2)) is None


@pytest.mark.parametrize('input_shape,token_dims', [((8, 8, 1), (4, 4)), ((40, 1), (20,)),
                                                    ((8, 8, 3), None)])
def test_attention_image_is_rgb_for_1d_and_2d_inputs(input_shape, token_dims):
  rng = np.random.default_rng(0)
  n = 16 if token_dims is None else int(np.prod(token_dims))
  image = telemetry_plot.attention_image(rng.normal(size=(2, *input_shape)),
                                         rng.dirichlet(np.ones(n), size=(2, 3)), [0, 3, 7],
                                         token_dims)
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 10
  assert telemetry_plot.attention_image(np.zeros((1, 2, 2, 2, 1)), np.ones((1, 1, 8)) / 8,
                                        [0], (2, 2, 2)) is None  # 3-D: not drawn


# ------------------------------------------------------------------------------------------
# A tiny training run and eval.py's evaluator log the scalars and write the image.
# ------------------------------------------------------------------------------------------

def test_tiny_train_and_eval_log_telemetry_and_write_the_image(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  pipeline.prepare('mnist1d/plain', data_dir)
  workdir = str(tmp_path / 'run')
  config = tiny_mnist1d_config(**{
      'data.data_dir': data_dir, 'train.num_steps': 1, 'checkpoint.every_steps': 1,
      'eval.telemetry_examples': 8, 'mesh.data': 4, 'mesh.fsdp': 2})
  trainer.train_and_evaluate(config, workdir)

  logged = [r for r in read(os.path.join(workdir, 'metrics.jsonl')) if r['split'] == 'eval'][-1]
  prefix = 'telemetry/cross_attend/'
  assert 0 < logged[prefix + 'entropy_norm_min'] <= logged[prefix + 'entropy_norm_mean'] <= 1
  assert logged[prefix + 'entropy_mean'] == pytest.approx(
      logged[prefix + 'entropy_norm_mean'] * math.log(20), rel=1e-4)
  for key in ('inputs_attended', 'inputs_for_90pct_mass', 'latent_overlap'):
    assert 0 < logged[prefix + key] <= 1
  assert 0 < logged['telemetry/decoder/entropy_norm_mean'] <= 1
  with Image.open(os.path.join(workdir, 'telemetry', 'step_1.png')) as png:
    assert png.format == 'PNG' and png.size[0] > 100 and png.size[1] > 100
  events = b''.join(open(f, 'rb').read()
                    for f in glob.glob(os.path.join(workdir, 'tensorboard', 'eval', '*')))
  assert b'telemetry/cross_attend' in events  # the image (and scalars) reached TensorBoard

  # eval.py's path on a different mesh: the same examples give the same numbers.
  config = tiny_mnist1d_config(**{
      'data.data_dir': data_dir, 'eval.telemetry_examples': 8, 'mesh.data': 8})
  result = evaluator.evaluate(config, workdir)
  with open(os.path.join(workdir, 'eval_1.json')) as f:
    written = json.load(f)
  for key in (prefix + 'entropy_norm_mean', prefix + 'latent_overlap',
              'telemetry/decoder/entropy_mean'):
    assert written[key] == pytest.approx(logged[key], rel=1e-4)
    assert result[key] == written[key]
