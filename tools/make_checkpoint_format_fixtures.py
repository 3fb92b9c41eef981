"""Writes tiny real PyTorch / safetensors files that tests/test_convert.py reads without torch.

Run with the torch environment (never needed by CI; the outputs are committed):
  /work/torchenv/bin/python tools/make_checkpoint_format_fixtures.py
Writes tests/fixtures/torch_state_dict.bin and tests/fixtures/bf16.safetensors.
"""

import collections
import os

import torch
from safetensors.torch import save_file

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        'tests', 'fixtures')


def main():
  os.makedirs(FIXTURES, exist_ok=True)
  linear = torch.nn.Linear(3, 2)
  with torch.no_grad():
    linear.weight.copy_(torch.arange(6, dtype=torch.float32).reshape(2, 3))
    linear.bias.copy_(torch.tensor([0.5, -0.5]))
  base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
  tied = torch.arange(4, dtype=torch.float64)
  state = collections.OrderedDict([
      ('layer.weight', linear.weight),                      # an nn.Parameter
      ('layer.bias', linear.bias),
      ('transposed', base.t()),                             # non-contiguous view
      ('offset_view', torch.arange(10, dtype=torch.int64)[2:5]),  # storage offset
      ('half', torch.tensor([1.5, -2.0], dtype=torch.float16)),
      ('bf16', torch.tensor([1.5, -2.0], dtype=torch.bfloat16)),
      ('flags', torch.tensor([True, False])),
      ('scalar', torch.tensor(3.25)),
      ('tied_a', tied),                                     # two names, one storage
      ('tied_b', tied),
  ])
  torch.save(state, os.path.join(FIXTURES, 'torch_state_dict.bin'))
  save_file({'bf16': torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
             'f32': torch.arange(6, dtype=torch.float32).reshape(2, 3)},
            os.path.join(FIXTURES, 'bf16.safetensors'))
  print('wrote', FIXTURES)


if __name__ == '__main__':
  main()
