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

from configs import _imagenet
from configs import common


def get_config(arg=None):
  variant = _imagenet.parse(arg, common)
  config = common.get_config()
  size = _imagenet.RUNLOCAL_IMAGE_SIZE if variant.runlocal else 224

  model = config.model
  model.num_classes = 1000
  prep = model.preprocessor
  prep.name = 'image'
  prep.prep_type = 'pixels'
  prep.spatial_downsample = 1
  pos = prep.position_encoding
  pos.name = 'fourier'
  pos.num_bands = 16 if variant.runlocal else 64
  pos.max_resolution = (size, size)
  pos.concat_pos = True
  pos.sine_only = False
  pos.project_pos_dim = -1
  pos.combine = 'concat'

  enc = model.encoder
  enc.num_latents = 512
  enc.num_latent_channels = 1024
  enc.num_blocks = 8
  enc.num_self_attends_per_block = 6
  enc.cross_attend_every_block = True
  enc.share_cross_attend_weights = True
  enc.num_cross_attend_heads = 1
  enc.num_self_attend_heads = 8
  enc.cross_attend_widening_factor = 1
  enc.self_attend_widening_factor = 1
  enc.cross_attention_shape_for_attn = 'kv'
  enc.use_query_residual = True
  enc.dropout_prob = 0.0
  enc.latent_init_scale = 0.02
  model.decoder.name = 'projection'
  model.postprocessor.name = 'none'

  _imagenet.apply_recipe(config, variant)
  if variant.runlocal:
    _imagenet.shrink_for_runlocal(config)
  return config
