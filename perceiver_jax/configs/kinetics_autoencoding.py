"""Multimodal autoencoding of Kinetics-700 video, audio and label (Perceiver IO, Sec. 4.3).

Model: the released multimodal Perceiver IO exactly (configs/pretrained/multimodal_perceiver.py:
16 frames of 224x224 as 4x4 patches + 3-D Fourier features, 30720 audio samples at 48 kHz as
patches of 16 + 1-D Fourier features, the label as one masked token; 784 x 512 latents, one
block of 8 self-attends; one shared decoder over per-modality queries).
Data: kinetics_files/k700, the user's clips in the TFDS manual_dir (see
perceiver_jax/data/builders/kinetics_files.py for the layout: annotations.csv in Kinetics'
format plus one clips/<youtube_id>_<start>_<end>.npz per clip with video uint8
[>=16, 224, 224, 3] and audio float32 [>=30720]).
Task (perceiver_jax/tasks/autoencoding.py): loss 0.03 * L1(video) + 1.0 * L1(audio) +
0.0001 * CE(label), label input zeroed; video and audio PSNR and label top-1 on the
validation split, decoded in full.

  python train.py --config=configs/kinetics_autoencoding.py --workdir=workdirs/k700_ae \\
      --config.data.data_dir=/path/to/tfds   # clips in /path/to/tfds/downloads/manual/

Where each setting comes from (Perceiver IO Sec. 4.3 and App. I, read from the paper's text):
  architecture                  the released model (DeepMind's video_autoencoding colab).
                                 As App. I: 1x4x4 video and 16-sample audio patches, 48 kHz
                                 (1920 samples per frame), every input padded to 704
                                 channels, queries to 1026, 512-channel decoder; 784 x 512
                                 latents, the 88x model (Sec. 4.3); 20M parameters (Tab. 17).
                                 Unlike App. I's channel counts (387-d video and 385-d audio
                                 position features, paddings 317 / 319 / 4), the release
                                 has 32-band 3-D and 192-band 1-D Fourier features; kept.
  loss 0.03 L1(video) + 1.0 L1(audio) + 0.0001 CE(label)
                                 App. I (the paper also tried label weight 1 for accuracy)
  train_video_points=512, train_audio_patches=32
                                 Sec. 4.3: decoding is subsampled in training, "512 audio
                                 samples and 512 pixels and the class label" per example
                                 (512 samples = 32 patches of 16), and is full at test time
  batch 1024, learning rate 1e-3 App. I
  optimizer, schedule, steps     NOT stated in the paper for this experiment: LAMB, warmup
                                 then cosine decay, weight decay 0.1 (not on biases/norms)
                                 and clipping at 10 follow the paper's ImageNet recipe
                                 (App. A.1); 1000 warmup steps and 100k steps are ours.
  Departure: the paper masks the label input in 50% of training examples (Sec. 4.3); the
  task here always zeroes it (perceiver_jax/tasks/autoencoding.py), as the colab does.

Variants (configs/kinetics_autoencoding.py:runlocal,steps=N):
  runlocal   kinetics_files/synthetic (4 frames of 16x16, 256 audio samples, 4 motion
             classes), the same architecture shrunk (16 x 32 latents, one self-attend),
             AdamW (compiles faster than LAMB on CPU), 4 steps
  steps=N    training steps (default: the recipe's)
"""

from perceiver_jax import run
from perceiver_jax.configs.pretrained import multimodal_perceiver as released
from perceiver_jax import tasks

# runlocal: the generated clips of kinetics_files/synthetic.
TINY_FRAMES, TINY_SIZE, TINY_SAMPLES, TINY_CLASSES = 4, 16, 256, 4


def _shrink(model):
  """The released architecture at runlocal sizes (same modules, fewer bands/latents)."""
  model.num_classes = TINY_CLASSES
  mods = model.modalities
  spp = mods.audio.preprocessor.samples_per_patch
  audio_pe = dict(num_bands=8, max_resolution=(TINY_SAMPLES,))
  image_pe = dict(num_bands=4, max_resolution=(TINY_FRAMES, TINY_SIZE // 4, TINY_SIZE // 4))
  mods.audio.preprocessor.position_encoding.update(audio_pe)
  mods.audio.decoder.position_encoding.update(audio_pe)
  mods.audio.decoder.output_index_dims = (TINY_SAMPLES // spp,)
  mods.image.preprocessor.position_encoding.update(image_pe)
  mods.image.decoder.position_encoding.update(image_pe)
  mods.image.decoder.output_index_dims = (TINY_FRAMES, TINY_SIZE, TINY_SIZE)
  mods.label.decoder.num_query_channels = 32
  mods.label.postprocessor.num_classes = TINY_CLASSES
  enc = model.encoder
  enc.num_latents = 16
  enc.num_latent_channels = 32
  enc.num_self_attends_per_block = 1
  enc.num_self_attend_heads = 2
  model.decoder.output_num_channels = 32


def get_config(arg=None):
  variant = run.parse_variant(arg, runlocal=False, steps=0)
  config = run.default_config()
  pretrained = released.get_config()
  config.model = pretrained.model
  config.data.name = 'kinetics_files/synthetic' if variant.runlocal else 'kinetics_files/k700'
  config.data.train_split = 'train'
  config.data.eval_split = 'test' if variant.runlocal else 'validation'
  config.task = tasks.task_config(
      'multimodal_autoencoding', video_weight=0.03, audio_weight=1.0, label_weight=0.0001,
      video_psnr_range=1.0,  # pixels in [0, 1]
      audio_psnr_range=2.0,  # samples in [-1, 1]
      # Decoded per training example (and batch); evaluation decodes all outputs.
      train_video_points=256 if variant.runlocal else 512,
      train_audio_patches=8 if variant.runlocal else 32)

  if variant.runlocal:
    _shrink(config.model)
  else:
    # Full eval decodes 16*224*224 + 1920 + 1 queries per clip: 16384 at a time.
    config.model.decoder.query_chunk_size = 16384

  config.train.batch_size = 8 if variant.runlocal else 1024  # App. I
  config.train.num_steps = variant.steps or (4 if variant.runlocal else 100_000)
  config.train.log_every_steps = 2 if variant.runlocal else 100
  config.train.eval_every_steps = 0 if variant.runlocal else 10_000
  config.eval.batch_size = 16 if variant.runlocal else 8
  # Latent telemetry reads a single input array; this model takes a dict of modalities.
  config.eval.telemetry_examples = 0
  opt = config.optimizer
  # runlocal: AdamW compiles about a quarter faster than LAMB on CPU (tests stay short).
  opt.name = 'adamw' if variant.runlocal else 'lamb'
  opt.learning_rate = 1e-3  # App. I (runlocal too)
  opt.warmup_steps = 1 if variant.runlocal else 1000
  opt.schedule = 'cosine'
  opt.weight_decay = 0.1
  opt.clip_norm = 10.0
  config.checkpoint.every_steps = 4 if variant.runlocal else 5000
  return config
