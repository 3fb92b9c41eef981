"""Trains a Perceiver (the same as python -m perceiver_jax.trainer):

  python train.py --config=configs/digits.py --workdir=workdirs/digits
"""

from perceiver_jax.trainer import main

if __name__ == '__main__':
  main()
