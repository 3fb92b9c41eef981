"""Latent telemetry: what the cross-attentions look at, measured at eval time.

For the first `eval.telemetry_examples` examples of the eval split, a separate jitted
function recomputes each cross-attention's probabilities P [batch, heads, queries, keys]
as a plain softmax(q k^T / sqrt(d)) from the model's own q/k projections (also when the
model runs chunked or fused attention: only these few examples pay for the full matrix).
Encoder cross-attends have queries = latents, keys = input tokens; the decoder's has
queries = output queries, keys = latents. Per cross-attention `<name>` it logs
`telemetry/<name>/<metric>` (docs/telemetry.md says how to read them):

  entropy_{mean,min,max}       H_l = -sum_n P[l, n] log P[l, n] (nats) for each latent l,
                               averaged over heads and examples; mean/min/max over latents
  entropy_norm_{mean,min,max}  the same divided by log(N): 1 = uniform, 0 = one input
  inputs_attended              fraction of the N inputs whose share of the attention mass
                               m_n = mean over heads and latents of P[h, l, n] exceeds a
                               tenth of the uniform share (m_n > 0.1 / N); 1 = uniform,
                               1/N = every latent on one input (collapse)
  inputs_for_90pct_mass        smallest fraction of inputs (largest m_n first) holding 90%
                               of the mass; about 0.9 when uniform, 1/N when collapsed
  latent_overlap               mean over pairs of latents l != l' (and heads) of the
                               Bhattacharyya coefficient sum_n sqrt(P[l, n] P[l', n]):
                               1 = all latents attend alike, 0 = disjoint inputs

Coverage is computed per example, then averaged over examples. An image of the first
cross-attend's maps for a few examples goes to WORKDIR/telemetry/step_<N>.png and, where
the log supports it, TensorBoard.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from perceiver_jax import sharding as shd
from perceiver_jax.errors import UserError
from perceiver_jax.run import Run

ATTENDED_SHARE = 0.1     # an input counts as attended above this fraction of 1/N
MASS_FRACTION = 0.9      # inputs_for_90pct_mass covers this much of the attention mass
IMAGE_EXAMPLES = 4       # examples drawn in the image
IMAGE_LATENTS = 8        # latents drawn per example, evenly spaced over the latent index
DECODER_MAX_QUERIES = 1024  # larger decoders (dense outputs) are left out of telemetry


# ------------------------------------------------------------------------------------------
# Metrics: jnp functions of attention probabilities (run inside jit, or on numpy arrays).
# ------------------------------------------------------------------------------------------

def per_example_stats(probs: jax.Array) -> dict[str, jax.Array]:
  """probs [batch, heads, queries L, keys N] (rows sum to 1) -> per-example statistics:
  entropy [batch, L] (nats, mean over heads), inputs_attended [batch],
  inputs_for_90pct_mass [batch], latent_overlap [batch] (NaN when L = 1)."""
  probs = jnp.asarray(probs, jnp.float32)
  num_q, num_k = probs.shape[2:]
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1)),
                               0), axis=-1).mean(axis=1)
  mass = probs.mean(axis=(1, 2))  # [batch, N]: each input's share, sums to 1
  mass = mass / jnp.maximum(mass.sum(-1, keepdims=True), 1e-30)
  attended = jnp.mean(mass > ATTENDED_SHARE / num_k, axis=-1)
  cumulative = jnp.cumsum(-jnp.sort(-mass, axis=-1), axis=-1)
  # The slack keeps an exactly uniform distribution from tipping over by rounding.
  needed = jnp.sum(cumulative < MASS_FRACTION - 1e-6, axis=-1) + 1
  # sum_{l != l'} <sqrt p_l, sqrt p_l'> = |sum_l sqrt p_l|^2 - sum_l |p_l|_1: O(L N), no L x L.
  roots = jnp.sqrt(probs).sum(axis=2)  # [batch, heads, N]
  pairs = jnp.sum(roots * roots, axis=-1) - probs.sum(axis=(2, 3))
  overlap = (pairs / max(num_q * (num_q - 1), 1)).mean(axis=1)
  if num_q < 2:
    overlap = jnp.full_like(overlap, jnp.nan)
  return {'entropy': entropy, 'inputs_attended': attended,
          'inputs_for_90pct_mass': needed / num_k, 'latent_overlap': overlap}


def summarize(stats: dict, num_inputs: int, weights=None) -> dict[str, float]:
  """per_example_stats (host arrays) -> scalars; weights [batch] (e.g. the eval mask)."""
  entropy = np.asarray(stats['entropy'], np.float64)
  w = np.ones(entropy.shape[0]) if weights is None else np.asarray(weights, np.float64)
  w = w / max(w.sum(), 1e-12)
  per_latent = np.einsum('b,bl->l', w, entropy)
  log_n = math.log(num_inputs) if num_inputs > 1 else 0.0
  # A single query (classification decoder) has no spread over queries to report.
  reductions = (('mean', np.mean),) + ((('min', np.min), ('max', np.max))
                                       if per_latent.size > 1 else ())
  out = {}
  for what, fn in reductions:
    out[f'entropy_{what}'] = float(fn(per_latent))
  for what, fn in reductions:
    # One input: the only distribution there is counts as uniform.
    out[f'entropy_norm_{what}'] = float(fn(per_latent) / log_n) if log_n else 1.0
  for key in ('inputs_attended', 'inputs_for_90pct_mass', 'latent_overlap'):
    value = float(np.dot(w, np.asarray(stats[key], np.float64)))
    if np.isfinite(value):
      out[key] = value
  return out


def attention_metrics(probs, weights=None) -> dict[str, float]:
  """All telemetry scalars of one attention, probs [batch, heads, L, N]."""
  return summarize(jax.device_get(jax.jit(per_example_stats)(probs)), probs.shape[-1],
                   weights)


# ------------------------------------------------------------------------------------------
# Capture: the model's cross-attention probabilities, through its own modules.
# ------------------------------------------------------------------------------------------

def cross_attention_probs(model, inputs) -> dict[str, jax.Array]:
  """{name: probs [batch, heads, queries, keys]} for a Perceiver on `inputs` (eval mode).

  Names: 'cross_attend' (the encoder's first), 'cross_attend_<b>' (block b's, iterative
  encoders), 'decoder' (a basic/classification decoder with <= DECODER_MAX_QUERIES queries).
  The model runs once, through its own forward pass; what is not returned is dead code.
  """
  probs = {}
  model(inputs, attention_probs=probs)
  if 'decoder' in probs and probs['decoder'].shape[2] > DECODER_MAX_QUERIES:
    del probs['decoder']  # dense outputs: a [queries, latents] map per head is too big
  return probs


def make_telemetry_step(graphdef, mesh: Mesh, params_shardings, model_state_shardings,
                        num_examples: int, num_image_examples: int = IMAGE_EXAMPLES):
  """Returns (step, meta). step(params, model_state, batch) -> {'stats': {name:
  per-example stats}, 'maps': [E, K, N] head-averaged probabilities of the first
  cross-attend for E examples and the K latents 'latents', 'inputs': those E examples,
  'mask': [n]}. meta, filled in at the first trace: 'num_inputs' {name: N} and
  'token_dims' (the preprocessed index grid, None if unknown).

  Runs on the first `num_examples` rows of a global eval batch; jitted on its own, so the
  train and eval steps are untouched.
  """
  meta = {'num_inputs': {}, 'token_dims': None}

  def step(params, model_state, batch):
    model = nnx.merge(graphdef, params, model_state)
    inputs = jax.tree.map(lambda x: x[:num_examples], batch['inputs'])
    probs = cross_attention_probs(model, inputs)
    meta['num_inputs'] = {name: p.shape[-1] for name, p in probs.items()}
    if model.preprocessor is None:
      meta['token_dims'] = tuple(inputs.shape[1:-1])
    else:
      meta['token_dims'] = getattr(model.preprocessor, 'index_dims', None)
    first = probs['cross_attend']
    latents = np.unique(np.linspace(0, first.shape[2] - 1, IMAGE_LATENTS).round().astype(int))
    return {'stats': {name: per_example_stats(p) for name, p in probs.items()},
            'maps': first[:num_image_examples, :, latents].mean(axis=1),
            'latents': jnp.asarray(latents),
            'inputs': jax.tree.map(lambda x: x[:num_image_examples], inputs),
            'mask': batch['mask'][:num_examples]}

  jitted = jax.jit(step, in_shardings=(params_shardings, model_state_shardings,
                                       shd.batch_sharding(mesh)),
                   out_shardings=shd.replicated(mesh))
  return jitted, meta


# ------------------------------------------------------------------------------------------
# Glue: what trainer.run_eval and evaluator.evaluate call.
# ------------------------------------------------------------------------------------------

def check_config(config) -> int:
  """eval.telemetry_examples, checked (a UserError if negative)."""
  n = config.eval.get('telemetry_examples', 0)
  if not isinstance(n, int) or isinstance(n, bool) or n < 0:
    raise UserError(f'eval.telemetry_examples must be an integer >= 0 (0 disables latent '
                    f'telemetry), got {n!r}.')
  return n


class Telemetry:
  """Latent telemetry of one run: `run(step, params, model_state, split)` -> scalars."""

  def __init__(self, run: Run, workdir: str, log=None):
    self.config, self._run, self.workdir, self.log = run.config, run, workdir, log
    n = min(check_config(run.config), run.eval_batch_size)
    self.step_fn, self.meta = make_telemetry_step(run.model.graphdef, run.mesh,
                                                  run.params_shardings,
                                                  run.model_state_shardings, n)

  @classmethod
  def create(cls, run: Run, workdir: str, log=None) -> 'Telemetry | None':
    """None when eval.telemetry_examples is 0."""
    if not check_config(run.config):
      return None
    return cls(run, workdir, log)

  def run(self, step: int, params, model_state, split: str | None = None) -> dict[str, float]:
    """Telemetry on the first examples of `split` (default the eval split); writes the
    image (process 0) and returns {'telemetry/<name>/<metric>': value}."""
    split = split or self.config.data.eval_split
    batch = next(iter(self._run.eval_batches(split)))
    out = jax.device_get(self.step_fn(params, model_state, batch))
    scalars = {}
    for name, stats in out['stats'].items():
      values = summarize(stats, self.meta['num_inputs'][name], out['mask'])
      scalars.update({f'telemetry/{name}/{k}': v for k, v in values.items()})
    if jax.process_index() == 0:
      first = {k.rsplit('/', 1)[1]: v for k, v in scalars.items()
               if k.startswith('telemetry/cross_attend/')}
      logging.info('latent telemetry at step %d (first cross-attend): entropy_norm_mean=%.3f '
                   'inputs_attended=%.3f latent_overlap=%.3f', step,
                   first['entropy_norm_mean'], first['inputs_attended'],
                   first.get('latent_overlap', float('nan')))
      self._write_image(step, split, out)
    return scalars

  def _write_image(self, step, split, out) -> None:
    from perceiver_jax import telemetry_plot  # matplotlib: only runs that draw load it
    inputs = out['inputs']
    if not isinstance(inputs, np.ndarray):
      return  # multimodal inputs: no single index grid to draw over
    real = int(np.sum(out['mask'][:len(inputs)] > 0))
    image = telemetry_plot.attention_image(inputs[:real], out['maps'][:real],
                                           out['latents'], self.meta['token_dims'])
    if image is None:
      return
    suffix = '' if split == self.config.data.eval_split else f'_{split}'
    path = os.path.join(self.workdir, 'telemetry', f'step_{step}{suffix}.png')
    telemetry_plot.save_png(image, path)
    if self.log is not None and hasattr(self.log, 'write_image'):
      self.log.write_image(step, 'eval', 'telemetry/cross_attend', image)
    logging.info('Cross-attention maps written to %s', path)

