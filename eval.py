"""Evaluates a checkpoint.

  python eval.py --config=configs/digits.py --workdir=workdirs/digits [--step=N]
"""

from perceiver_jax.evaluator import main

if __name__ == '__main__':
  main()
