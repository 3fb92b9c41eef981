"""Model size and cost: parameter count, output shape, XLA-counted FLOPs per example."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def count_params(model: nnx.Module) -> int:
  """Total number of elements over every nnx.Param of `model`."""
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  return int(sum(np.prod(x.shape) for x in leaves))


def encoder_structure(model: nnx.Module) -> dict[str, Any] | None:
  """The encoder's block structure, or None for a model without a Perceiver encoder.

  num_blocks comes from the config, not the weights: the blocks share one set.
  """
  encoder = getattr(model, 'encoder', None)
  if encoder is None or not hasattr(encoder, 'num_blocks'):
    return None
  (latents,) = jax.tree.leaves(nnx.state(encoder.z_pos_enc, nnx.Param))
  cross_attends = (encoder.num_blocks if encoder.cross_attend_every_block else 1)
  return dict(num_blocks=int(encoder.num_blocks),
              self_attends_per_block=len(encoder.self_attends),
              cross_attends=int(cross_attends),
              latents=tuple(int(n) for n in latents.shape))


def _flops_from_cost_analysis(cost: Any) -> float:
  # Older JAX returns a list with one dict per computation, newer a dict.
  if isinstance(cost, (list, tuple)):
    return float(sum(c.get('flops', 0.0) for c in cost if c))
  return float((cost or {}).get('flops', 0.0))


def model_summary(model: nnx.Module, input_shape: Sequence[int] | dict[str, Sequence[int]],
                  input_dtype: Any = jnp.float32) -> dict[str, Any]:
  """Summarises `model` on one example of per-example shape `input_shape` ({modality:
  shape} for a multimodal model).

  Returns dict(num_params, output_shape (at batch 1; {modality: shape} for a multimodal
  model), flops_per_example), the FLOPs from XLA's cost analysis of one compiled forward
  pass at batch 1.
  """
  graphdef, state = nnx.split(model)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x, deterministic=True)

  one = lambda shape: jax.ShapeDtypeStruct((1,) + tuple(shape), input_dtype)
  x = ({m: one(s) for m, s in input_shape.items()} if isinstance(input_shape, dict)
       else one(input_shape))
  out = jax.eval_shape(forward, state, x)
  compiled = jax.jit(forward).lower(state, x).compile()
  summary = dict(num_params=count_params(model),
                 output_shape=jax.tree.map(lambda o: tuple(o.shape), out),
                 flops_per_example=_flops_from_cost_analysis(compiled.cost_analysis()))
  encoder = encoder_structure(model)
  if encoder:
    summary['encoder'] = encoder
  return summary


def _human(n: float, units=('', 'K', 'M', 'G', 'T')) -> str:
  for unit in units:
    if abs(n) < 1000 or unit == units[-1]:
      return f'{n:.2f}{unit}' if unit else f'{n:.0f}'
    n /= 1000.0
  return str(n)


def format_encoder(encoder: dict[str, Any]) -> str:
  """'encoder: 8 blocks of 6 self-attends (one weight-shared block), ...'."""
  blocks = encoder['num_blocks']
  return (f"encoder: {blocks} block{'s' * (blocks != 1)} of "
          f"{encoder['self_attends_per_block']} self-attends (one weight-shared block), "
          f"{encoder['cross_attends']} cross-attend(s), latents {encoder['latents']}")


def format_summary(summary: dict[str, Any]) -> str:
  """A few readable lines, e.g. 'params: 1.23M (1,234,567)', for the fields present."""
  lines = [f"params: {_human(summary['num_params'])} ({summary['num_params']:,})"]
  if 'encoder' in summary:
    lines.append(format_encoder(summary['encoder']))
  if 'output_shape' in summary:
    lines.append(f"output shape (batch 1): {summary['output_shape']}")
  if 'flops_per_example' in summary:
    lines.append(f"forward FLOPs per example: {summary['flops_per_example'] / 1e9:.4f} GFLOPs")
  return '\n'.join(lines)
