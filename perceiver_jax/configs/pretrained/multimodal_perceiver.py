"""multimodal-perceiver: Perceiver IO autoencoding video, audio and a class label
(DeepMind's video_autoencoding colab on Kinetics-700, HF deepmind/multimodal-perceiver).

Inputs (build_model's input_shape is a dict): 16 RGB frames of 224x224
(image [batch, 16, 224, 224, 3]), their 30720 audio samples at 48 kHz
(audio [batch, 30720, 1]) and a 700-way label vector (label [batch, 700]).
  audio: patches of 16 samples + 1-D Fourier features (192 bands, max resolution 30720)
         = 16 + 385 = 401 channels for 1920 tokens;
  image: 4x4 space-to-depth patches (48 values) + 3-D Fourier features (32 bands, max
         resolution (16, 56, 56): the patch grid, as the colab's IMG_SZ = 56)
         = 48 + 195 = 243 channels for 16*56*56 = 50176 tokens;
  label: one token of 700 channels, always replaced by its mask token (mask_prob 1), so
         the model infers the label from video and audio.
Every modality is padded to 700 + 4 = 704 channels with a learned per-modality vector.
784 x 512 latents, one block of 8 self-attends (8 heads), 1 cross-attend head.
The decoder queries: audio 1-D Fourier (385 channels) over 1920 patches, video 3-D
Fourier (195) over 16x224x224 pixels, label one trainable 1024-wide query; padded to
1024 + 2 = 1026 channels and decoded by one shared cross-attend to 512 channels, then
linear maps to 16 samples per audio patch, 3 colours per pixel and 700 logits.

The full output is 802816 pixels: decode it in chunks with subsampled_output_points, as
the colab does (128 chunks of 6272 pixels and 15 audio patches).
"""

from perceiver_jax import run
from perceiver_jax.model.build import modality_config, part

NUM_FRAMES = 16
IMAGE_SIZE = 224
AUDIO_SAMPLES_PER_FRAME = 48000 // 25
SAMPLES_PER_PATCH = 16
NUM_CLASSES = 700
NUM_AUDIO_SAMPLES = NUM_FRAMES * AUDIO_SAMPLES_PER_FRAME  # 30720
# The colab's IMG_SZ: the Fourier max_resolution of the video (the 4x4-patch grid).
FOURIER_IMAGE_SIZE = 56
INPUT_SHAPE = {
    'audio': (NUM_AUDIO_SAMPLES, 1),
    'image': (NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3),
    'label': (NUM_CLASSES,),
}


def _fourier(num_bands, max_resolution):
  return dict(name='fourier', num_bands=num_bands, max_resolution=max_resolution)


def modalities():
  """The three modality sub-configs of the released model."""
  audio_pe = _fourier(192, (NUM_AUDIO_SAMPLES,))
  image_pe = _fourier(32, (NUM_FRAMES, FOURIER_IMAGE_SIZE, FOURIER_IMAGE_SIZE))
  return dict(
      audio=modality_config(
          preprocessor=dict(name='audio', samples_per_patch=SAMPLES_PER_PATCH,
                            position_encoding=audio_pe),
          mask_prob=0.0,
          decoder=dict(name='basic',
                       output_index_dims=(NUM_AUDIO_SAMPLES // SAMPLES_PER_PATCH,),
                       position_encoding=audio_pe),
          postprocessor=dict(name='audio', samples_per_patch=SAMPLES_PER_PATCH)),
      image=modality_config(
          preprocessor=dict(name='image', prep_type='patches', spatial_downsample=4,
                            position_encoding=image_pe),
          mask_prob=0.0,
          decoder=dict(name='video', output_index_dims=(NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE),
                       position_encoding=image_pe),
          postprocessor=dict(name='projection', num_outputs=3)),
      label=modality_config(
          preprocessor=dict(name='one_hot'),
          mask_prob=1.0,
          decoder=dict(name='classification', num_query_channels=1024),
          postprocessor=dict(name='classification', num_classes=NUM_CLASSES)),
  )


def get_config(arg=None):
  del arg
  config = run.default_config()
  config.data.name = 'kinetics700'
  model = config.model
  model.num_classes = NUM_CLASSES
  model.preprocessor = part('preprocessor', 'multimodal', min_padding_size=4)
  model.modalities.update(modalities())
  model.encoder = part('encoder', num_latents=28 * 28, num_latent_channels=512,
                       num_blocks=1, num_self_attends_per_block=8)
  # MultimodalDecoder's defaults: 1 head, widening 1, no query residual, padding 2.
  model.decoder = part('decoder', 'multimodal', output_num_channels=512)
  model.postprocessor = part('postprocessor', 'multimodal')
  # What convert.py needs to build the model without a dataset.
  config.convert = dict(family='multimodal', input_shape=INPUT_SHAPE)
  config.train.batch_size = 1
  config.eval.batch_size = 1
  return config
