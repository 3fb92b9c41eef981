"""Parity fixture of the language Perceiver (HF PerceiverForMaskedLM, deepmind/language-perceiver).

Tiny dims, random weights (every parameter perturbed after HF's init), padded byte
token ids with an attention mask. Outputs: MLM logits, the latents after the encoder's
cross-attend and after the whole encoder. num_params_full: the released architecture
(HF's conversion script: PerceiverConfig() with qk_channels=8*32, v_channels=1280;
DeepMind's colab: 256x1280 latents, 26 self-attends, 8 heads, qk 256, d_model 768,
max_seq_len 2048) built on the meta device.

HF's port uses exact GELU (hidden_act='gelu') where DeepMind uses jax.nn.gelu (the tanh
approximation); our model follows DeepMind, so the fixture sets hidden_act='gelu_new'
(HF's tanh approximation) and the comparison is of the same function.
"""

from __future__ import annotations

import numpy as np

from tools.parity_fixtures import count_params_meta, perturb_parameters, state_dict_numpy

TINY = dict(num_latents=8, d_latents=32, d_model=24, num_blocks=2,
            num_self_attends_per_block=2, num_self_attention_heads=4,
            num_cross_attention_heads=4, qk_channels=16, v_channels=32,
            max_position_embeddings=16, vocab_size=262, hidden_act='gelu_new')
SEQ_LEN = 12  # < max_position_embeddings: only the first positions are used
FULL = dict(qk_channels=8 * 32, v_channels=1280)  # on top of PerceiverConfig() defaults


def _token_ids(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Two sequences: one full, one with 5 pad tokens; a few [MASK] (3) ids in each."""
  ids = rng.integers(6, 262, size=(2, SEQ_LEN)).astype(np.int64)
  ids[0, 3:5] = 3
  ids[1, 1] = 3
  mask = np.ones((2, SEQ_LEN), np.int64)
  ids[1, 7:] = 0
  mask[1, 7:] = 0
  return ids, mask


def language_perceiver() -> dict:
  import torch
  from transformers import PerceiverConfig, PerceiverForMaskedLM

  torch.manual_seed(0)
  config = PerceiverConfig(**TINY)
  model = PerceiverForMaskedLM(config).eval()
  perturb_parameters(model, seed=1, scale=0.2)
  ids, mask = _token_ids(np.random.default_rng(2))
  with torch.no_grad():
    out = model(inputs=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                output_hidden_states=True)
  hidden = out.hidden_states  # [after cross-attend, after each self-attend ...]
  full = PerceiverConfig(**FULL)
  num_full = count_params_meta(lambda: PerceiverForMaskedLM(full))
  return dict(
      hf_config={k: getattr(config, k) for k in sorted(TINY)},
      state_dict=state_dict_numpy(model),
      inputs=dict(input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32)),
      outputs=dict(logits=out.logits.numpy(),
                   latents_after_cross_attend=hidden[0].numpy(),
                   latents=hidden[-1].numpy()),
      num_params_full=num_full,
      meta=dict(full_config={k: getattr(full, k) for k in sorted(TINY)}),
  )


FIXTURES = {'language_perceiver': language_perceiver}
