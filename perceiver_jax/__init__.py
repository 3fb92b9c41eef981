"""Perceiver and Perceiver IO in JAX / Flax NNX."""
