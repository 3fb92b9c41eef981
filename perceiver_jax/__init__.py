"""Perceiver and Perceiver IO in JAX / Flax NNX.

The public surface, importable from here (`import perceiver_jax as pj; pj.PerceiverEncoder`):
the model modules, the builder, the errors, and the training / evaluation entry points.
Each name is imported on first use (PEP 562), so `import perceiver_jax` stays cheap for the
command-line mains and for anything that needs only one corner of the package.
docs/api.md shows them in use.
"""

import importlib as _importlib

from perceiver_jax import versions as _versions

_versions.check()

# public name -> the module that defines it.
_EXPORTS = {
    # The model and its parts (perceiver_jax/model/): each builds and runs on its own.
    'Perceiver': 'perceiver_jax.model.perceiver',
    'PerceiverEncoder': 'perceiver_jax.model.encoder',
    'PerceiverAR': 'perceiver_jax.model.perceiver_ar',
    'Attention': 'perceiver_jax.model.attention',
    'CrossAttention': 'perceiver_jax.model.attention',
    'SelfAttention': 'perceiver_jax.model.attention',
    'MLP': 'perceiver_jax.model.attention',
    'GenericPreprocessor': 'perceiver_jax.model.io_processors',
    'PatchesPreprocessor': 'perceiver_jax.model.io_processors',
    'PreprocessorOutput': 'perceiver_jax.model.io_processors',
    'ImagePreprocessor': 'perceiver_jax.model.image_processors',
    'Conv2DDownsample': 'perceiver_jax.model.image_processors',
    'AudioPreprocessor': 'perceiver_jax.model.sequence_processors',
    'Conv1DPreprocessor': 'perceiver_jax.model.sequence_processors',
    'OneHotPreprocessor': 'perceiver_jax.model.sequence_processors',
    'PointCloudPreprocessor': 'perceiver_jax.model.sequence_processors',
    'TextPreprocessor': 'perceiver_jax.model.text_processors',
    'EmbeddingDecoder': 'perceiver_jax.model.text_processors',
    'MultimodalPreprocessor': 'perceiver_jax.model.multimodal',
    'MultimodalDecoder': 'perceiver_jax.model.multimodal',
    'DecoderQueries': 'perceiver_jax.model.multimodal',
    'VideoAutoencodingDecoder': 'perceiver_jax.model.multimodal',
    'BasicDecoder': 'perceiver_jax.model.decoders',
    'ClassificationDecoder': 'perceiver_jax.model.decoders',
    'ProjectionDecoder': 'perceiver_jax.model.decoders',
    'FlowDecoder': 'perceiver_jax.model.decoders',
    'IdentityPostprocessor': 'perceiver_jax.model.postprocessors',
    'ClassificationPostprocessor': 'perceiver_jax.model.postprocessors',
    'ProjectionPostprocessor': 'perceiver_jax.model.postprocessors',
    'AudioPostprocessor': 'perceiver_jax.model.postprocessors',
    'FlowPostprocessor': 'perceiver_jax.model.postprocessors',
    'MultimodalPostprocessor': 'perceiver_jax.model.postprocessors',
    'FourierPositionEncoding': 'perceiver_jax.model.position_encoding',
    'TrainablePositionEncoding': 'perceiver_jax.model.position_encoding',
    'PositionEncodingProjector': 'perceiver_jax.model.position_encoding',
    'ModelSettings': 'perceiver_jax.model.settings',
    # Building from a config section, and sizing what was built.
    'build_model': 'perceiver_jax.model.build',
    'default_model_config': 'perceiver_jax.model.build',
    'part': 'perceiver_jax.model.registry',
    'modality_config': 'perceiver_jax.model.build_multimodal',
    'count_params': 'perceiver_jax.model.summary',
    'model_summary': 'perceiver_jax.model.summary',
    # Errors: one sentence about the user's config, data or checkpoint.
    'UserError': 'perceiver_jax.errors',
    'DatasetError': 'perceiver_jax.errors',
    # Whole runs from an experiment config (what train.py and eval.py call).
    'Run': 'perceiver_jax.run',
    'default_config': 'perceiver_jax.run',
    'train_and_evaluate': 'perceiver_jax.trainer',
    'evaluate': 'perceiver_jax.evaluator',
    # A trained or converted model from its workdir: load(workdir).predict(raw inputs).
    'load': 'perceiver_jax.predict',
    'Predictor': 'perceiver_jax.predict',
    # Perceiver AR generation with a key/value cache.
    'Sampler': 'perceiver_jax.sampling',
    'SamplingOptions': 'perceiver_jax.sampling',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(_importlib.import_module(module), name)
  globals()[name] = value  # later look-ups skip this function
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
