"""Perceiver and Perceiver IO in JAX / Flax NNX."""

from perceiver_jax import versions as _versions

_versions.check()
