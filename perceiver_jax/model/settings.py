"""Model-wide settings: one small frozen object built once from config.model's top-level
fields and handed to every constructor that needs it (instead of threading each field
through every constructor, or setting it on built modules afterwards)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from perceiver_jax.errors import UserError

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
ATTENTION_IMPLS = (None, 'xla', 'cudnn')
MLP_ACTIVATIONS = {
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),  # DeepMind's
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),  # exact erf, as HF's port
}
# config.model's top-level fields that are settings (everything else there is a section).
FIELDS = ('dtype', 'attention_impl', 'attention_chunk_size',
          'attention_auto_chunk_threshold', 'mlp_activation')


def compute_dtype(name: str):
  """The jnp dtype named by config.model.dtype."""
  if name not in COMPUTE_DTYPES:
    raise UserError(f'config.model.dtype={name!r} is not a compute dtype; use one of '
                    f'{", ".join(COMPUTE_DTYPES)} (parameters always stay float32).')
  return COMPUTE_DTYPES[name]


def _count(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise UserError(f'config.model.{name}={value!r} is invalid; use an integer >= 0 '
                    '(0 = off).')
  return value


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """dtype: compute dtype (LayerNorm statistics, softmax and outputs stay float32);
  param_dtype: parameters; attention_impl: None (cuDNN's fused kernel on a GPU where it
  applies, else XLA) | 'xla' | 'cudnn'; attention_chunk_size: > 0 = every attention
  takes keys/values this many at a time (same results, memory linear in kv length);
  attention_auto_chunk_threshold: > 0 = chunk any attention whose q_len * kv_len exceeds
  it; mlp_activation: the GELU of every block's MLP ('gelu_tanh' | 'gelu')."""
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None
  attention_chunk_size: int = 0
  attention_auto_chunk_threshold: int = 0
  mlp_activation: str = 'gelu_tanh'

  def __post_init__(self):
    if self.attention_impl not in ATTENTION_IMPLS:
      raise UserError(f'config.model.attention_impl={self.attention_impl!r} is unknown; use '
                      f'one of {", ".join(repr(i) for i in ATTENTION_IMPLS)}.')
    _count('attention_chunk_size', self.attention_chunk_size)
    _count('attention_auto_chunk_threshold', self.attention_auto_chunk_threshold)
    if self.mlp_activation not in MLP_ACTIVATIONS:
      raise UserError(f'config.model.mlp_activation={self.mlp_activation!r} is unknown; use '
                      f'one of {", ".join(repr(a) for a in MLP_ACTIVATIONS)}.')

  @classmethod
  def from_config(cls, model_config, *, dtype=None,
                  param_dtype=jnp.float32) -> ModelSettings:
    """From config.model's top-level fields; `dtype` overrides config.model.dtype."""
    get = model_config.get
    return cls(
        dtype=compute_dtype(get('dtype', 'float32')) if dtype is None else dtype,
        param_dtype=param_dtype, attention_impl=get('attention_impl'),
        attention_chunk_size=get('attention_chunk_size', 0) or 0,
        attention_auto_chunk_threshold=get('attention_auto_chunk_threshold', 0) or 0,
        mlp_activation=get('mlp_activation', 'gelu_tanh'))

  def block_kwargs(self) -> dict[str, Any]:
    """What every CrossAttention / SelfAttention block takes from the settings."""
    return dict(attention_impl=self.attention_impl,
                attention_chunk_size=self.attention_chunk_size,
                attention_auto_chunk_threshold=self.attention_auto_chunk_threshold,
                mlp_activation=self.mlp_activation)


DEFAULT = ModelSettings()
