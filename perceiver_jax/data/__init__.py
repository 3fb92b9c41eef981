"""Data: TFDS builders for embedded datasets, per-example transforms, and the grain pipeline.

Nothing is imported here on purpose: the tasks import the leaf helpers (transforms,
image_augment, mlm_masking, text_windows), and the pipeline (perceiver_jax/data/pipeline.py)
imports the tasks, so importing a helper must not load the pipeline.
"""
