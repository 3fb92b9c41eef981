"""AudioSet multi-label classification with the Perceiver (Jaegle et al. 2021, arXiv 2103.03206,
Sec. 4.2 "Audio and video - AudioSet"): raw audio, or audio + video, 527 classes, sigmoid
cross-entropy, mean average precision (perceiver_jax/tasks/multilabel.py).

  python train.py --config=configs/audioset_perceiver.py --workdir=workdirs/audioset \\
      --config.data.data_dir=DATA_DIR

Data: audioset_files/audio (48 kHz) or audioset_files/audio_video from the files you put in
DATA_DIR/downloads/manual/ (layout: perceiver_jax/data/builders/audioset_files.py: AudioSet's
class_labels_indices.csv and *_segments.csv, and one clips/<YTID>.npz or .wav per clip); the
first run prepares them once.

Where each setting comes from. "Sec. 4.2" is the Perceiver paper's AudioSet section (arXiv
v2 text); "IO App. C/G" are the AudioSet and position-encoding appendices of Perceiver IO
(arXiv 2107.14795), whose AudioSet runs use "the protocol described in" the Perceiver paper.
The paper states no optimizer, learning rate, batch size or schedule for AudioSet: those
remain [unconfirmed] (this framework's choices) until a source for them is found.
  [Sec. 4.2]     AudioSet, 1.7M training clips of 10 s, 527 classes, sigmoid cross-entropy, mAP.
  [Sec. 4.2]     raw audio at 48 kHz: 61,440 samples (1.28 s) per training clip, cut into
                 480 patches of 128 samples; 32-frame clips (1.28 s at 25 fps); video
                 patches 2x8x8, i.e. 16x28x28 = 12,544 video inputs.
  [Sec. 4.2]     audio+video fused at the input: each modality padded with a learned
                 modality embedding, 4 channels for video (the wider modality) and as many
                 as needed for audio (min_padding_size=4 in the multimodal preprocessor).
  [Sec. 4.2]     "a faster version of the ImageNet model": 2 cross-attends ("attention
                 iterations") instead of 8, 8 self-attends per block instead of 6, no weight
                 sharing; otherwise ImageNet's (Sec. 4.1): 512 x 1024 latents, 8-head
                 self-attends, a 1-head cross-attend, no bottleneck in the dense blocks;
                 mean over latents + linear head (App. C), no dropout (App. C).
                 Departure: this encoder always shares its self-attend block between the
                 2 blocks (perceiver_jax/model/encoder.py); only the 2 cross-attends have
                 separate weights here (share_cross_attend_weights=False).
  [Sec. 4.2]     100 epochs (also IO App. C): 100 x 1.7M clips / batch steps.
  [IO App. G]    64 Fourier bands per dimension "in all settings", max frequency the
                 input's Nyquist frequency, positions in [-1, 1]: 64 bands over the 480
                 audio patches (1-D) and over the 16x28x28 video patch grid (3-D). The
                 Perceiver paper itself gives no band count for AudioSet.
  [unconfirmed]  LAMB, peak LR 2e-3 after 1000 warmup steps, constant then cosine decay,
                 weight decay 0.1 (not on biases/norms), clipping 10, batch 512 (the
                 ImageNet recipe of Perceiver IO App. A.1, which however uses no warmup).
  Not implemented: the paper's evaluation averages the scores of 16 overlapping 32-frame
  clips covering each 10 s video; here one centre window is scored (task.clip_samples).
  Nor the paper's video dropout for audio+video (the whole video stream zeroed for 30% of
  the training examples), SpecAugment, or the mel-spectrogram input (4,800 inputs).

Variants (configs/audioset_perceiver.py:modality=audio,runlocal,steps=N):
  modality=audio        raw audio only (default): trains with train.py
  modality=audio_video  audio + video frames through the multimodal preprocessor
                        ({audio, image} inputs)
  runlocal              audioset_files/generated (8 synthetic sound classes, 4096 samples at
                        8 kHz, 4 frames of 16x16), a tiny model, a few steps: for tests
  steps=N               training steps (default: the recipe's)
"""

from perceiver_jax import run
from perceiver_jax import tasks
from perceiver_jax.model.build import modality_config, part

NUM_CLASSES = 527
SAMPLE_RATE = 48000
CLIP_SAMPLES = 61440        # 1.28 s at 48 kHz
CLIP_FRAMES = 32            # 1.28 s at 25 fps
SAMPLES_PER_PATCH = 128
TRAIN_EXAMPLES = 1_700_000  # "1.7M 10s long training videos" (Sec. 4.2)
EPOCHS = 100                # Sec. 4.2
BATCH_SIZE = 512            # [unconfirmed]
FOURIER_BANDS = 64          # Perceiver IO App. G


def _fourier(num_bands):
  return dict(name='fourier', num_bands=num_bands)


def _audio_preprocessor(samples_per_patch, num_bands):
  # max_resolution None: the Fourier features span the patch index (480 patches).
  return dict(name='audio', samples_per_patch=samples_per_patch,
              position_encoding=_fourier(num_bands))


def _video_preprocessor(num_bands, spatial, temporal):
  return dict(name='image', prep_type='patches', spatial_downsample=spatial,
              temporal_downsample=temporal, position_encoding=_fourier(num_bands))


def get_config(arg=None):
  config = run.default_config()
  variant = run.parse_variant(arg, modality='audio', runlocal=False, steps=0)
  if variant.modality not in ('audio', 'audio_video'):
    raise ValueError(f"Unknown modality {variant.modality!r}; use 'audio' or 'audio_video'.")
  small = variant.runlocal
  video = variant.modality == 'audio_video'
  config.task = tasks.task_config(
      'multilabel', inputs_key='audio', labels_key='labels', video_key='video' if video else '',
      clip_samples=0 if small else CLIP_SAMPLES,  # generated clips: whole (4096 samples)
      clip_frames=0 if small else CLIP_FRAMES)
  data = config.data
  data.name = ('audioset_files/generated' if small
               else f'audioset_files/{"audio_video" if video else "audio"}')
  data.train_split, data.eval_split = 'train', 'test'

  model = config.model
  model.num_classes = 8 if small else NUM_CLASSES
  audio = _audio_preprocessor(32 if small else SAMPLES_PER_PATCH,
                               16 if small else FOURIER_BANDS)
  if video:
    model.preprocessor = part('preprocessor', 'multimodal', min_padding_size=4)
    model.modalities.update(dict(
        audio=modality_config(preprocessor=audio, decoder={}, postprocessor={}),
        image=modality_config(
            preprocessor=_video_preprocessor(8 if small else FOURIER_BANDS,
                                             4 if small else 8, 2),
            decoder={}, postprocessor={})))
  else:
    model.preprocessor = part('preprocessor', **audio)
  # 2 blocks = 2 cross-attends, the original Perceiver's iterative form (Sec. 4.2); no
  # weight sharing there (with 2 blocks both settings give one extra cross-attend of its
  # own; runlocal keeps its value).
  model.encoder = part('encoder', num_latents=16 if small else 512,
                       num_latent_channels=32 if small else 1024, num_blocks=2,
                       num_self_attends_per_block=1 if small else 8,
                       num_self_attend_heads=2 if small else 8,
                       cross_attend_every_block=True, share_cross_attend_weights=small)
  # Mean over latents, then linear (zero-initialised).
  model.decoder = part('decoder', 'projection')
  model.postprocessor = part('postprocessor', 'none')

  config.train.batch_size = 16 if small else BATCH_SIZE
  config.train.num_steps = variant.steps or (
      4 if small else EPOCHS * TRAIN_EXAMPLES // BATCH_SIZE)
  config.train.log_every_steps = 2 if small else 100
  config.train.eval_every_steps = 0 if small else 10_000
  config.eval.batch_size = 48 if small else 256
  # Latent telemetry draws images of its inputs; raw waveforms are not images.
  config.eval.telemetry_examples = 0
  opt = config.optimizer
  opt.name = 'adamw' if small else 'lamb'
  opt.learning_rate = 3e-3 if small else 2e-3
  opt.warmup_steps = 1 if small else 1000
  opt.schedule = 'cosine' if small else 'constant_cosine'
  opt.decay_start_fraction = 0.0 if small else 0.5
  opt.weight_decay = 1e-4 if small else 0.1
  opt.clip_norm = 1.0 if small else 10.0
  config.checkpoint.every_steps = 4 if small else 5000  # runlocal: the final step only
  return config
