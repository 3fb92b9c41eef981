"""Per task: how a batch feeds the model, the loss, and the metrics it reports."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def classification_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
                        label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean softmax cross-entropy over real examples, plus summed metrics.

  Args:
    logits: [batch, num_classes].
    labels: [batch] int.
    mask: [batch] float, 1 for real examples and 0 for padding (eval), or None.
  Returns:
    (mean loss, sums) where sums holds 'loss', 'correct' and 'count' totals so that
    metrics over many batches (and devices) are exact: total / count.
  """
  num_classes = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits, targets)
  if mask is None:
    mask = jnp.ones_like(per_example)
  count = mask.sum()
  correct = ((jnp.argmax(logits, -1) == labels) * mask).sum()
  loss_sum = (per_example * mask).sum()
  mean_loss = loss_sum / jnp.maximum(count, 1.0)
  return mean_loss, {'loss': loss_sum, 'correct': correct, 'count': count}


def summarize(sums: dict[str, float]) -> dict[str, float]:
  """Turns accumulated sums into reported metrics (loss, accuracy)."""
  count = max(float(sums['count']), 1.0)
  return {'loss': float(sums['loss']) / count, 'accuracy': float(sums['correct']) / count,
          'num_examples': int(sums['count'])}
