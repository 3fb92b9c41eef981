"""The Run: what a config needs before its first step, set up once.

`Run.create(config, workdir)` does, in this order and only once:

  1. checks the config alone and the workdir (validate.py: one sentence if wrong);
  2. builds the mesh and checks the config against it (batch divisibility);
  3. resolves the task and the dataset spec (names, splits, per-example input shape);
  4. builds the abstract model once (nnx.eval_shape: no FLOPs, no memory); a constructor's
     ValueError becomes one UserError sentence;
  5. from that one abstract model: the graphdef (ModelSpec), the logical axis names, the
     abstract params and model state and their shardings;
  6. when training: the optimizer, its schedule, the abstract TrainState and its shardings.
     Evaluation builds no optimizer: it restores params and model state alone.

Everything downstream takes what it needs from the Run: `init_state` / `abstract_state` /
`abstract_weights`, `train_batches` / `eval_batches` (host batches made global arrays in
one place), `summary`; the steps are built from it where they run (trainer.make_train_step,
evaluator.make_eval_step, predict.make_predict_step).

The config a Run reads is described here too, beside the code that reads it: `default_config`
holds every field at its default (the experiment configs start from it), `parse_variant`
reads the `configs/x.py:a=1,b=x` variant strings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from perceiver_jax import optim
from perceiver_jax import sharding as shd
from perceiver_jax import state as state_lib
from perceiver_jax import tasks
from perceiver_jax import validate
from perceiver_jax.data import pipeline
from perceiver_jax.errors import UserError
from perceiver_jax.model.build import default_model_config
from perceiver_jax.model.build_multimodal import input_shapes
from perceiver_jax.model.summary import model_summary
from perceiver_jax.state import ModelSpec, TrainState


# ------------------------------------------------------------------------------------------
# The config: every field at its default, and experiment variants.
# ------------------------------------------------------------------------------------------

def parse_variant(arg: str | None, **defaults):
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


def default_config() -> ml_collections.ConfigDict:
  """Every field a run reads, at its default: an experiment config (perceiver_jax/configs)
  starts here and overrides what it needs; so can the command line:
  --config.optimizer.learning_rate=3e-4."""
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
      # '' | a name of data/transforms.AUGMENTATIONS (random_shift, scale_noise, ...),
      # applied to training examples only
      augment='',
      max_shift=1,              # random_shift: largest translation per index axis
      scale_range=(0.8, 1.2),   # scale_noise: range of each example's amplitude factor
      noise_std=0.1,            # scale_noise: Gaussian noise added to each value
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
      # lamb: parameters whose '/'-joined path fully matches this regex take AdamW's step,
      # not a trust-ratio one (a zero-initialised head: docs/results.md, small-model stability)
      trust_ratio_exclude='',
      # > 0: keep an exponential moving average of the weights with this decay (e.g. 0.999)
      # and evaluate, predict and export with it (perceiver_jax/averaging.py); 0 = off.
      ema_decay=0.0,
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


# ------------------------------------------------------------------------------------------
# The Run.
# ------------------------------------------------------------------------------------------

def abstract_model(config, input_shape, dataset: str | None = None) -> nnx.Module:
  """The model of `config` for per-example `input_shape`, built abstractly (shapes only).

  The modules' own checks (head widths, names, ...) raise ValueError; here they become
  one UserError sentence naming the input shape (and the dataset it came from).
  """
  try:
    return nnx.eval_shape(lambda: state_lib.build(config, input_shape))
  except UserError as e:
    # The builder's sentence names the config path; raised under jax tracing, it also
    # carries JAX's note about filtered frames, which is not part of it.
    raise UserError(' '.join(str(e).split('\n-----')[0].split())) from None
  except ValueError as e:
    source = f' from dataset {dataset!r}' if dataset else ''
    raise UserError(f'config.model cannot be built for inputs of shape {input_shape}'
                    f'{source}: {" ".join(str(e).split())}') from None


@dataclasses.dataclass(frozen=True)
class Run:
  """One configured run on one mesh. Training runs also carry the optimizer and the
  TrainState's abstract value and shardings; evaluation runs leave those None."""
  config: Any
  mesh: Mesh
  task: tasks.Task
  data_spec: pipeline.DatasetSpec | None  # None: made from a given input shape (tests)
  model: ModelSpec                        # graphdef, normalised input_shape, num_params
  param_names: Any                        # logical axis names, shaped like the params
  abstract_params: Any                    # ShapeDtypeStructs: pure dict of nnx.Param values
  abstract_model_state: Any               # ShapeDtypeStructs: the other model variables
  params_shardings: Any
  model_state_shardings: Any
  tx: optax.GradientTransformation | None = None
  schedule: optax.Schedule | None = None
  abstract_train_state: TrainState | None = None
  state_shardings: TrainState | None = None

  # ----------------------------------------------------------------------------------------
  # Construction.
  # ----------------------------------------------------------------------------------------

  @classmethod
  def create(cls, config, workdir: str | None = None, *, training: bool = True,
             splits: tuple[str, ...] = ()) -> Run:
    """Checks `config` (and `workdir`, unless None) and sets up its run on this process's
    devices; `splits`: extra dataset splits that must exist (eval.py's --split)."""
    validate.validate_config(config, training=training)
    if workdir is not None:
      validate.check_workdir(workdir, training=training)
    mesh = shd.mesh_from_config(config)
    validate.check_mesh(config, mesh, training=training)
    task = tasks.get_task(config)
    data_spec = pipeline.dataset_info(config.data, extra_splits=splits, task=task)
    return cls.from_input_shape(config, data_spec.input_shape, mesh, training=training,
                                task=task, data_spec=data_spec)

  @classmethod
  def from_input_shape(cls, config, input_shape, mesh: Mesh, *, training: bool = True,
                       task: tasks.Task | None = None,
                       data_spec: pipeline.DatasetSpec | None = None) -> Run:
    """Steps 4-6 of create for a given per-example input shape ({modality: shape} for
    multimodal models) and mesh; the config is taken as checked."""
    input_shape = input_shapes(input_shape)  # tuples of ints, once
    model = abstract_model(config, input_shape, config.data.name if data_spec else None)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    abstract_params, abstract_model_state = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))
    names = shd.logical_names(model)
    rep = shd.replicated(mesh)
    params_shardings = shd.tree_shardings(abstract_params, names, mesh,
                                          shd.rules_dict(config.sharding.rules))
    model_state_shardings = jax.tree.map(lambda _: rep, abstract_model_state)
    training_fields = {}
    if training:
      tx, schedule = optim.make_optimizer(config.optimizer, int(config.train.num_steps))
      abstract = state_lib.abstract_train_state(config, abstract_params, abstract_model_state,
                                                tx)
      # Optimizer moments mirror the params they belong to; counts etc. are replicated.
      opt_shardings = optax.tree_map_params(
          tx, lambda _, s: s, abstract.opt_state, params_shardings,
          transform_non_params=lambda _: rep)
      shardings = TrainState(step=rep, params=params_shardings,
                             model_state=model_state_shardings, opt_state=opt_shardings,
                             rng=rep, loss_scale=jax.tree.map(lambda _: rep,
                                                              abstract.loss_scale),
                             # The moving average is laid out as the params it follows.
                             ema_params=(None if abstract.ema_params is None
                                         else params_shardings))
      training_fields = dict(tx=tx, schedule=schedule, abstract_train_state=abstract,
                             state_shardings=shardings)
    return cls(config=config, mesh=mesh, task=task or tasks.get_task(config),
               data_spec=data_spec, model=ModelSpec(graphdef, input_shape, num_params),
               param_names=names, abstract_params=abstract_params,
               abstract_model_state=abstract_model_state, params_shardings=params_shardings,
               model_state_shardings=model_state_shardings, **training_fields)

  # ----------------------------------------------------------------------------------------
  # State.
  # ----------------------------------------------------------------------------------------

  def need_training(self, what: str) -> None:
    if self.tx is None:
      raise ValueError(f'{what} needs a training Run; create it with training=True.')

  def init_state(self) -> TrainState:
    """A fresh TrainState (seed config.seed), born sharded: no array is ever materialised
    whole on one device."""
    self.need_training('init_state')
    init = state_lib.make_init(self.config, self.model.input_shape, self.tx)
    return jax.jit(init, out_shardings=self.state_shardings)(jnp.uint32(self.config.seed))

  def abstract_state(self) -> TrainState:
    """The TrainState as sharded ShapeDtypeStructs: what a checkpoint restores into."""
    self.need_training('abstract_state')
    return state_lib.with_shardings(self.abstract_train_state, self.state_shardings)

  def abstract_weights(self) -> tuple[Any, Any]:
    """(params, model_state) as sharded ShapeDtypeStructs: what evaluation restores into."""
    return (state_lib.with_shardings(self.abstract_params, self.params_shardings),
            state_lib.with_shardings(self.abstract_model_state, self.model_state_shardings))

  def summary(self) -> dict[str, Any]:
    """model_summary (params, output shape, FLOPs per example) of the abstract model: no
    array is computed, and every process agrees."""
    model = nnx.merge(self.model.graphdef, self.abstract_params, self.abstract_model_state)
    return model_summary(model, self.model.input_shape, self.task.input_dtype)

  # ----------------------------------------------------------------------------------------
  # Data: host batches from grain, made global arrays on this mesh here and nowhere else.
  # ----------------------------------------------------------------------------------------

  def to_global(self, batch: dict) -> dict:
    """This process's host batch -> global arrays sharded over the batch axes."""
    return pipeline.to_global(batch, shd.batch_sharding(self.mesh))

  def train_batches(self) -> pipeline.DeviceBatches:
    """The training batches, prefetched onto the devices (data.device_prefetch steps
    ahead); its position (batches taken) is checkpointed, so a resume continues exactly."""
    config = self.config
    dataset = pipeline.make_train_dataset(
        config.data, global_batch_size=int(config.train.batch_size), seed=int(config.seed),
        process_index=jax.process_index(), process_count=jax.process_count(),
        task=self.task)
    return pipeline.DeviceBatches(dataset, self.to_global, data_config=config.data,
                                  prefetch=int(config.data.get('device_prefetch', 2)))

  @property
  def eval_batch_size(self) -> int:
    """config.eval.batch_size rounded up to the data-parallel size (the rest is padding)."""
    return shd.eval_batch_size(self.config.eval.batch_size, self.mesh)

  def eval_batches(self, split: str | None = None) -> Iterator[dict]:
    """One ordered pass over `split` (default data.eval_split) as global batches of
    eval_batch_size, padded ('mask' 0) to whole batches."""
    batches = pipeline.make_eval_iterator(
        self.config.data, split or self.config.data.eval_split,
        global_batch_size=self.eval_batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), task=self.task)
    return (self.to_global(batch) for batch in batches)
