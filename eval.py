"""Evaluates a checkpoint.

  python eval.py --config=configs/digits.py --workdir=workdirs/digits [--step=N]
"""

from perceiver_jax.cli import eval_main

if __name__ == '__main__':
  eval_main()
