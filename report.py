"""Plots and summarises a training run: python report.py WORKDIR (writes WORKDIR/report/)."""

from perceiver_jax.cli import report_main

if __name__ == '__main__':
  report_main()
