"""Plots and summarises a training run: python report.py WORKDIR (writes WORKDIR/report/)."""

from perceiver_jax.report import main

if __name__ == '__main__':
  main()
