"""Defaults shared by every experiment: optimizer, mesh, sharding rules, checkpoints, logging.

An experiment file starts from `get_config()` here and overrides what it needs. Every field
can be overridden on the command line: `--config.optimizer.learning_rate=3e-4`.
"""

import ml_collections

from perceiver_jax import tasks
from perceiver_jax.model.build import default_model_config


def parse_arg(arg: str | None, **defaults):
  """Parses 'a=1,b=x' variant strings (configs/x.py:a=1,b=x), typed by the defaults.

  A bare key of a bool default sets it: 'runlocal' is 'runlocal=true'.
  """
  values = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, equals, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'Unknown config variant key {key!r}; valid keys: {sorted(defaults)}.')
    kind = type(defaults[key])
    if kind is bool:
      values[key] = not equals or value.lower() in ('1', 'true', 'yes')
    else:
      values[key] = kind(value)
  return ml_collections.ConfigDict(values)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # What the data, loss and metrics are: the task's name and every setting of it
  # (perceiver_jax/tasks), e.g. --config.task.label_smoothing=0.1.
  config.task = tasks.task_config('classification')
  # Fine-tuning: start a new run from the weights of a checkpoint (a train.py or
  # perceiver-convert workdir). Parameters whose '/'-joined path fully matches the
  # regex init_exclude (e.g. 'decoder/.*') keep their fresh initialisation.
  config.init_from = ml_collections.FieldReference(None, field_type=str)
  config.init_exclude = ''
  # 'this/path=checkpoint/path,...': parameters stored under another path in init_from
  # (e.g. a tied table: 'preprocessor/embeddings=postprocessor/embeddings').
  config.init_rename = ''
  # Resuming or evaluating a workdir with a config that changes its recipe or its eval
  # settings is refused unless the changed fields (or sections) are listed here:
  # 'data.normalize,optimizer' (perceiver_jax/config_changes.py says which change freely).
  config.allow_changes = ''

  config.data = ml_collections.ConfigDict(dict(
      name='',                  # TFDS name, optionally with builder config: 'mnist1d/shuffled'
      # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
      data_dir=ml_collections.FieldReference(None, field_type=str),
      # Datasets built from files you download (imagenet2012, flow_files, modelnet40, ...):
      # None = TFDS's <data_dir>/downloads/manual
      manual_dir=ml_collections.FieldReference(None, field_type=str),
      # Your own data (docs/datasets.md): a module name or .py file defining a TFDS builder
      builder_module='',
      # name='npz_folder' | 'image_folder': the folder of your .npz files or class folders
      source_dir=ml_collections.FieldReference(None, field_type=str),
      test_fraction=0.2,        # folders without train/ and test/: seeded share of test
      image_resize=(),          # image_folder: (height, width) to resize to; () keeps sizes
      train_split='train',
      eval_split='test',
      normalize=(0.0, 1.0),     # inputs -> (x - mean) / std
      augment='',               # '' | 'random_shift' (training examples only)
      max_shift=1,              # random_shift: largest translation per index axis
      # Host reading: threads or worker processes building whole batches ahead (0 = none,
      # read in the training loop's thread), and batches held ready by grain.
      read_threads=0,
      worker_count=0,           # > 0: grain worker processes (CPU-heavy augmentation)
      prefetch=0,
      device_prefetch=2,        # batches copied to the devices ahead of the step using them
  ))

  config.model = default_model_config()

  config.train = ml_collections.ConfigDict(dict(
      batch_size=64,            # global batch, over all devices and processes
      num_steps=1000,           # length of the run (and of the LR schedule)
      max_steps_per_run=0,      # >0: stop (with a checkpoint) after this many steps; rerun resumes
      log_every_steps=50,
      eval_every_steps=0,       # 0: evaluate only at the end
      grad_accum_steps=1,       # >1: split each batch into this many micro-batches, one update
      loss_scale_init=2.0**15,  # model.dtype=float16 only: initial dynamic loss scale
      loss_scale_period=2000,   # float16 only: double the scale after this many finite steps
      skip_nonfinite=False,     # True: a step with NaN/Inf loss or gradients changes nothing
      max_consecutive_skips=10, # skip_nonfinite: stop after this many non-finite steps in a row
  ))

  config.optimizer = ml_collections.ConfigDict(dict(
      name='adamw',             # adamw | lamb
      learning_rate=1e-3,       # peak, after warmup
      warmup_steps=100,
      schedule='cosine',        # cosine | constant_cosine | constant | linear
      decay_start_fraction=0.0, # constant_cosine: fraction of post-warmup steps held at peak
      end_lr_factor=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=1e-4,        # masked: no decay on biases, norms and other 1-D params
      clip_norm=1.0,            # global-norm clipping; 0 disables
  ))

  config.eval = ml_collections.ConfigDict(dict(
      batch_size=256,
      telemetry_examples=32,    # eval examples for latent telemetry (docs/telemetry.md); 0 = off
  ))

  # -1: all remaining devices. Pure data parallel by default.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis -> mesh axes. FSDP shards the model width; tensor parallelism the heads/MLP.
  # The mesh sizes pick the layout (size-1 axes are dropped); see perceiver_jax/sharding.py.
  config.sharding = ml_collections.ConfigDict(dict(
      # '' = config.mesh as written; dp | fsdp | tp | dp_fsdp | dp_tp | fsdp_tp | dp_fsdp_tp
      # = all devices on those axes (the first takes the rest, the others' sizes from mesh).
      layout='',
      rules=(
          # Parameters.
          ('embed', 'fsdp'),
          ('input_channels', 'fsdp'),
          ('pos_channels', 'fsdp'),
          ('heads', 'tensor'),        # q/k/v output channels of multi-head attention
          ('head_dim', None),         # the same of single-head attention: nothing to split
          ('mlp', 'tensor'),
          ('classes', 'tensor'),
          ('latents', None),
          # Activations (model/partitioning.py constrain at block boundaries).
          ('batch', ('data', 'fsdp')),
          ('length', None),
          ('act_embed', None),        # FSDP gathers weights, not activations
          ('act_heads', 'tensor'),
          ('act_mlp', 'tensor'),
      )))

  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=500,
      keep=3,                   # newest checkpoints kept
      async_save=True,
  ))
  return config
