"""The Perceiver (Jaegle et al. 2021, arXiv 2103.03206) on ImageNet, with 2-D Fourier features.

Architecture (the paper's ImageNet model, Sec. 4.1 / Fig. 1):
  * inputs: the 224 x 224 RGB pixels, each concatenated with 2-D Fourier features of its
    position (64 bands per axis, max resolution 224, sin and cos, plus the raw position):
    50,176 inputs of 3 + 2 x (2 x 64 + 1) = 261 channels;
  * a latent array of 512 x 1024;
  * 8 blocks, each a cross-attend to the inputs followed by 6 latent self-attends; the
    self-attends' weights are shared across the 8 blocks, and so are the cross-attends'
    after the first (which has its own): model.encoder.cross_attend_every_block=True,
    share_cross_attend_weights=True;
  * the classifier: the latents averaged, then a linear layer to 1000 logits (the
    'projection' decoder, DeepMind's ProjectionDecoder).
  Head counts (1 cross-attend head, 8 self-attend heads) and widening factor 1 are those of
  the released Perceiver IO ImageNet models (configs/pretrained/_vision.py), which use the
  same encoder. Built, the model has 44.9M parameters (44,912,254), the size listed for the
  paper's Perceiver (FF) ImageNet model (tests/test_imagenet.py checks it).

Training: the Perceiver ImageNet recipe of configs/_imagenet.py (LAMB at 5e-4 x batch/256,
half constant then cosine, weight decay 0.1, clipping 10, label smoothing 0.1, 110 epochs,
batch 1024, Inception crop + flip + RandAugment(4, 5) + MixUp 0.2 / CutMix, center-crop
eval, top-1/top-5), as the DeepMind reference trains. The 2021 paper describes its own
optimisation settings; this config follows the reference's recipe instead.

  python train.py --config=configs/imagenet_perceiver.py --workdir=workdirs/imagenet_perceiver \\
      --config.data.data_dir=DATA_DIR   # imagenet2012 prepared there: see configs/_imagenet.py

Variants (configs/imagenet_perceiver.py:batch=256,steps=1000):
  runlocal   photo_crops (embedded, 10 classes) at 32 x 32, a tiny model with the same
             structure (cross-attend every block, shared), 4 steps: for tests
  batch=N    global batch N (learning rate 5e-4 x N/256, steps for 110 epochs at N)
  epochs=N   length in epochs (default 110)
  steps=N    training steps (overrides epochs)
"""

from perceiver_jax.configs import _imagenet
from perceiver_jax import run
from perceiver_jax.model.build import part


def get_config(arg=None):
  variant = _imagenet.parse(arg)
  config = run.default_config()
  size = _imagenet.RUNLOCAL_IMAGE_SIZE if variant.runlocal else 224

  model = config.model
  model.num_classes = 1000
  model.preprocessor = part(
      'preprocessor', 'image', prep_type='pixels', spatial_downsample=1,
      position_encoding=dict(name='fourier', num_bands=16 if variant.runlocal else 64,
                             max_resolution=(size, size)))
  # PerceiverEncoder's defaults (512 x 1024 latents, 8 blocks of 6 self-attends, 8 heads)
  # in the iterative form: weight-shared cross-attends before every block.
  model.encoder = part('encoder', cross_attend_every_block=True)
  model.decoder = part('decoder', 'projection')
  model.postprocessor = part('postprocessor', 'none')

  _imagenet.apply_recipe(config, variant)
  if variant.runlocal:
    _imagenet.shrink_for_runlocal(config)
  return config
