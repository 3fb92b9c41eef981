"""Model FLOPs from a function's jaxpr: every matrix product counted, nothing else.

Backend cost analyses disagree (XLA:GPU may return none at all, and a fused attention
kernel is a custom call it does not count), so model-FLOPs utilisation is computed from the
program itself: 2 x M x N x K (x batch dims) per `dot_general`, 2 x output x kernel window
x input features per convolution, with scans multiplied by their length. A training step
is counted as 3 x its forward pass (one product forward, two backward), the usual MFU
convention (PaLM, MaxText); rematerialised recomputation is not model FLOPs, and neither
is the zero padding attention adds to unaligned widths on a GPU (counted without it).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core

from perceiver_jax.model.attention import align_widths


def _dot_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lhs_contract, rhs_contract), (lhs_batch, _) = eqn.params['dimension_numbers']
  contract = math.prod(lhs[d] for d in lhs_contract)
  batch = math.prod(lhs[d] for d in lhs_batch)
  lhs_free = math.prod(n for d, n in enumerate(lhs) if d not in (*lhs_contract, *lhs_batch))
  rhs_free = math.prod(n for d, n in enumerate(rhs)
                       if d not in (*rhs_contract, *eqn.params['dimension_numbers'][1][1]))
  return 2 * batch * lhs_free * rhs_free * contract


def _conv_flops(eqn) -> int:
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  dn = eqn.params['dimension_numbers']
  rhs_spec = dn.rhs_spec  # (out feature dim, in feature dim, *spatial dims)
  window = math.prod(rhs[d] for d in rhs_spec[2:])
  in_features = rhs[rhs_spec[1]]  # per feature group
  return 2 * math.prod(out) * window * in_features


def _sub_jaxprs(eqn):
  """(jaxpr, multiplier) pairs of the sub-programs an equation runs."""
  params = eqn.params
  if eqn.primitive.name == 'scan':
    return [(params['jaxpr'], params['length'])]
  if eqn.primitive.name == 'cond':
    # Only one branch runs; count the most expensive.
    return [(max(params['branches'], key=lambda b: count_jaxpr(b)), 1)]
  if eqn.primitive.name == 'while':
    raise ValueError('A while loop has no static trip count; count it another way.')
  subs = []
  for value in params.values():
    if isinstance(value, (jex_core.Jaxpr, jex_core.ClosedJaxpr)):
      subs.append((value, 1))
  return subs


def count_jaxpr(jaxpr) -> int:
  """Matrix-product FLOPs of one evaluation of `jaxpr` (a Jaxpr or ClosedJaxpr)."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_flops(eqn)
    elif name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    else:
      for sub, times in _sub_jaxprs(eqn):
        total += times * count_jaxpr(sub)
  return total


def forward_flops(fn: Callable[..., Any], *args, **kwargs) -> int:
  """Matrix-product FLOPs of fn(*args, **kwargs); args may be ShapeDtypeStructs."""
  with align_widths(False):  # the model's own widths, not the padded kernels'
    # A fresh function: jax caches traces by function, and the padding is not in the key.
    return count_jaxpr(jax.make_jaxpr(lambda *a, **k: fn(*a, **k))(*args, **kwargs))


def train_step_flops(forward: int) -> int:
  """Model FLOPs of a training step whose forward pass costs `forward`."""
  return 3 * forward
