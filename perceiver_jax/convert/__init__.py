"""Import of released weights: DeepMind Haiku pickles and Hugging Face checkpoints.

`common` reads checkpoint files and assigns arrays to a model; `hf_<family>` modules
map each family's checkpoint names to our parameter paths.
"""

from perceiver_jax.convert.common import (StateDictReader, assign_params, flatten_arrays,
                                          load_checkpoint_file, load_haiku_pickle,
                                          load_torch_zip, torch_conv, torch_linear,
                                          variable_paths)
