"""TFDS builders for the embedded datasets, which prepare offline.

Importing this module registers the builders with TFDS, so after it
`tfds.builder('mnist1d/shuffled', data_dir=...)` also finds them.
"""

from perceiver_jax.data.builders.audioset_files import AudiosetFiles
from perceiver_jax.data.builders.digits import Digits
from perceiver_jax.data.builders.flow_files import FlowFiles
from perceiver_jax.data.builders.kinetics_files import KineticsFiles
from perceiver_jax.data.builders.mnist1d import Mnist1d
from perceiver_jax.data.builders.modelnet40 import ModelNet40
from perceiver_jax.data.builders.photo_crops import PhotoCrops
from perceiver_jax.data.builders.python_stdlib import PythonStdlib
from perceiver_jax.data.builders.skimage_flow import SkimageFlow
from perceiver_jax.data.builders.stdlib_docs import StdlibDocs

# TFDS name -> builder class; `pipeline.prepare` builds these on first use.
EMBEDDED = {'mnist1d': Mnist1d, 'digits': Digits, 'python_stdlib': PythonStdlib,
            'skimage_flow': SkimageFlow, 'photo_crops': PhotoCrops,
            'stdlib_docs': StdlibDocs,
            # Synthetic configs prepare offline; the real ones read the files in manual_dir.
            'modelnet40': ModelNet40, 'audioset_files': AudiosetFiles,
            'kinetics_files': KineticsFiles, 'flow_files': FlowFiles}

__all__ = ['EMBEDDED', 'AudiosetFiles', 'Digits', 'FlowFiles', 'KineticsFiles', 'Mnist1d', 'ModelNet40', 'PhotoCrops', 'PythonStdlib', 'SkimageFlow',
           'StdlibDocs']
