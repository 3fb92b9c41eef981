"""TFDS builders for the embedded datasets, which prepare offline.

Importing this module registers the builders with TFDS, so after it
`tfds.builder('mnist1d/shuffled', data_dir=...)` also finds them.
"""

from perceiver_jax.data.builders.digits import Digits
from perceiver_jax.data.builders.mnist1d import Mnist1d
from perceiver_jax.data.builders.python_stdlib import PythonStdlib
from perceiver_jax.data.builders.skimage_flow import SkimageFlow

# TFDS name -> builder class; `pipeline.prepare` builds these on first use.
EMBEDDED = {'mnist1d': Mnist1d, 'digits': Digits, 'python_stdlib': PythonStdlib,
            'skimage_flow': SkimageFlow}

__all__ = ['EMBEDDED', 'Digits', 'Mnist1d', 'PythonStdlib', 'SkimageFlow']
