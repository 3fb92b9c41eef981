"""Per-family parity fixture builders for tools/make_parity_fixtures.py.

Every module `<family>.py` here (names starting with '_' excepted) is picked up
automatically and exposes `FIXTURES: dict[str, Callable[[], dict]]`. A callable builds
the Hugging Face Perceiver at tiny dims with a fixed torch seed and returns
  {'hf_config': dict (json-able), 'state_dict': {name: np.ndarray},
   'inputs': {name: np.ndarray}, 'outputs': {name: np.ndarray}, 'num_params_full': int}.
Needs torch and transformers (tools only; never a dependency of the package or CI).
The helpers below are shared by the family modules.
"""

from __future__ import annotations

import numpy as np


def perturb_parameters(model, seed: int, scale: float = 0.1) -> None:
  """Adds N(0, scale^2) noise to every parameter and buffer of a float dtype.

  HF initialises biases to zero and LayerNorms to ones; without noise a converter that
  dropped or swapped such weights would still match.
  """
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for tensor in list(model.parameters()) + list(model.buffers()):
      if tensor.is_floating_point():
        tensor.add_(scale * torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype))


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  """The model's state dict as float32/int numpy arrays (tied weights appear under each name)."""
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def count_params_meta(build) -> int:
  """Parameter count of `build()` constructed on the meta device (no memory allocated).

  Tied parameters are counted once, as model.parameters() yields them once.
  """
  import torch
  with torch.device('meta'):
    model = build()
  return int(sum(p.numel() for p in model.parameters()))
