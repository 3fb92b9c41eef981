"""Mixed precision: compute dtypes by name, and dynamic loss scaling for float16.

Parameters and optimizer state always stay float32; `config.model.dtype` only sets the
dtype activations and matmuls are computed in. LayerNorm statistics, softmax, mean pooling,
the returned logits and the losses stay float32 whatever it is.

float16 has a narrow range (max 65504, smallest normal 6e-5), so small gradients underflow
to zero unless the loss is scaled up first. `LossScale` does that dynamically: the loss is
multiplied by `scale` before differentiation and the gradients divided by it after; a step
whose gradients are not finite is skipped and halves the scale, and `period` finite steps in
a row double it. It lives in the TrainState, so a resumed run continues with the same scale.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class LossScale:
  """Dynamic loss scale: `scale` (float32 scalar) and finite steps since it last changed."""
  scale: jax.Array
  good_steps: jax.Array
  period: int = flax.struct.field(pytree_node=False, default=2000)
  factor: float = flax.struct.field(pytree_node=False, default=2.0)

  def adjust(self, finite: jax.Array) -> LossScale:
    """The scale after a step whose gradients were `finite` (a boolean scalar)."""
    grow = finite & (self.good_steps + 1 >= self.period)
    scale = jnp.where(finite, jnp.where(grow, self.scale * self.factor, self.scale),
                      jnp.maximum(self.scale / self.factor, 1.0))
    good_steps = jnp.where(finite & ~grow, self.good_steps + 1, 0)
    return self.replace(scale=scale.astype(jnp.float32), good_steps=good_steps.astype(jnp.int32))


def make_loss_scale(config) -> LossScale | None:
  """A LossScale when the config computes in float16, else None (nothing to scale)."""
  if config.model.get('dtype', 'float32') != 'float16':
    return None
  return LossScale(scale=jnp.asarray(float(config.train.loss_scale_init), jnp.float32),
                   good_steps=jnp.zeros((), jnp.int32),
                   period=int(config.train.loss_scale_period))


def all_finite(tree) -> jax.Array:
  """True iff every element of every array in `tree` is finite (a boolean scalar)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def select_tree(pred: jax.Array, on_true, on_false):
  """`on_true` where the scalar `pred` holds, else `on_false`, leaf by leaf."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)
