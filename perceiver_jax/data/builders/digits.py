"""scikit-learn's 8x8 handwritten digits as a TFDS builder (offline).

`sklearn.datasets.load_digits()` ships inside scikit-learn: 1797 grey-scale
8x8 images with integer intensities 0..16 (the UCI "Optical Recognition of
Handwritten Digits" test set, Alpaydin & Kaynak 1998), labels 0..9.

The split is fixed and deterministic: a stratified 80/20 split with
`sklearn.model_selection.train_test_split(test_size=360, stratify=y,
random_state=0)` -> 1437 train / 360 test. Within each split the examples are
kept in their original `load_digits` order (sorted indices), so the stored
order does not depend on sklearn's internal shuffling either.

Images are stored as a plain uint8 tensor [8, 8, 1] (not `tfds.features.Image`,
which would need an image codec to encode/decode).
"""

from __future__ import annotations

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

_CITATION = """\
@misc{alpaydin1998optical,
  title={Optical Recognition of Handwritten Digits},
  author={Alpaydin, E. and Kaynak, C.},
  howpublished={UCI Machine Learning Repository, DOI 10.24432/C50P49},
  year={1998}
}"""

NUM_TEST = 360
SPLIT_SEED = 0


def split_indices() -> dict[str, np.ndarray]:
  """Returns sorted row indices into `load_digits()` for 'train' and 'test'."""
  # On use: the pipeline loads every builder; only preparing this one needs scikit-learn.
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

  y = load_digits().target
  train, test = train_test_split(
      np.arange(len(y)), test_size=NUM_TEST, stratify=y,
      random_state=SPLIT_SEED)
  return {'train': np.sort(train), 'test': np.sort(test)}


class Digits(tfds.core.GeneratorBasedBuilder):
  """sklearn digits: 1437 train / 360 test uint8 images [8, 8, 1], 10 classes."""

  # TFDS derives this from the package via `importlib_resources`, which is
  # not a declared dependency; giving it directly avoids that import.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified split, test_size=360, random_state=0.'}
  # Known before preparation, so a bad split name fails before anything is built.
  SPLITS = ('train', 'test')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'inputs': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('inputs', 'label'),
        # Keep generator order on disk (TFDS would hash-shuffle by key), so
        # row i of a split is row i of the source and eval order is known.
        disable_shuffling=True,
        homepage='https://archive.ics.uci.edu/dataset/80',
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships with scikit-learn.
    # On use, as in split_indices.
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # float64 in 0..16, exact
    return {
        name: self._generate_examples(images, digits.target, idx)
        for name, idx in split_indices().items()
    }

  def _generate_examples(self, images, labels, indices):
    # Key = row in load_digits(), so each example is traceable to its source.
    for i in indices:
      yield int(i), {'inputs': images[i][:, :, None], 'label': int(labels[i])}
