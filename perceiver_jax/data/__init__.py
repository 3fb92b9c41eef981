"""Data: TFDS builders for embedded datasets and a grain input pipeline."""

from perceiver_jax.data.pipeline import (
    DatasetError,
    DatasetSpec,
    dataset_info,
    make_eval_iterator,
    make_train_iterator,
    prepare,
    to_global,
)

__all__ = [
    'DatasetError',
    'DatasetSpec',
    'dataset_info',
    'make_eval_iterator',
    'make_train_iterator',
    'prepare',
    'to_global',
]
