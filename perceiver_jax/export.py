"""perceiver-export: a workdir's forward pass as serialised StableHLO (`jax.export`).

OUT/model.stablehlo  `jax.export.Exported.serialize()` of prepared inputs -> the task's
                     predictions (predict.py's `predictions`: class probabilities, flow,
                     byte ids), with a symbolic batch dimension 'b'.
OUT/spec.json        the input and output names, shapes ('b' for the batch) and dtypes, the
                     task, the checkpoint step, and how raw inputs are prepared.

The weights are baked into the program as constants: the file is all a consumer needs
(`jax.export.deserialize(open(f, 'rb').read()).call(inputs)`, jax alone, no perceiver_jax).
That suits the models this exports on a CPU (constants make the file about as large as the
weights); inputs are the prepared model inputs that `Predictor.examples` makes from raw
ones (normalised arrays, token ids, frames in [-1, 1]).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import flags

from perceiver_jax import command_line
from perceiver_jax import predict as predict_lib
from perceiver_jax.errors import UserError

PROGRAM = 'model.stablehlo'
SPEC = 'spec.json'


def _spec(aval) -> dict:
  return {'shape': [d if isinstance(d, int) else str(d) for d in aval.shape],
          'dtype': str(np.dtype(aval.dtype))}


def export(workdir: str, out_dir: str, step: int | None = None, *, input_shape=None) -> dict:
  """Writes OUT/model.stablehlo and OUT/spec.json for the workdir's model; returns the
  spec. Refuses an out_dir that already holds either file."""
  for name in (PROGRAM, SPEC):
    if os.path.exists(os.path.join(out_dir, name)):
      raise UserError(f'{os.path.join(out_dir, name)} already exists; pass another --output '
                      'so nothing is overwritten.')
  predictor = predict_lib.load(workdir, step, input_shape=input_shape)
  shape = predictor.input_shape
  if isinstance(shape, dict):
    raise UserError('perceiver-export exports models of one input array; this multimodal '
                    'model takes several, use perceiver_jax.predict.load instead.')
  params, model_state = jax.device_get((predictor.params, predictor.model_state))
  forward = predict_lib.predict_fn(predictor.run.model, predictor.task)
  batch = jax.export.symbolic_shape('b')[0]
  inputs = {'inputs': jax.ShapeDtypeStruct((batch, *shape), predictor.task.input_dtype)}
  exported = jax.export.export(jax.jit(lambda b: forward(params, model_state, b)))(inputs)

  spec = {'task': predictor.task.name, 'step': predictor.step,
          'workdir': predictor.workdir,
          'inputs': {'inputs': _spec(exported.in_avals[0])},
          'outputs': jax.tree.map(_spec, jax.tree.unflatten(exported.out_tree,
                                                             exported.out_avals)),
          'normalize': list(predictor.config.data.get('normalize', (0.0, 1.0))),
          'prepare': 'perceiver_jax.predict.load(workdir).examples(raw) makes the inputs'}
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, PROGRAM), 'wb') as f:
    f.write(exported.serialize())
  with open(os.path.join(out_dir, SPEC), 'w') as f:
    json.dump(spec, f, indent=2)
  return spec

# ------------------------------------------------------------------------------------------
# The command line.
# ------------------------------------------------------------------------------------------

def _main(argv) -> None:
  del argv
  FLAGS = command_line.FLAGS
  if not FLAGS.workdir or not FLAGS.output:
    raise UserError('--workdir and --output are required: perceiver-export '
                    '--workdir=WORKDIR --output=DIR.')
  print(json.dumps(export(FLAGS.workdir, FLAGS.output, FLAGS.step)))


def main() -> None:
  """python -m perceiver_jax.export (also export.py and perceiver-export)."""
  flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).')
  flags.DEFINE_string('output', None, 'Directory for model.stablehlo and spec.json.')
  command_line.run(
      _main,
      'Exports a workdir\'s forward pass as StableHLO (jax.export) with spec.json.\n\n'
      'usage: {prog} --workdir=DIR --output=DIR [--step=N]')


if __name__ == '__main__':
  main()
