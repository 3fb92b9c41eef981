"""Perceiver AR: causality, prefix dropout, and cached generation equal to recomputation."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import perceiver_ar_stdlib
from perceiver_jax import predict, trainer
from perceiver_jax.data import pipeline
from perceiver_jax.data.builders import python_stdlib as ps
from perceiver_jax.errors import UserError
from perceiver_jax.tasks.causal_lm import LastCrop, RandomCrop
from tests.helpers import (assert_loss_falls, fixed_batch, prepared_data_dir, run_main,
                           runlocal)
from perceiver_jax.model.perceiver_ar import PerceiverAR, apply_rotary
from perceiver_jax.sampling import Sampler, SamplingOptions

TINY = dict(vocab_size=256, max_context=32, num_latents=8, num_channels=32, num_heads=2,
            num_self_attends=2, widening_factor=2)


@nnx.jit(static_argnames='num_latents')
def forward(model, tokens, num_latents=None):
  return model(tokens, num_latents=num_latents)


def tiny_model(**overrides):
  return PerceiverAR(**{**TINY, **overrides}, rngs=nnx.Rngs(0))


def test_a_latent_sees_only_the_past():
  model = tiny_model()
  tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 256)
  logits = forward(model, tokens)
  assert logits.shape == (2, 8, 256)
  # Changing the last token changes no latent's prediction but the last one's.
  changed = forward(model, tokens.at[:, -1].set((tokens[:, -1] + 1) % 256))
  np.testing.assert_allclose(changed[:, :-1], logits[:, :-1], atol=1e-6)
  assert not np.allclose(changed[:, -1], logits[:, -1], atol=1e-4)
  # Changing the first prefix token reaches every latent through the cross-attend.
  early = forward(model, tokens.at[:, 0].set((tokens[:, 0] + 1) % 256))
  assert not np.allclose(early[:, 0], logits[:, 0], atol=1e-6)


def test_rotary_scores_depend_on_relative_positions_only():
  q = jax.random.normal(jax.random.key(5), (1, 6, 2, 8))
  k = jax.random.normal(jax.random.key(6), (1, 6, 2, 8))
  positions = jnp.arange(6)[None]
  def scores(shift):
    rq = apply_rotary(q, positions + shift, 4, 10_000.0)
    rk = apply_rotary(k, positions + shift, 4, 10_000.0)
    return jnp.einsum('bqhd,bkhd->bhqk', rq, rk)
  np.testing.assert_allclose(scores(0), scores(1000), atol=1e-4)
  assert not np.allclose(scores(0), jnp.einsum('bqhd,bkhd->bhqk', q, k), atol=1e-3)
  # The channels past rotary_dim pass unchanged.
  np.testing.assert_array_equal(apply_rotary(q, positions + 3, 4, 1e4)[..., 4:], q[..., 4:])


def test_latent_count_changes_at_evaluation():
  model = tiny_model()
  tokens = jax.random.randint(jax.random.key(3), (1, 32), 0, 256)
  assert forward(model, tokens, num_latents=16).shape == (1, 16, 256)
  with pytest.raises(ValueError, match='num_latents'):
    model(tokens, num_latents=33)


def test_prefix_dropout_trains_on_fewer_keys_and_is_off_at_eval():
  model = tiny_model(prefix_dropout=0.5)
  tokens = jax.random.randint(jax.random.key(4), (2, 32), 0, 256)
  rngs = nnx.Rngs(dropout=0)
  train_a = model(tokens, deterministic=False, rngs=rngs)
  train_b = model(tokens, deterministic=False, rngs=rngs)
  assert not np.allclose(train_a, train_b)  # different prefixes dropped
  evaluated = forward(model, tokens)
  np.testing.assert_allclose(evaluated, forward(tiny_model(), tokens), atol=1e-6)


@pytest.mark.parametrize('stride', [1, 5])
def test_cached_generation_equals_recomputing_from_scratch(stride):
  """Every sampled token's logits equal those of re-encoding the whole context at every
  step, and (checked on a sample of steps, as each length compiles anew) the plain forward
  pass over the same context and latent window; the context slides several times."""
  model = tiny_model()
  sampler = Sampler(model, num_latents=8, stride=stride)
  prompt = np.array([[5, 9, 200, 17, 3], [1, 2, 3, 4, 5]], np.int32)
  options = SamplingOptions(temperature=1.0, top_k=50)
  cached = sampler.generate(prompt, 45, options=options, seed=7)
  uncached = sampler.generate(prompt, 45, options=options, seed=7, cached=False)
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  np.testing.assert_allclose(cached.logits, uncached.logits, atol=1e-5, rtol=0)
  assert cached.encodes < uncached.encodes == 46
  assert cached.slides > 0  # windows slid on the cache, between context slides
  assert cached.windows[-1][0] > 0  # the context slid
  # The steps just before and after each slide, the first and the last.
  slides = [i for i in range(1, 45) if cached.windows[i] != cached.windows[i - 1]]
  steps = sorted({0, 44, *slides[:2], *[i - 1 for i in slides[:2]], slides[-1]})
  for i in steps:
    context_start, latent_start = cached.windows[i]
    n = prompt.shape[1] + i
    ref = forward(model, jnp.asarray(cached.tokens[:, context_start:n]),
                  num_latents=n - latent_start)
    np.testing.assert_allclose(cached.logits[i], ref[:, -1], atol=1e-5, rtol=0)


def test_greedy_and_top_p():
  model = tiny_model()
  sampler = Sampler(model)
  greedy = sampler.generate([1, 2, 3], 5, options=SamplingOptions(temperature=0.0))
  assert (greedy.tokens[0, 3:] == greedy.logits.argmax(-1)[:, 0]).all()
  nucleus = sampler.generate([1, 2, 3], 5, options=SamplingOptions(top_p=1e-6), seed=3)
  np.testing.assert_array_equal(nucleus.tokens, greedy.tokens)  # top_p -> only the argmax


@pytest.mark.parametrize('call, phrase', [
    (lambda s: s.generate(list(range(33)), 1), 'longer than the context'),
    (lambda s: s.generate([1], 1, options=SamplingOptions(top_p=0.0)), 'top_p'),
    (lambda s: s.generate([1], 1, options=SamplingOptions(temperature=-1.0)), 'temperature'),
    (lambda s: Sampler(s.model_for_test, num_latents=64), 'above the context'),
])
def test_bad_sampling_requests_are_one_sentence(call, phrase):
  sampler = Sampler(tiny_model())
  sampler.model_for_test = tiny_model()
  with pytest.raises(UserError, match=phrase):
    call(sampler)


def test_an_uncached_model_cannot_be_sampled_with_a_cache():
  with pytest.raises(UserError, match='no key/value cache'):
    Sampler(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))  # any other module


# ------------------------------------------------------------------------------------------
# In the framework: packed data, the causal_lm task, the trainer, sample.py.
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return prepared_data_dir(tmp_path_factory, 'python_stdlib/packed_tiny')


def test_packed_windows_are_the_split_files_joined_by_a_zero_byte(data_dir):
  builder = pipeline.prepare('python_stdlib/packed_tiny', data_dir)
  root, cfg = ps.stdlib_root(), builder.builder_config
  files = ps.corpus_files(root)
  for split in ('train', 'test'):
    paths = builder._cap(root, files[split], cfg.files_per_split[split])
    stream = b''.join(open(os.path.join(root, p), 'rb').read() + b'\0' for p in paths)
    windows = np.stack([e['bytes'] for e in builder.as_data_source(split)])
    assert windows.shape[1] == 513
    assert windows.tobytes() == stream[:windows.size]
    assert len(stream) - windows.size < 513  # only the incomplete tail is dropped


def test_every_context_predicts_the_same_bytes_at_evaluation():
  window = {'bytes': np.arange(513, dtype=np.int64) % 256}
  short = LastCrop(64, 16).map(window)
  long = LastCrop(256, 16).map(window)
  np.testing.assert_array_equal(short['targets'], long['targets'])
  np.testing.assert_array_equal(short['targets'], window['bytes'][-16:])
  np.testing.assert_array_equal(long['inputs'][-64:], short['inputs'])
  crop = RandomCrop(64, 16).random_map(window, np.random.default_rng(0))
  np.testing.assert_array_equal(crop['targets'][:-1], crop['inputs'][-15:])


def test_runlocal_learns_a_batch_then_samples_from_its_workdir(data_dir, tmp_path):
  workdir = str(tmp_path / 'ar')
  config = runlocal(perceiver_ar_stdlib, data_dir, **fixed_batch(8, 12),
                    **{'optimizer.learning_rate': 3e-3})
  final = trainer.train_and_evaluate(config, workdir)
  assert_loss_falls(workdir)
  assert final['bits_per_byte'] == pytest.approx(final['loss'] / math.log(2), rel=1e-6)
  proc = run_main('sample.py', [f'--workdir={workdir}', '--prompt=def main(',
                                '--num_tokens=20', '--temperature=0'])
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['step'] == 12 and result['prompt'] == 'def main('
  # Greedy bytes, the same as the model's own argmax loop without the cache.
  model = predict.load(workdir).model()
  greedy = Sampler(model).generate(np.frombuffer(b'def main(', np.uint8), 20,
                                   options=SamplingOptions(temperature=0.0), cached=False)
  expected = greedy.tokens[0, 9:].astype(np.uint8).tobytes().decode('utf-8', 'replace')
  assert result['continuation'] == expected
  # A prompt longer than the context: one sentence, exit 2.
  proc = run_main('sample.py', [f'--workdir={workdir}', '--prompt=' + 'x' * 200],
                  check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      'error: The prompt (200 tokens) is longer than the context (128); shorten it or '
      'sample with a longer context.')


def test_ngram_baseline_is_a_distribution_and_learns_a_periodic_stream():
  from benchmarks.baselines import witten_bell_bits  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  train = rng.integers(0, 6, 5000).astype(np.uint8)
  context = np.array([[1, 2, 3, 4]])
  for order in (2, 3, 5):
    probs = [2.0 ** -witten_bell_bits(train, context, np.array([b]), order)[order]
             for b in range(256)]
    assert sum(probs) == pytest.approx(1.0, abs=1e-9)
  periodic = np.tile(np.arange(7), 500).astype(np.uint8)
  test = np.tile(np.arange(7), 8)
  contexts = np.stack([test[4 - k:50 - k] for k in range(4, 0, -1)], axis=-1)
  bits = witten_bell_bits(periodic, contexts, test[4:50], 3)
  assert bits[1] > 2.8 and bits[3] < 1e-3
