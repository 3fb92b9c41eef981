"""Perceiver / Perceiver IO model: modules, builder and summary."""

from perceiver_jax.model.attention import (Attention, CrossAttention, MLP, SelfAttention,
                                           dot_product_attention, make_attention_mask)
from perceiver_jax.model.build import build_model, default_model_config, part
from perceiver_jax.model.settings import ModelSettings
from perceiver_jax.model.decoders import BasicDecoder, ClassificationDecoder, ProjectionDecoder
from perceiver_jax.model.decoders import FlowDecoder
from perceiver_jax.model.encoder import PerceiverEncoder
from perceiver_jax.model.image_processors import (Conv2DDownsample, ImagePreprocessor,
                                                  patches_for_flow)
from perceiver_jax.model.io_processors import (GenericPreprocessor, PatchesPreprocessor,
                                               PreprocessorOutput)
from perceiver_jax.model.multimodal import (DecoderQueries, MultimodalDecoder,
                                            MultimodalPreprocessor, VideoAutoencodingDecoder)
from perceiver_jax.model.perceiver import Perceiver
from perceiver_jax.model.sequence_processors import (AudioPreprocessor, OneHotPreprocessor,
                                                     PointCloudPreprocessor)
from perceiver_jax.model.postprocessors import ClassificationPostprocessor, IdentityPostprocessor
from perceiver_jax.model.postprocessors import FlowPostprocessor
from perceiver_jax.model.postprocessors import (AudioPostprocessor, MultimodalPostprocessor,
                                                ProjectionPostprocessor)
from perceiver_jax.model.position_encoding import (FourierPositionEncoding,
                                                   PositionEncodingProjector,
                                                   TrainablePositionEncoding,
                                                   build_position_encoding,
                                                   generate_fourier_features)
from perceiver_jax.model.summary import count_params, format_summary, model_summary
from perceiver_jax.model.text_processors import EmbeddingDecoder, TextPreprocessor
