"""benchmarks/mfu.py's analytic FLOP count against two independent counts of the training
step at its TINY shapes: the matmuls in the step's jaxpr, counted here, and XLA's cost
analysis of the lowered step.

The analytic count is "matmul FLOPs of one training step, 3 x forward". It must equal the
jaxpr's matmuls exactly (2 x M x N x K per dot_general): forward x 3, and the gradient
computation, whose backward does two matmuls for each forward one here. XLA counts the
same matmuls plus one FLOP per element of every other op (LayerNorm, softmax, GELU, the
optimizer update), which adds 8% at TINY's widths and batch 8; more than 15% would mean
the analytic count misses matmuls.
"""

import math

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

BATCH = 8
XLA_EXTRA = (1.0, 1.15)  # XLA's FLOPs / the analytic matmul FLOPs at TINY, batch 8


def matmul_flops(jaxpr) -> int:
  """2 x (output elements) x (contracted size), summed over the dot_generals of a jaxpr and
  the jaxprs inside it (a scan's body counted `length` times)."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    assert name not in ('while', 'conv_general_dilated'), f'{name}: not counted here'
    repeat = eqn.params['length'] if name == 'scan' else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, 'jaxpr', sub)  # a ClosedJaxpr's Jaxpr
        if hasattr(sub, 'eqns'):
          total += repeat * matmul_flops(sub)
  return total


def test_matmul_flops_of_a_hand_made_function():
  # [2, 3] x [3, 4] (2 x 8 x 3 = 48) and a batched [5, 2, 6] x [5, 6, 7] in a scan of 3
  # (3 x 2 x 70 x 6 = 2520).
  def f(a, b, c, d):
    def body(carry, _):
      return carry, jnp.einsum('bij,bjk->bik', c, d)
    return a @ b, jax.lax.scan(body, 0.0, None, length=3)[1]
  shapes = [(2, 3), (3, 4), (5, 2, 6), (5, 6, 7)]
  jaxpr = jax.make_jaxpr(f)(*(jnp.zeros(s) for s in shapes)).jaxpr
  assert matmul_flops(jaxpr) == 48 + 2520


@pytest.fixture(scope='module')
def tiny_step():
  """(forward, loss gradient, AdamW train step, params, opt_state, x, y) of mfu.TINY."""
  from benchmarks import mfu
  # Shapes only: counting needs no values, and random initialisation costs seconds on CPU.
  model = nnx.eval_shape(lambda: mfu.build(mfu.TINY, jnp.float32, 'xla'))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  tx = optax.adamw(1e-3, weight_decay=1e-4)
  x = jax.ShapeDtypeStruct((BATCH,) + mfu.TINY['image'], jnp.float32)
  y = jax.ShapeDtypeStruct((BATCH,), jnp.int32)

  def forward(params, x):
    return nnx.merge(graphdef, params, rest)(x)

  def loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

  def step(params, opt_state, x, y):
    grads = jax.grad(loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return dict(mfu=mfu, forward=forward, grad=jax.grad(loss), step=step, params=params,
              opt_state=jax.eval_shape(tx.init, params), x=x, y=y)


def test_analytic_flops_are_the_matmuls_of_the_step(tiny_step):
  s = tiny_step
  analytic = s['mfu'].analytic_flops(s['mfu'].TINY, BATCH)
  forward = matmul_flops(jax.make_jaxpr(s['forward'])(s['params'], s['x']).jaxpr)
  step = matmul_flops(jax.make_jaxpr(s['grad'])(s['params'], s['x'], s['y']).jaxpr)
  print(f'analytic {analytic:,}; jaxpr matmuls: forward {forward:,}, step {step:,}')
  assert analytic == 3 * forward
  assert analytic == step


def test_analytic_flops_agree_with_xla_cost_analysis(tiny_step):
  s = tiny_step
  analytic = s['mfu'].analytic_flops(s['mfu'].TINY, BATCH)
  lowered = jax.jit(s['step']).lower(s['params'], s['opt_state'], s['x'], s['y'])
  cost = lowered.cost_analysis()
  xla = float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])
  print(f'XLA {xla:.4g} FLOPs, analytic {analytic:.4g}: ratio {xla / analytic:.4f}')
  assert XLA_EXTRA[0] <= xla / analytic <= XLA_EXTRA[1]
