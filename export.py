"""Exports a workdir's forward pass as StableHLO with a symbolic batch dimension.

  python export.py --workdir=workdirs/digits --output=exported/digits
"""

from perceiver_jax.export import main

if __name__ == '__main__':
  main()
