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
  return dict(num_params=count_params(model),
              output_shape=jax.tree.map(lambda o: tuple(o.shape), out),
              flops_per_example=_flops_from_cost_analysis(compiled.cost_analysis()))


def _human(n: float, units=('', 'K', 'M', 'G', 'T')) -> str:
  for unit in units:
    if abs(n) < 1000 or unit == units[-1]:
      return f'{n:.2f}{unit}' if unit else f'{n:.0f}'
    n /= 1000.0
  return str(n)


def format_summary(summary: dict[str, Any]) -> str:
  """A few readable lines, e.g. 'params: 1.23M (1,234,567)'."""
  return '\n'.join([
      f"params: {_human(summary['num_params'])} ({summary['num_params']:,})",
      f"output shape (batch 1): {summary['output_shape']}",
      f"forward FLOPs per example: {summary['flops_per_example'] / 1e9:.4f} GFLOPs",
  ])
