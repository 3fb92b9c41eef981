"""Perceiver IO (Jaegle et al. 2021, arXiv 2107.14795) on ImageNet: the three released
architectures, trained with the Perceiver ImageNet recipe.

Architectures (exactly those of the released models, configs/pretrained/):
  pos=fourier  raw pixels + 2-D Fourier features (64 bands): vision_perceiver_fourier.py
  pos=learned  1x1 conv to 256 channels + a learned position encoding (50,176 x 256):
               vision_perceiver_learned.py
  pos=conv     conv stem (7x7/2 conv, BatchNorm, ReLU, 3x3/2 max-pool: 56 x 56 x 64) +
               2-D Fourier features: vision_perceiver_conv.py
  All: one cross-attend into 512 x 1024 latents, 8 blocks of 6 self-attends with weights
  shared across blocks, and a one-query cross-attention decoder to 1000 logits
  (configs/pretrained/_vision.py). Parameters, counted here: fourier 48.4M, learned 62.3M,
  conv 48.6M.

Training: configs/_imagenet.py (LAMB at 5e-4 x batch/256, half constant then cosine,
weight decay 0.1 without biases/norms, clipping 10, label smoothing 0.1, 110 epochs, batch
1024, Inception crop + flip + RandAugment(4, 5) + MixUp 0.2 / CutMix, center-crop eval,
top-1/top-5), the DeepMind reference's perceiver/train/experiment.py.

  python train.py --config=configs/imagenet_perceiver_io.py:pos=learned \\
      --workdir=workdirs/imagenet_perceiver_io_learned --config.data.data_dir=DATA_DIR

Variants (configs/imagenet_perceiver_io.py:pos=conv,batch=512):
  pos=fourier|learned|conv  the input preprocessing (default fourier)
  runlocal   photo_crops (embedded, 10 classes) at 32 x 32, the same preprocessing with
             few channels, a tiny encoder, 4 steps: for tests
  batch=N    global batch N (learning rate 5e-4 x N/256, steps for 110 epochs at N)
  epochs=N   length in epochs (default 110)
  steps=N    training steps (overrides epochs)
"""

from perceiver_jax.configs import _imagenet
from perceiver_jax.configs.pretrained import (vision_perceiver_conv, vision_perceiver_fourier,
                                              vision_perceiver_learned)

ARCHITECTURES = {'fourier': vision_perceiver_fourier, 'learned': vision_perceiver_learned,
                 'conv': vision_perceiver_conv}


def get_config(arg=None):
  variant = _imagenet.parse(arg, pos='fourier')
  if variant.pos not in ARCHITECTURES:
    raise ValueError(f'Unknown imagenet_perceiver_io variant pos={variant.pos!r}; use one '
                     f'of {", ".join(ARCHITECTURES)}.')
  config = ARCHITECTURES[variant.pos].get_config()
  _imagenet.apply_recipe(config, variant)
  if variant.runlocal:
    _imagenet.shrink_for_runlocal(config)
    prep = config.model.preprocessor
    pos = prep.position_encoding
    size = _imagenet.RUNLOCAL_IMAGE_SIZE
    if variant.pos == 'fourier':
      pos.num_bands = 16
      pos.max_resolution = (size, size)
    elif variant.pos == 'learned':
      prep.num_channels = 16
      pos.num_channels = 16
      pos.project_pos_dim = 16
    else:  # conv: the stem downsamples by 4
      prep.num_channels = 16
      pos.num_bands = 8
      pos.max_resolution = (size // 4, size // 4)
  return config
