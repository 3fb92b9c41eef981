"""Trains a Perceiver: python train.py --config=configs/digits.py --workdir=workdirs/digits"""

from perceiver_jax.cli import train_main

if __name__ == '__main__':
  train_main()
