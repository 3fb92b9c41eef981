"""Byte-level masked language modelling on C4 or Wikipedia: the released language Perceiver.

Model: configs/pretrained/language_perceiver.py, imported as it is (201M parameters: 2048
UTF-8 byte ids, 768-wide learned byte embedding and positions, 256 x 1280 latents, one
cross-attend, 26 self-attends, a decoder of 2048 learned queries scored against the tied
embedding table). Data: a TFDS text corpus's 'text' feature as UTF-8 bytes, one 2048-byte
window per document (a random one in training, the first in evaluation; details and the
one departure from the release, packing 10 documents per window, in
perceiver_jax/tasks/mlm.py). Objective: whole-word masking of 15% of the words, 80% [MASK]
/ 10% random byte / 10% unchanged (BERT's; the paper follows Devlin et al.'s MLM task but
does not spell out the 80/10/10 split); words are whitespace-delimited
('space', the reading of DeepMind's MLM colab, which masks " missing." as one span).
Reported: masked-byte accuracy and bits per byte.

Recipe and where each number comes from: Perceiver IO (arXiv 2107.14795) App. F.3 and its
Table 12 (pretraining hyperparameters; Table 9 in the paper's earlier arXiv versions), read
from the paper's text:
  optimizer LAMB, weight decay 0.01 (here not on biases and norms)     Table 12
  learning rate 1.25e-3, linear warmup over 1,000 steps, then cosine   Table 12 ("cosine
    decay to 0 at the last step                                        cycle decay 500,000")
  batch 2048 sequences, 500,000 steps                                  Table 12
  15% of words masked, words split at white space; 2048-byte inputs    Sec. 4.1, App. F.3
  LAMB b1 0.9, b2 0.999, eps 1e-6                                      ours: LAMB's usual
                                                                       values (optax's)
  gradient clipping at global norm 1.0                                 ours: the paper
                                                                       states none
  data: C4 alone or Wikipedia alone                                    ours: the paper
    samples 70% of training tokens from C4 and 30% from Wikipedia (App. F.3) and packs 10
    documents before cropping; mixing two datasets needs a mixing pipeline this
    repository does not have yet.
  eval split, eval batch, eval and checkpoint intervals                ours

  python train.py --config=configs/mlm_c4.py --workdir=workdirs/mlm_c4
  python train.py --config=configs/mlm_c4.py:data=wikipedia --workdir=workdirs/mlm_wiki

TFDS prepares c4/en and wikipedia/20230601.en from their raw downloads with TensorFlow and
Apache Beam (`tfds build c4/en --file_format=array_record`; see the TFDS catalogue); this
repository reads the prepared ArrayRecord files without TensorFlow.

Variants (configs/mlm_c4.py:data=wikipedia,steps=N):
  data=c4 | wikipedia   the corpus (default c4)
  runlocal              the embedded stdlib_docs/tiny (docstrings of the Python standard
                        library: English text offline), 128-byte windows, a tiny model of
                        the same design, LAMB, a few steps: for tests
  steps=N               training steps (default: the recipe's)
"""

from perceiver_jax import run
from perceiver_jax.configs.pretrained import language_perceiver
from perceiver_jax import tasks

# TFDS name, train split, eval split; each corpus has a 'text' feature.
DATASETS = {
    'c4': ('c4/en', 'train', 'validation[:10000]'),
    # Wikipedia has one split: its first 10,000 articles are held out for evaluation.
    'wikipedia': ('wikipedia/20230601.en', 'train[10000:]', 'train[:10000]'),
}
# The optimizer of the paper's language runs (Tables 12-13), shared by text_classification.py.
LAMB = dict(name='lamb', end_lr_factor=0.0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6,
            clip_norm=1.0)
RUNLOCAL_SEQ_LEN = 128


def shrink_to_runlocal(config):
  """The language Perceiver's design at a size that trains in seconds on a CPU: 128-byte
  inputs and outputs, 32-wide embedding, 16 x 64 latents, 1 self-attend, 2 heads."""
  language_perceiver.byte_model(config.model, seq_len=RUNLOCAL_SEQ_LEN, d_model=32,
                                d_latents=64, heads=2, num_latents=16, num_self_attends=1,
                                qk_channels=32)
  return config


def get_config(arg=None):
  variant = run.parse_variant(arg, data='c4', runlocal=False, steps=0)
  if variant.data not in DATASETS:
    raise ValueError(f'Unknown mlm_c4 data variant {variant.data!r}; use one of '
                     f'{sorted(DATASETS)}.')
  config = language_perceiver.get_config()  # the released architecture, as it is
  name, train_split, eval_split = DATASETS[variant.data]
  if variant.runlocal:
    name, train_split, eval_split = 'stdlib_docs/tiny', 'train', 'test'
    shrink_to_runlocal(config)
  config.data.name = name
  config.data.train_split = train_split
  config.data.eval_split = eval_split
  config.task = tasks.task_config(
      'mlm', text_key='text',
      seq_len=config.model.preprocessor.max_seq_len,  # 2048: the model's input
      mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1, word_definition='space',
      eval_mask_seed=1)  # fixed: eval scores compare across runs

  config.train.batch_size = 8 if variant.runlocal else 2048  # Table 12
  config.train.num_steps = variant.steps or (4 if variant.runlocal else 500_000)
  config.train.log_every_steps = 2 if variant.runlocal else 100
  config.train.eval_every_steps = 0 if variant.runlocal else 10_000
  config.eval.batch_size = 16 if variant.runlocal else 512
  config.eval.telemetry_examples = 0  # telemetry draws images of continuous inputs
  config.optimizer.update(LAMB, learning_rate=1.25e-3, schedule='cosine',
                          warmup_steps=1 if variant.runlocal else 1000)
  config.checkpoint.every_steps = 4 if variant.runlocal else 5000
  return config
