"""Sampling from a Perceiver AR model, with or without its key/value cache.

`Sampler(model).generate(prompt, num_tokens, ...)` appends tokens one at a time. The
context buffer holds N tokens (the model's max_context, or less) and the latent window M.
A new token normally costs one `decode_step` against the cache. When the window is full
it slides by `stride` tokens: the self-attends run again over the new window from the
cross-attend outputs the cache keeps (`slide_window`), a cost that does not depend on the
context length. When the buffer is full the context slides by `stride` too, and the
context is re-encoded from scratch (the paper's strided sampling): the latents that stay
lose the oldest tokens from their view, so their cross-attends change. That cost is
amortised over `stride` tokens and is paid only once the generation outruns the buffer.

With cached=False every token re-encodes the whole context (same windows, same numbers
up to rounding): the baseline the cache is measured and tested against.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from perceiver_jax import command_line
from perceiver_jax import predict
from perceiver_jax.errors import UserError
from perceiver_jax.model.perceiver_ar import PerceiverAR


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off."""
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0.0:
      raise UserError(f'temperature={self.temperature} is invalid; use a number >= 0 '
                      '(0 = always the most likely token).')
    if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
      raise UserError(f'top_k={self.top_k!r} is invalid; use an integer >= 0 (0 = off).')
    if not 0.0 < self.top_p <= 1.0:
      raise UserError(f'top_p={self.top_p} is invalid; use a number in (0, 1] (1 = off).')


@functools.partial(jax.jit, static_argnames='options')
def choose(logits: jax.Array, key: jax.Array, options: SamplingOptions) -> jax.Array:
  """One token per row of logits [batch, vocab], under the options."""
  if options.temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / options.temperature
  if options.top_k:
    kth = jax.lax.top_k(logits, min(options.top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if options.top_p < 1.0:
    # The smallest set of most likely tokens whose probability reaches top_p.
    order = jnp.argsort(-logits, axis=-1)
    sorted_probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    drop_sorted = before >= options.top_p
    drop = jnp.zeros_like(drop_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    logits = jnp.where(drop, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass
class Generation:
  """tokens [batch, prompt + new]; logits [new, batch, vocab] of each sampled token's
  distribution (before the options); windows: for each, the absolute positions where its
  context and its latent window started; encodes: how many full re-encodes it took;
  slides: how many windows slid on the cache, without a re-encode."""
  tokens: np.ndarray
  logits: np.ndarray
  windows: list[tuple[int, int]]
  encodes: int
  slides: int = 0


class Sampler:
  """Generates from `model` with a context buffer of `context` tokens (default: the
  model's max_context) and a latent window of `num_latents` (default: the model's),
  re-encoding every `stride` tokens once they are full (default: half the window)."""

  def __init__(self, model, *, context: int | None = None, num_latents: int | None = None,
               stride: int | None = None):
    if not isinstance(model, PerceiverAR):
      raise UserError(f'Cached sampling needs a Perceiver AR model; this one is a '
                      f'{type(model).__name__}, which has no key/value cache to generate '
                      'with.')
    self.context = model.max_context if context is None else int(context)
    self.num_latents = model.num_latents if num_latents is None else int(num_latents)
    if not 1 <= self.context <= model.max_context:
      raise UserError(f'context={self.context} is invalid; use 1..{model.max_context} (the '
                      "model's max_context).")
    if not 1 <= self.num_latents <= self.context:
      raise UserError(f'num_latents={self.num_latents} is above the context '
                      f'({self.context}); use 1..{self.context}.')
    self.stride = max(1, self.num_latents // 2) if stride is None else int(stride)
    if not 1 <= self.stride <= self.num_latents:
      raise UserError(f'stride={self.stride} is invalid; use 1..{self.num_latents} (the '
                      'latent window).')
    graphdef, state = nnx.split(model)
    self._state = state
    merged = lambda s: nnx.merge(graphdef, s)
    slots = self.num_latents
    self._encode = jax.jit(lambda s, tokens, length, start: merged(s).encode(
        tokens, length, start, slots))
    # A step reads the cache in one program and writes its entries in another, to which
    # the cache is donated: updated in place, not copied (PerceiverAR.decode_step).
    attend = jax.jit(lambda s, cache, token: merged(s).attend_step(cache, token))
    write = jax.jit(PerceiverAR.write_step, donate_argnums=0)

    def step(state, cache, token):
      logits, entries = attend(state, cache, token)
      return logits, write(cache, entries)
    self._step = step
    # A slide reads neither of the context's key/value buffers: they stay out of the
    # program (passing them through would copy them) and go back into the cache after.
    slide = jax.jit(lambda s, cache, start: merged(s).slide_window(cache, start),
                    donate_argnums=1)

    def slide_window(state, cache, start):
      small = cache._replace(cross_keys=None, cross_values=None)
      return slide(state, small, start)._replace(cross_keys=cache.cross_keys,
                                                 cross_values=cache.cross_values)
    self._slide_window = slide_window

  def generate(self, prompt, num_tokens: int, *, options: SamplingOptions = SamplingOptions(),
               seed: int = 0, cached: bool = True) -> Generation:
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim == 1:
      prompt = prompt[None]
    batch, prompt_length = prompt.shape
    if prompt_length < 1:
      raise UserError('The prompt is empty; give at least one token.')
    if prompt_length > self.context:
      raise UserError(f'The prompt ({prompt_length} tokens) is longer than the context '
                      f'({self.context}); shorten it or sample with a longer context.')
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
      raise UserError(f'num_tokens={num_tokens!r} is invalid; use an integer >= 0.')
    sequence = np.zeros((batch, prompt_length + num_tokens), np.int32)
    sequence[:, :prompt_length] = prompt
    key = jax.random.key(seed)
    window, slots, stride = self.context, self.num_latents, self.stride
    context_start = latent_start = 0  # absolute positions
    length = prompt_length
    cache, logits_row, encodes, slides, history, windows = None, None, 0, 0, [], []

    def encode():
      nonlocal cache, logits_row, encodes
      buffer = np.zeros((batch, window), np.int32)
      buffer[:, :length - context_start] = sequence[:, context_start:length]
      logits, cache = self._encode(self._state, buffer, length - context_start,
                                   latent_start - context_start)
      logits_row = logits[:, length - 1 - latent_start]
      encodes += 1

    # The first window: every prompt position, or the last (M - stride) when longer.
    latent_start = max(0, length - max(slots - stride, 1))
    encode()
    for _ in range(num_tokens):
      history.append(logits_row)
      windows.append((context_start, latent_start))
      token = choose(logits_row, jax.random.fold_in(key, length), options)
      sequence[:, length] = np.asarray(token)
      length += 1
      slide_context = length - context_start > window
      slide_window = length - latent_start > slots
      if slide_context:
        context_start = length - (window - stride) if window > stride else length - 1
      if slide_context or slide_window:
        latent_start = max(context_start, length - max(slots - stride, 1))
      if slide_context or not cached:
        encode()
        continue
      if slide_window:  # the new token is not in the cache yet: slide, then append it
        cache = self._slide_window(self._state, cache, latent_start - context_start)
        slides += 1
      logits_row, cache = self._step(self._state, cache, token)
    logits = (np.stack([np.asarray(l) for l in history]) if history
              else np.zeros((0, batch, 0), np.float32))
    return Generation(sequence, logits, windows, encodes, slides)


def sample_text(workdir: str, prompt: str, num_tokens: int, *, step: int | None = None,
                options: SamplingOptions = SamplingOptions(), seed: int = 0,
                cached: bool = True, num_latents: int | None = None,
                stride: int | None = None) -> dict:
  """Continues `prompt` (UTF-8 bytes) with the Perceiver AR model of a workdir; returns
  {'prompt', 'continuation' (invalid UTF-8 shown as U+FFFD), 'step', 'seconds' (wall time
  of generation, compilation included)}."""
  predictor = predict.load(workdir, step)
  model = predictor.model()
  if not isinstance(model, PerceiverAR):
    raise UserError(f'{workdir} holds a {type(model).__name__} ({predictor.task.name} task); '
                    'sampling needs a Perceiver AR model (configs/perceiver_ar_stdlib.py), '
                    'which has a key/value cache to generate with.')
  if not prompt:
    raise UserError('--prompt is empty; give the text to continue.')
  sampler = Sampler(model, num_latents=num_latents, stride=stride)
  tokens = np.frombuffer(prompt.encode('utf-8'), np.uint8).astype(np.int32)
  start = time.perf_counter()
  generation = sampler.generate(tokens, num_tokens, options=options, seed=seed, cached=cached)
  seconds = time.perf_counter() - start
  new = generation.tokens[0, len(tokens):].astype(np.uint8).tobytes()
  return dict(prompt=prompt, continuation=new.decode('utf-8', errors='replace'),
              step=predictor.step, seconds=round(seconds, 3))

# ------------------------------------------------------------------------------------------
# The command line.
# ------------------------------------------------------------------------------------------

def _main(argv) -> None:
  del argv
  FLAGS = command_line.FLAGS
  if not FLAGS.workdir:
    raise UserError('--workdir is required: the workdir of a Perceiver AR training run.')
  if FLAGS.prompt is None:
    raise UserError("--prompt is required: the text to continue, e.g. --prompt='def main('.")
  options = SamplingOptions(temperature=FLAGS.temperature, top_k=FLAGS.top_k,
                            top_p=FLAGS.top_p)
  result = sample_text(FLAGS.workdir, FLAGS.prompt, FLAGS.num_tokens, step=FLAGS.step,
                       options=options, seed=FLAGS.seed, cached=FLAGS.cache,
                       num_latents=FLAGS.num_latents, stride=FLAGS.stride)
  print(json.dumps(result))


def main() -> None:
  """python -m perceiver_jax.sampling (also sample.py and perceiver-sample)."""
  flags.DEFINE_string('prompt', None, 'The text to continue (UTF-8 bytes).')
  flags.DEFINE_integer('num_tokens', 200, 'Bytes to generate.')
  flags.DEFINE_float('temperature', 1.0, 'Sampling temperature; 0 = the most likely byte.')
  flags.DEFINE_integer('top_k', 0, 'Sample among the k most likely bytes; 0 = all.')
  flags.DEFINE_float('top_p', 1.0, 'Sample among the most likely bytes holding this much '
                     'probability; 1 = all.')
  flags.DEFINE_integer('seed', 0, 'Random seed of the sampling.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to sample from (default: the latest).')
  flags.DEFINE_integer('num_latents', None, 'Latent window (default: the trained one).')
  flags.DEFINE_integer('stride', None, 'Tokens between re-encodes once the window is full '
                       '(default: half the window).')
  flags.DEFINE_bool('cache', True, 'Use the key/value cache (--nocache: re-encode the whole '
                    'context for every byte).')
  command_line.run(
      _main,
      'Continues a prompt with a trained Perceiver AR model (key/value-cached sampling).\n\n'
      'usage: {prog} --workdir=DIR --prompt=TEXT [--num_tokens=N] [--temperature=T] '
      '[--top_k=K] [--top_p=P] [--seed=S]')


if __name__ == '__main__':
  main()
