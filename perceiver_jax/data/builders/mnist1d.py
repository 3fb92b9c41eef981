"""MNIST-1D as a TFDS builder, generated offline by the `mnist1d` package.

MNIST-1D (Greydanus, "Scaling down deep learning", 2020; arXiv:2011.14439) is a
procedurally generated 1-D analogue of MNIST: each of ten hand-made 12-point
digit templates is padded, translated, scaled, sheared, corrupted with
correlated and i.i.d. noise and resampled to 40 points. The generator is
seeded (seed 42), so the data is identical on every machine and nothing is
downloaded: we call `mnist1d.data.make_dataset(get_dataset_args())` and keep
its own split (5000 samples, first 80% train).

Configs:
  plain     the standard dataset, `inputs` [40, 1] float32 (already
            standardised by the generator to mean 0, std 1 over all samples).
  shuffled  the paper's "shuffled" variant: one fixed random permutation of the
            40 positions applied to every sample (`shuffle_seq=True`), which
            destroys spatial locality but not the information content.
"""

from __future__ import annotations

import random

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

_CITATION = """\
@article{greydanus2020scaling,
  title={Scaling down Deep Learning},
  author={Greydanus, Sam},
  journal={arXiv preprint arXiv:2011.14439},
  year={2020}
}"""

SEQ_LEN = 40


def generate(shuffle_seq: bool) -> dict[str, np.ndarray]:
  """Runs the package's generator; returns x [5000 * 0.8, 40] etc. (float64).

  `make_dataset` reseeds Python's and NumPy's global RNGs; we restore them so
  that preparing the data does not perturb the caller's randomness.
  """
  # On use: the pipeline loads every builder; only preparing this one needs the mnist1d package.
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top

  args = get_dataset_args()
  args.shuffle_seq = shuffle_seq
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    data = make_dataset(args)
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  return data


class Mnist1d(tfds.core.GeneratorBasedBuilder):
  """MNIST-1D: 4000 train / 1000 test sequences of length 40, 10 classes."""

  # TFDS derives this from the package via `importlib_resources`, which is
  # not a declared dependency; giving it directly avoids that import.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Generated with mnist1d.make_dataset, seed 42.'}
  # Known before preparation, so a bad split name fails before anything is built.
  SPLITS = ('train', 'test')
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='plain', description='Standard MNIST-1D.'),
      tfds.core.BuilderConfig(
          name='shuffled',
          description='Positions permuted by one fixed random permutation.'),
  ]
  DEFAULT_CONFIG_NAME = 'plain'

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'inputs': tfds.features.Tensor(
                shape=(SEQ_LEN, 1), dtype=np.float32),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('inputs', 'label'),
        # Keep generator order on disk (TFDS would hash-shuffle by key), so
        # row i of a split is row i of the source and eval order is known.
        disable_shuffling=True,
        homepage='https://github.com/greydanus/mnist1d',
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is generated locally.
    data = generate(shuffle_seq=self.builder_config.name == 'shuffled')
    return {
        'train': self._generate_examples(data['x'], data['y']),
        'test': self._generate_examples(data['x_test'], data['y_test']),
    }

  def _generate_examples(self, xs: np.ndarray, ys: np.ndarray):
    # Key = row in the generator's split (stored in this order, see above).
    for i, (x, y) in enumerate(zip(xs, ys)):
      yield i, {'inputs': x.astype(np.float32)[:, None], 'label': int(y)}
